//! The `ferry-control` subcommands, as library functions so that tests run them in-process;
//! `main.rs` only parses flags and dispatches here.

pub mod crds;
pub mod validate;
