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
    // Envoy's threading model: the main thread runs xDS, the admin server and the lifecycle on
    // a runtime of its own; connections run on the workers. One worker is a single-threaded
    // runtime on its own thread (an event loop, as an Envoy worker is): no work-stealing
    // queues, and a request's tasks wake each other without crossing threads.
    let main_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if workers == 1 {
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = worker.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ferry-worker".into())
            .spawn(move || {
                worker.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let result = main_runtime.block_on(app::run(options, bootstrap, handle));
        drop(stop);
        if thread.join().is_err() {
            anyhow::bail!("the worker thread panicked");
        }
        result
    } else {
        let worker = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("ferry-worker")
            .enable_all()
            .build()?;
        main_runtime.block_on(app::run(options, bootstrap, worker.handle().clone()))
    }
}
