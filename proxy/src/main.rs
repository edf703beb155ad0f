//! The `ferry-proxy` binary: flags, logging, the runtime sized by `--concurrency`, and the app.

use clap::Parser;
use ferry_proxy::app::{self, Options};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&options.log_level))?;
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter);
    if options.log_format == "json" {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    // Read before the runtime exists, through a descriptor pool of only the files the bootstrap
    // needs (retention off: Envoy's full pool, about 33 MiB, is never decoded), which lives in
    // the main thread's heap alone and is then handed back to the OS.
    xds_proto::json::retain_pool(false);
    let bootstrap = options.bootstrap()?;
    ferry_proxy::memory::release_bootstrap_memory();
    let workers = ferry_proxy::bootstrap::concurrency(options.concurrency);
    tracing::info!(workers, "starting runtime");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(app::run(options, bootstrap))
}
