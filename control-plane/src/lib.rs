//! ferry-control: watches Istio resources (from Kubernetes or a directory of the same YAML),
//! translates them into Envoy xDS with Istio's names, and serves them over ADS.
//!
//! The pipeline is watch ([`source`]) -> store -> [`model`] -> [`translate`] -> push ([`xds`]).
//! Translation is a set of pure functions from the model to xDS resources, golden-tested; nothing
//! is served before every source has completed its initial sync.

pub mod api;
pub mod app;
pub mod cli;
pub mod debug;
pub mod mesh_config;
pub mod model;
pub mod source;
pub mod translate;
pub mod validate;
pub mod xds;
