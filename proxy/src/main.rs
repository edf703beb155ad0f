//! The `ferry-proxy` binary: flags, logging, and the app.

fn main() {}
