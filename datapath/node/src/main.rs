//! `ferrite-datapath`: the Ferrite node agent. It serves block devices as NVMe/TCP
//! subsystems, standalone from the command line or a YAML file, or as a self-contained demo;
//! on a Kubernetes node it holds pools, replicas and mirrored volumes, driven by the operator
//! through the node API (gRPC, `grpc.rs`) and persisted in a state file (`state.rs`).
//!
//! | module | owns |
//! |---|---|
//! | `cli`, `config`, `demo` | arguments, the YAML schema, the embedded demo |
//! | `serve` | start-up (config + state file), signals, shutdown |
//! | `storage` | pools, replicas, volumes: the work behind the API |
//! | `state` | the state file (atomic writes, merge with the config) |
//! | `grpc` | the node API: protobuf <-> storage |
//! | `http`, `status`, `metrics` | `/metrics`, `/v1/status`, compare |
//! | `remote` | remote replicas over the NVMe/TCP host library |

mod cli;
mod config;
mod demo;
mod grpc;
mod http;
mod metrics;
mod serve;
mod state;
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve::run(config, args.config.clone()))
}
