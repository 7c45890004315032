//! `ferrite-datapath`: the Ferrite node agent. It serves block devices as NVMe/TCP
//! subsystems, standalone from the command line or a YAML file, or as a self-contained demo.

mod cli;
mod config;
mod demo;
mod http;
mod metrics;
mod remote;
mod serve;
mod status;
mod storage;

use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level)),
        )
        .with_target(false)
        .init();
    let config = args.to_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve::run(config, args.config.clone()))
}
