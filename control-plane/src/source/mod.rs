//! Where objects come from: a directory of YAML (the default, and what end-to-end tests use) or
//! Kubernetes watchers. Both feed the same store, which the model is built from.
