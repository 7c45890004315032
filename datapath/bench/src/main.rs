//! `ferrite-bench`: Ferrite's benchmarks.
//!
//! Every benchmark compares a candidate with a reference on one tokio runtime: the same
//! closed-loop load (`load`: a fixed number of workers, each with one I/O outstanding) runs
//! against each side in turn, alternating for several rounds (`compare`), and the medians are
//! reported with their ratio (`stats`, `report`). `target` measures the NVMe/TCP target through
//! the Rust host (`nvme`) against a bare TCP request/response protocol with the same message
//! sizes (`baseline`); `mirror` a 2-replica mirror (one remote replica over loopback) against a
//! 1-replica one through the same target (`mirror`, `remote`); `rebuild` the full rebuild of a
//! new remote replica against a bare TCP stream of the same size (`rebuild`). A new
//! closed-loop benchmark is a new `cli::Command` variant, a `load::Driver` for each side and a
//! call to `compare::alternate`.

mod baseline;
mod cli;
mod compare;
mod load;
mod mirror;
mod nvme;
mod rebuild;
mod report;
mod stats;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let threads = cli.command.threads();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match &cli.command {
            Command::Target(args) => nvme::run(args, threads).await,
            Command::Mirror(args) => mirror::run(args, threads).await,
            Command::Rebuild(args) => rebuild::run(args, threads).await,
        }
    })
}
