//! The benchmark harness of issue #5 (see BENCHMARKS.md): one machine, one config, five paths
//! (direct, Envoy, ferry-proxy, and two of either in series) under the same load from wrk, h2load
//! and an open-loop generator, in alternating rounds, reported as medians and ratios; then
//! ferry-control on generated meshes.
//!
//! - [`upstream`]: the fixed-response upstream every path ends at.
//! - [`subject`]: bringing up each path from the one bootstrap file.
//! - [`load`]: running wrk / h2load and parsing their reports.
//! - [`measure`]: RSS and CPU time of the proxies from `/proc`.
//! - [`openloop`]: the fixed-rate generator (latency corrected for coordinated omission).
//! - [`harness`]: the rounds.
//! - [`mesh`], [`sidecars`], [`control`]: ferry-control on a generated mesh; RSS with a large
//!   config; the time until 100 sidecars ACK an edit, and memory per connected proxy.
//! - [`report`], [`targets`]: medians, ratios, the targets and the BENCHMARKS.md section.

pub mod control;
pub mod harness;
pub mod load;
pub mod measure;
pub mod mesh;
pub mod openloop;
pub mod report;
pub mod sidecars;
pub mod subject;
pub mod targets;
pub mod upstream;
