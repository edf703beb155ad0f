//! Where objects come from: a directory of YAML (the default, and what end-to-end tests use) or
//! Kubernetes watchers. Both feed the same [`store::Store`], which the model is built from.

pub mod dir;
pub mod kubernetes;
pub mod manifest;
pub mod object;
mod publish;
pub mod store;

pub use publish::SourceHandle;
