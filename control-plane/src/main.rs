//! The `ferry-control` binary: flags, logging, and the app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ferry_control::app::{self, ServeOptions};
use ferry_control::cli;
use ferry_control::xds::debounce::DebounceConfig;

/// jemalloc, returning freed pages to the OS within a second, instead of glibc's malloc. Every ADS
/// connection generates its proxy's whole config and drops most of it once equal resources are
/// interned; glibc kept those freed pages resident between the allocations that stay (about
/// 8 MiB with 100 proxies, 80 KiB of the 143 KiB per proxy; `MALLOC_ARENA_MAX=1`, a lower mmap
/// threshold and `malloc_trim` each recovered little, mimalloc was worse). With jemalloc and a
/// 1 s decay the per-proxy figure is about 80 KiB (`ferry-bench --push-only`, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation (`_rjem_` is the crate's symbol prefix):
/// dirty pages are purged after 1 s (0 made pushes twice as slow, with madvise on every free),
/// from a background thread so streams do not pay for it. `_RJEM_MALLOC_CONF` overrides them.
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0];

/// Ferry's control plane: Istio resources in, Envoy xDS out.
#[derive(Debug, Parser)]
#[command(name = "ferry-control", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch a directory of Istio and Kubernetes manifests and serve xDS over ADS.
    Serve(ServeArgs),
    /// Check manifests offline (before `kubectl apply`); exit 1 on any error.
    Validate(cli::validate::ValidateArgs),
    /// Print CustomResourceDefinitions for the Istio kinds ferry-control reads.
    Crds,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Directory of YAML manifests (VirtualService, DestinationRule, Service, ...).
    #[arg(long, required_unless_present = "kubernetes")]
    config_dir: Option<PathBuf>,
    /// Watch the Kubernetes API (in-cluster config or kubeconfig) instead of a directory.
    #[arg(long, conflicts_with = "config_dir")]
    kubernetes: bool,
    /// ADS (gRPC) listen address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: SocketAddr,
    /// Debug and metrics HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_address: SocketAddr,
    /// Bind each sidecar's listeners to its own loopback instance IP (a mesh on one host).
    #[arg(long)]
    local_mode: bool,
    /// Istio MeshConfig YAML (the `mesh` key of the `istio` ConfigMap): tracing settings.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut stdout = std::io::stdout().lock();
    match Cli::parse().command {
        Command::Serve(args) => {
            let options = ServeOptions {
                config_dir: args.config_dir.unwrap_or_default(),
                kubernetes: args.kubernetes,
                xds_address: args.xds_address,
                debug_address: args.debug_address,
                local_mode: args.local_mode,
                debounce: DebounceConfig::default(),
                mesh: match &args.mesh_config {
                    Some(path) => ferry_control::mesh_config::MeshConfig::from_file(path)?,
                    None => ferry_control::mesh_config::MeshConfig::default(),
                },
            };
            tokio::runtime::Runtime::new()?.block_on(app::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(v) => {
            let summary = cli::validate::run(&v, &mut stdout)?;
            eprintln!(
                "{} documents checked ({} ignored), {} errors",
                summary.documents, summary.ignored, summary.errors
            );
            Ok(if summary.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Crds => {
            cli::crds::run(&mut stdout)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
