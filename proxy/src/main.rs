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
    // Read before the runtime exists, so the JSON mapping's descriptor pool (about 33 MiB,
    // needed only for this) lives in the main thread's heap alone, then handed back to the OS.
    let bootstrap = options.bootstrap()?;
    xds_proto::json::retain_pool(false);
    release_free_heap();
    let workers = ferry_proxy::bootstrap::concurrency(options.concurrency);
    tracing::info!(workers, "starting runtime");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(app::run(options, bootstrap))
}

/// Returns the heap's free pages to the OS. Freeing the descriptor pool leaves its pages free but
/// resident: glibc gives back only the top of the heap, and a few small long-lived allocations
/// made while the pool was alive sit above it. `malloc_trim` also releases free pages in the
/// middle of the heap (glibc >= 2.8), which is what takes idle RSS from ~40 MiB to the live set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_heap() {
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own free lists under its
    // arena locks; it cannot invalidate any live allocation.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "free heap returned to the OS");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}
