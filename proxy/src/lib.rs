//! ferry-proxy: a per-pod L7 sidecar configured only over Envoy's xDS v3 API.
//!
//! Configuration flows one way: the bootstrap file and ADS responses are validated and converted
//! into domain types once ([`snapshot::Resources`]), assembled into one immutable
//! [`snapshot::Snapshot`], and swapped in atomically by the [`snapshot::ConfigStore`]. The data
//! path (listeners, the HTTP connection manager, the router, clusters and their pools) loads that
//! snapshot once per connection or request and never sees a protobuf.

pub mod admin;
pub mod app;
pub mod body;
pub mod bootstrap;
pub mod circuit_breaker;
pub mod cluster;
pub mod error;
pub mod fault;
pub mod http_connection_manager;
pub mod listener;
pub mod load_balancer;
pub mod memory;
pub mod mirror;
pub mod outlier;
pub mod pool;
pub mod retry;
pub mod route;
pub mod router;
pub mod snapshot;
pub mod stats;
pub mod tcp_proxy;
pub mod tracers;
pub mod xds;
