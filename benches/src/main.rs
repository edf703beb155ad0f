//! `ferry-bench`: runs the benchmark harness (usually through `benches/run`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ferry_benches::harness::{self, Config};
use ferry_benches::subject::PathKind;
use ferry_benches::{control, report};

/// Ferry against Envoy 1.40 and against no proxy, side by side.
#[derive(Debug, Parser)]
#[command(name = "ferry-bench")]
struct Args {
    /// A few seconds over every path and protocol, nothing written: proves the harness works.
    #[arg(long)]
    smoke: bool,
    /// Rounds over every workload and path (medians are over rounds).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds per load run.
    #[arg(long, default_value_t = 6)]
    duration: u64,
    /// Paths to compare, comma-separated: direct, envoy, ferry, envoy-envoy, ferry-ferry.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,envoy,ferry,envoy-envoy,ferry-ferry"
    )]
    paths: Vec<String>,
    /// Skip the control-plane phases (RSS by config size, push time, memory per proxy).
    #[arg(long)]
    no_control: bool,
    /// Run only the push benchmark (push time and ferry-control memory per proxy): the quick
    /// figure when working on ferry-control's memory.
    #[arg(long, conflicts_with_all = ["no_control", "smoke"])]
    push_only: bool,
    /// Services of the large config (5 endpoints each); the small one has 1% of them.
    #[arg(long, default_value_t = 1000)]
    scale_services: usize,
    /// Sidecars connected to ferry-control for the push benchmark.
    #[arg(long, default_value_t = 100)]
    push_clients: usize,
    /// Services in the push benchmark's config.
    #[arg(long, default_value_t = 100)]
    push_services: usize,
    /// VirtualService edits timed in the push benchmark.
    #[arg(long, default_value_t = 3)]
    edits: u32,
    /// Runtime threads of the upstream server.
    #[arg(long, default_value_t = 1)]
    upstream_workers: usize,
    /// The file whose results section is regenerated.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The errors' own messages carry their causes; `{:#}` would repeat them.
            eprintln!("ferry-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    for name in &args.paths {
        paths.push(PathKind::parse(name).with_context(|| format!("unknown path {name:?}"))?);
    }
    let (rounds, duration) = if args.smoke {
        (1, 1)
    } else {
        (args.rounds, args.duration)
    };
    let duration = Duration::from_secs(duration);
    let workloads = if args.smoke {
        harness::smoke_workloads(duration)
    } else {
        harness::full_workloads(duration)
    };
    let config = Config {
        rounds,
        workloads,
        paths,
        upstream_workers: args.upstream_workers,
    };
    if args.push_only {
        let push = control::push(args.push_clients, args.push_services, args.edits).await?;
        println!(
            "push: {} clients, all ACKed (worst) {:?}, RSS {} KiB -> {} KiB ({} KiB after the edits), {:.1} KiB per proxy",
            push.clients,
            push.all_acked.iter().max().copied().unwrap_or_default(),
            push.rss_idle_kib,
            push.rss_connected_kib,
            push.rss_after_edits_kib,
            push.per_proxy_kib()
        );
        return Ok(());
    }
    let mut results = harness::run(&config).await?;
    if !args.no_control {
        // The smoke run proves every part works at a size a dev build serves in seconds.
        let (large, clients, services, edits) = if args.smoke {
            (100, 10, 10, 1)
        } else {
            (
                args.scale_services,
                args.push_clients,
                args.push_services,
                args.edits,
            )
        };
        results.scale = Some(control::scale((large / 100).max(1), large, 5).await?);
        results.push = Some(control::push(clients, services, edits).await?);
    }
    let command = std::iter::once("benches/run".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let section = report::render(&results, &command, &machine());
    println!("{section}");
    if args.smoke {
        let mut failures = Vec::new();
        for (workload, by_path) in &results.samples {
            for (path, samples) in by_path {
                let summary = report::summarize(samples);
                if summary.errors > 0 || summary.rps <= 0.0 {
                    failures.push(format!("{workload} via {path}: {summary:?}"));
                }
            }
        }
        if !args.no_control && (results.scale.is_none() || results.push.is_none()) {
            failures.push("the control-plane phases produced no figures".into());
        }
        if !failures.is_empty() {
            bail!("smoke run failed:\n{}", failures.join("\n"));
        }
        eprintln!("bench smoke: ok");
    } else {
        report::write_into(&args.output, &section)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", args.output.display()))?;
        eprintln!("wrote {}", args.output.display());
    }
    Ok(())
}

/// The machine, as the report states it.
fn machine() -> String {
    let run = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let envoy = ferry_tests::envoy::binary()
        .map(|b| run(&b.to_string_lossy(), &["--version"]))
        .unwrap_or_default();
    // `envoy --version` prints `PATH  version: SHA/1.40.0/Clean/RELEASE/BoringSSL`.
    let envoy = envoy
        .split("version:")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .unwrap_or("?")
        .to_owned();
    format!(
        "{} · {cpu} · {cores} cores · Envoy {envoy} · ferry {} · {}",
        run("uname", &["-srm"]),
        run("git", &["rev-parse", "--short", "HEAD"]),
        run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}
