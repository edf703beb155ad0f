//! The benchmark harness of issue #5 (see BENCHMARKS.md): one machine, one config, three paths
//! (direct, Envoy, ferry-proxy) under the same load from wrk and h2load, in alternating rounds,
//! reported as medians and ratios.
//!
//! - [`upstream`]: the fixed-response upstream every path ends at.
//! - [`subject`]: bringing up each path from the one bootstrap file.
//! - [`load`]: running wrk / h2load and parsing their reports.
//! - [`measure`]: RSS and CPU time of the proxies from `/proc`.
//! - [`harness`]: the rounds.
//! - [`report`]: medians, ratios and the BENCHMARKS.md section.

pub mod harness;
pub mod load;
pub mod measure;
pub mod report;
pub mod subject;
pub mod upstream;
