//! Support for Ferry's cross-crate tests: starting the real binaries, real upstream servers and the
//! real Envoy on loopback, and polling for readiness instead of sleeping.
//!
//! - [`envoy`]: the real Envoy 1.40, the interop peer and the reference ferry-proxy is compared
//!   with (skips outside CI when it is not installed, fails under `CI=true`).
//! - [`process`]: child processes with captured logs, killed on drop, logs printed on failure.
//! - [`net`]: free ports and a one-request-per-connection HTTP/1.1 and h2c client.
//! - [`poll`]: waiting for a condition with a safety-net deadline.
//! - [`ads`]: a scriptable ADS server (SotW and delta) that records what clients send.
//! - [`collector`]: Zipkin and OTLP trace collectors that keep the spans they receive.
//! - [`tracing_sidecar`]: Istio-style tracing configs, traced listeners and sidecars.
//! - [`bootstrap`]: bootstrap YAML fragments (an HTTP listener, a static cluster).
//! - [`upstream`]: echo, gRPC-like, upgrade and TCP upstream servers for proxy tests.
//! - [`scenarios`]: Istio meshes for tests (ferry-control on a directory of manifests, Envoy or
//!   ferry-proxy sidecars over ADS behind one handle) and the Bookinfo steps both proxies are
//!   held to alike.

pub mod ads;
pub mod bootstrap;
pub mod collector;
pub mod envoy;
pub mod net;
pub mod poll;
pub mod process;
pub mod scenarios;
pub mod tracing_sidecar;
pub mod upstream;
