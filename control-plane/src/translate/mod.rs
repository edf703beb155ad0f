//! Pure functions from the [`crate::model::Model`] and one proxy's identity to the listeners,
//! routes, clusters and endpoints Istio would generate for it, with Istio's names.
