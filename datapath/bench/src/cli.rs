//! The command line: one subcommand per benchmark, sharing [`LoadArgs`] (queue depth, timing,
//! block size, workload, rounds, runtime threads).

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::load::Op;

/// Ferrite benchmarks. Every benchmark alternates a reference and a candidate in rounds, on one
/// tokio runtime, and reports the medians and their ratio.
#[derive(Parser, Debug)]
#[command(name = "ferrite-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The benchmarks.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// 4 KiB random I/O through the Rust NVMe/TCP host to a Ferrite target (in-process on
    /// 127.0.0.1 with a RAM namespace, or external with --target/--nqn), against a bare TCP
    /// request/response baseline with the same message sizes and concurrency.
    Target(TargetArgs),
    /// 4 KiB random I/O through the Rust host to an in-process target serving a 2-replica
    /// mirror (one local RAM replica, one remote RAM replica on a second in-process target over
    /// loopback), against the same target serving a 1-replica mirror (one local RAM replica).
    Mirror(MirrorArgs),
    /// Full rebuild of a new remote replica (over loopback NVMe/TCP) of a filled mirror,
    /// against a bare TCP stream of the same number of bytes over loopback.
    Rebuild(RebuildArgs),
}

impl Command {
    /// Worker threads of the tokio runtime for whichever benchmark was chosen.
    pub fn threads(&self) -> usize {
        let threads = match self {
            Command::Target(a) => a.load.threads,
            Command::Mirror(a) => a.load.threads,
            Command::Rebuild(a) => a.threads,
        };
        runtime_threads(threads)
    }
}

/// `--threads`, or the number of CPUs.
fn runtime_threads(threads: Option<u32>) -> usize {
    match threads {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Options every benchmark shares.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Total outstanding I/Os (one worker task per outstanding I/O), split across connections.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub qd: u32,
    /// Measured time of each phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time at the start of each phase.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Bytes per I/O (a multiple of the namespace block size).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(512..=(1 << 20)))]
    pub bs: u32,
    /// Which I/O to run; `both` runs randread, then randwrite.
    #[arg(long, value_enum, default_value_t = Workload::Both)]
    pub workload: Workload,
    /// Reference/candidate pairs to run, alternating; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Worker threads of the tokio runtime everything runs on [default: the number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
}

/// Which random I/O to run.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Randread,
    Randwrite,
    Both,
}

impl Workload {
    /// The operations to run, in order.
    pub fn ops(self) -> Vec<Op> {
        match self {
            Workload::Randread => vec![Op::Read],
            Workload::Randwrite => vec![Op::Write],
            Workload::Both => vec![Op::Read, Op::Write],
        }
    }
}

/// NVMe/TCP digests the host requests.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestMode {
    None,
    Header,
    Data,
    Both,
}

impl DigestMode {
    pub fn header(self) -> bool {
        matches!(self, DigestMode::Header | DigestMode::Both)
    }

    pub fn data(self) -> bool {
        matches!(self, DigestMode::Data | DigestMode::Both)
    }

    pub fn name(self) -> &'static str {
        match self {
            DigestMode::None => "none",
            DigestMode::Header => "header",
            DigestMode::Data => "data",
            DigestMode::Both => "both",
        }
    }
}

/// Options of `ferrite-bench target`.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Host controllers (NVMe/TCP associations) to open; workers are spread over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: u32,
    /// I/O queues (one TCP connection each) per controller.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub io_queues: u16,
    /// Size of the in-process RAM namespace; with --target, the tested range at the start of
    /// the namespace (capped at its size).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    /// NVMe/TCP digests to request.
    #[arg(long, value_enum, default_value_t = DigestMode::None)]
    pub digests: DigestMode,
    /// An external target (e.g. ferrite-datapath) instead of the in-process one.
    #[arg(long, requires = "nqn")]
    pub target: Option<SocketAddr>,
    /// Subsystem NQN on the external target.
    #[arg(long, requires = "target")]
    pub nqn: Option<String>,
    /// Namespace to use on the external target.
    #[arg(long, default_value_t = 1, requires = "target")]
    pub nsid: u32,
    /// Write the tested range of the external namespace once before measuring (the in-process
    /// RAM namespace is always filled).
    #[arg(long, requires = "target")]
    pub prefill: bool,
}

/// Options of `ferrite-bench mirror`.
#[derive(Args, Debug, Clone)]
pub struct MirrorArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Volume size (each RAM replica is this plus the mirror's 1 MiB label reserve; three RAM
    /// devices are allocated and filled).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,
    /// I/O queues (one TCP connection each) of the host's controller to each volume.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub io_queues: u16,
    /// I/O queues of the mirror's connection to its remote replica.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub replica_io_queues: u16,
}

