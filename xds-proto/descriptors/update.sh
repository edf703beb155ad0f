#!/usr/bin/env bash
# Refreshes the checked-in Envoy descriptor set from the envoy-types crate in cargo's registry.
# Run after bumping envoy-types; rename the file and json.rs's include_bytes! to the new version.
set -euo pipefail
version=$(cargo metadata --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="envoy-types"))')
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/envoy-types-"$version" | head -n 1)
cp "$src/src/generated/types.bin" "$(dirname "$0")/envoy-types-$version.bin"
echo "copied descriptors of envoy-types $version"
