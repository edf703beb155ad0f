//! The `ferry-control` binary: flags, logging, and the app.

fn main() {}
