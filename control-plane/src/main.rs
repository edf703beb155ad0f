//! The `ferry-control` binary: flags, logging, and the app.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_control::cli;

/// Ferry's control plane: Istio resources in, Envoy xDS out.
#[derive(Debug, Parser)]
#[command(name = "ferry-control", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check manifests offline (before `kubectl apply`); exit 1 on any error.
    Validate(cli::validate::ValidateArgs),
    /// Print CustomResourceDefinitions for the Istio kinds ferry-control reads.
    Crds,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match args.command {
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
