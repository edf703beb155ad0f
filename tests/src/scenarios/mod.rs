//! Istio meshes for tests: ferry-control (in-process, local mode) serving a temporary directory
//! of manifests ([`ControlPlane`]), and sidecars it configures over ADS, the real Envoy 1.40 or
//! the `ferry-proxy` binary behind one handle ([`Sidecar`]), started from the same bootstrap and
//! read through the same admin API. Every Istio-YAML test builds on these two:
//!
//! - [`ratings`]: the resilience scenarios' mesh, a client pod and a `ServiceEntry` in front of
//!   chaos upstreams (`resilience_istio.rs`, `resilience_differential.rs`);
//! - [`Bookinfo`] and the steps of [`run`]: one list of mesh steps every sidecar ferry-control
//!   serves is held to; the real Envoy (`envoy_interop_manifests.rs`) and ferry-proxy
//!   (`mesh_e2e.rs`) run the very same steps against the same manifests, so a difference between
//!   them is a failing test, not a matter of which test was written.

mod bookinfo;
mod control_plane;
pub mod ratings;
mod sidecar;
mod steps;

pub use bookinfo::{
    Bookinfo, CANARY, NEGATIVE_WEIGHT, PROMOTED, Routing, VERSIONS, virtual_service,
};
pub use control_plane::{ControlPlane, client_pod, pod, service_entry};
pub use sidecar::{Sidecar, SidecarKind};
pub use steps::{Answer, assert_routing, get, run};