/// Options of `ferrite-bench rebuild`.
#[derive(Args, Debug, Clone)]
pub struct RebuildArgs {
    /// Bytes to rebuild (the mirror's volume size) and to stream over TCP.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,
    /// TCP-stream/rebuild pairs to run, alternating; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Bytes per write (and per read buffer) of the TCP stream.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub chunk: u64,
    /// Dirty-region (and rebuild copy) size of the mirror.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub region_size: u64,
    /// I/O queues of the mirror's connection to the new remote replica.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub replica_io_queues: u16,
    /// Regions the rebuild copies at once (the mirror's `rebuild_parallelism`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Worker threads of the tokio runtime everything runs on [default: the number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
}

/// Parses `10s`, `500ms`, `250us`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?} (use us, ms, s or m)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses a size with ferrite-block's rules (`K/M/G/T`, `KiB/MiB/GiB/TiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    ferrite_block::parse_size(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn target_command_defaults() {
        let cli = Cli::try_parse_from(["ferrite-bench", "target"]).unwrap();
        let Command::Target(a) = cli.command else {
            panic!("not target")
        };
        assert_eq!(a.load.qd, 32);
        assert_eq!(a.load.duration, Duration::from_secs(10));
        assert_eq!(a.load.warmup, Duration::from_secs(2));
        assert_eq!(a.load.bs, 4096);
        assert_eq!(a.load.rounds, 3);
        assert_eq!(a.load.workload, Workload::Both);
        assert_eq!(a.size, 1 << 30);
        assert_eq!(a.digests, DigestMode::None);
        assert!(a.target.is_none());
    }

    #[test]
    fn external_target_needs_an_nqn() {
        assert!(
            Cli::try_parse_from(["ferrite-bench", "target", "--target", "127.0.0.1:4420"]).is_err()
        );
        let cli = Cli::try_parse_from([
            "ferrite-bench",
            "target",
            "--target",
            "127.0.0.1:4420",
            "--nqn",
            "nqn.2024-01.dev.ferrite:vol1",
            "--workload",
            "randwrite",
            "--digests",
            "both",
        ])
        .unwrap();
        let Command::Target(a) = cli.command else {
            panic!("not target")
        };
        assert_eq!(a.nqn.as_deref(), Some("nqn.2024-01.dev.ferrite:vol1"));
        assert_eq!(a.load.workload.ops(), vec![Op::Write]);
        assert!(a.digests.header() && a.digests.data());
    }

    #[test]
    fn mirror_command() {
        let cli = Cli::try_parse_from(["ferrite-bench", "mirror"]).unwrap();
        let Command::Mirror(a) = &cli.command else {
            panic!("not mirror")
        };
        assert_eq!(a.load.qd, 32);
        assert_eq!(a.load.rounds, 3);
        assert_eq!(a.size, 256 << 20);
        assert_eq!(a.io_queues, 1);
        assert_eq!(a.replica_io_queues, 2);
        let cli = Cli::try_parse_from([
            "ferrite-bench",
            "mirror",
            "--qd",
            "8",
            "--duration",
            "3s",
            "--rounds",
            "5",
            "--workload",
            "randwrite",
            "--size",
            "64MiB",
            "--threads",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.command.threads(), 2);
        let Command::Mirror(a) = cli.command else {
            panic!("not mirror")
        };
        assert_eq!(a.load.qd, 8);
        assert_eq!(a.load.duration, Duration::from_secs(3));
        assert_eq!(a.load.rounds, 5);
        assert_eq!(a.load.workload.ops(), vec![Op::Write]);
        assert_eq!(a.size, 64 << 20);
        assert!(Cli::try_parse_from(["ferrite-bench", "mirror", "--qd", "0"]).is_err());
        assert!(Cli::try_parse_from(["ferrite-bench", "mirror", "--target", "x"]).is_err());
    }

    #[test]
    fn rebuild_command() {
        let cli = Cli::try_parse_from(["ferrite-bench", "rebuild"]).unwrap();
        let Command::Rebuild(a) = &cli.command else {
            panic!("not rebuild")
        };
        assert_eq!(a.size, 256 << 20);
        assert_eq!(a.rounds, 3);
        assert_eq!(a.chunk, 1 << 20);
        assert_eq!(a.region_size, 1 << 20);
        assert!(a.threads.is_none());
        let cli = Cli::try_parse_from([
            "ferrite-bench",
            "rebuild",
            "--size",
            "1GiB",
            "--rounds",
            "1",
            "--threads",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.command.threads(), 3);
        let Command::Rebuild(a) = cli.command else {
            panic!("not rebuild")
        };
        assert_eq!((a.size, a.rounds), (1 << 30, 1));
        assert!(Cli::try_parse_from(["ferrite-bench", "rebuild", "--qd", "4"]).is_err());
        assert!(Cli::try_parse_from(["ferrite-bench", "rebuild", "--rounds", "0"]).is_err());
    }
}
