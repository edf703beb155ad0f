//! Support for Ferry's cross-crate tests: starting the real binaries, real upstream servers and the
//! real Envoy on loopback, and polling for readiness instead of sleeping.

pub mod ads;
