//! The benchmark harness (see BENCHMARKS.md).
