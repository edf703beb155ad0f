//! Where objects come from: a directory of YAML ([`dir`], the default, and what end-to-end tests
//! use) or Kubernetes watchers ([`kubernetes`]). Both parse objects the same way
//! ([`manifest`]), feed the same [`store::Store`], build the model with [`crate::model::build`]
//! and publish it through a [`SourceHandle`] only once their initial read or list is complete.
//!
//! What a config dir means (the same objects users `kubectl apply`): every `*.yaml`, `*.yml` and
//! `*.json` below it, multi-document, `v1` `List`s expanded; hidden entries skipped; kinds Ferry
//! does not read ignored. A Pod is an endpoint only with `status.podIP` (there is no kubelet), so
//! local meshes write `status: {phase: Running, podIP: 127.0.0.2}`. An object defined twice is
//! kept where it appears first (by file path) and the copy reported.

pub mod dir;
pub mod kubernetes;
pub mod manifest;
pub mod object;
mod publish;
pub mod store;

pub use publish::SourceHandle;
