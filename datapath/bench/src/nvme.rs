//! The `target` benchmark: random I/O through the Rust NVMe/TCP host ([`ferrite_host`]) to a
//! Ferrite target, compared with the bare TCP [`crate::baseline`] in alternating rounds.
//!
//! The target is either started in this process (listening on 127.0.0.1, one RAM namespace
//! filled with non-zero data before the first phase, so that reads copy real memory and
//! writes land in allocated chunks) or an external one named by `--target`/`--nqn`. The host
//! opens `--connections` controllers of `--io-queues` I/O queues each; worker `i` uses
//! controller `i % connections`, whose round-robin queue choice spreads its commands over its
//! queues. The baseline gets one connection per I/O queue actually granted.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use ferrite_block::{BlockDevice, IoBuf, RamDevice, format_size};
use ferrite_host::{Controller, HostOptions};
use ferrite_target::{HostAccess, NamespaceConfig, SubsystemConfig, Target, TargetOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::baseline::Baseline;
use crate::cli::TargetArgs;
use crate::compare::{self, Labels};
use crate::load::{Driver, Op, Phase};
use crate::report;

/// Subsystem NQN of the in-process target.
pub const BENCH_NQN: &str = "nqn.2024-01.dev.ferrite:bench";
/// Block size of the in-process RAM namespace.
pub(crate) const RAM_BLOCK_SIZE: u32 = 4096;
/// Bytes per write when filling a namespace.
const FILL_CHUNK: u64 = 1 << 20;
/// Fill writes kept in flight on an external target.
const FILL_DEPTH: usize = 16;
/// Most commands the host keeps outstanding per I/O queue (the target's CAP.MQES + 1).
pub(crate) const MAX_QUEUE_DEPTH: u32 = 128;
const LABELS: Labels = Labels {
    reference: "baseline",
    candidate: "target",
};

/// Runs `ferrite-bench target`: sets up both sides, runs every workload, prints the report.
pub async fn run(args: &TargetArgs, threads: usize) -> Result<()> {
    let load = &args.load;
    let qd = load.qd as usize;
    let bs = u64::from(load.bs);

    let (target, addr, nqn, nsid, described) = match (args.target, &args.nqn) {
        (Some(addr), Some(nqn)) => (
            None,
            addr,
            nqn.clone(),
            args.nsid,
            format!("external target {addr} {nqn} nsid {}", args.nsid),
        ),
        _ => {
            let (t, addr) = start_target(args.size).await?;
            (
                Some(t),
                addr,
                BENCH_NQN.to_string(),
                1,
                format!(
                    "in-process target {addr}, RAM namespace of {}",
                    format_size(args.size)
                ),
            )
        }
    };

    let ctrls = connect(addr, &nqn, args).await?;
    let first = ctrls.first().context("no controller connected")?;
    let geometry = first
        .namespace_geometry(nsid)
        .await
        .with_context(|| format!("namespace {nsid}"))?;
    ensure!(
        bs.is_multiple_of(u64::from(geometry.block_size)),
        "--bs {bs} is not a multiple of the namespace's {}-byte blocks",
        geometry.block_size
    );
    let range = args
        .size
        .min(geometry.num_blocks * u64::from(geometry.block_size));
    let slots = range / bs;
    ensure!(
        slots > 0,
        "the tested range ({range} bytes) holds no {bs}-byte I/O"
    );
    if target.is_none() && args.prefill {
        println!("filling the first {} of the namespace", format_size(range));
        fill_remote(first, nsid, geometry.block_size, range).await?;
    }
    let queues: usize = ctrls.iter().map(|c| c.io_queue_count()).sum();
    ensure!(queues > 0, "the controller granted no I/O queue");
    ensure!(
        qd >= queues,
        "--qd {qd} is below the {queues} I/O queues: some would stay idle"
    );

    let baseline = Baseline::start(queues, bs as usize).await?;
    let driver = Arc::new(NvmeDriver {
        ctrls: ctrls.clone(),
        nsid,
        slots,
        blocks_per_io: u32::try_from(bs / u64::from(geometry.block_size))
            .context("--bs too large")?,
        bs: bs as usize,
        seed: rand::random(),
    });

    println!(
        "ferrite-bench target: {described}; qd {qd}, {} controller(s) with {queues} I/O queue(s) in all, bs {bs}, \
         digests {}, {threads} runtime thread(s), {} round(s) of {:?} warm-up + {:?} measured per side",
        ctrls.len(),
        args.digests.name(),
        load.rounds,
        load.warmup,
        load.duration
    );
    let mut comparisons = Vec::new();
    for op in load.workload.ops() {
        let phase = Phase::of(load, op, qd, bs);
        comparisons.push(
            compare::alternate(
                &baseline.client,
                &driver,
                &phase,
                load.rounds as usize,
                LABELS,
            )
            .await?,
        );
    }

    drop(driver);
    baseline.stop();
    for c in &ctrls {
        if let Err(e) = c.disconnect().await {
            eprintln!("warning: disconnecting controller {}: {e}", c.cntlid());
        }
    }
    if let Some(t) = target {
        t.shutdown().await;
    }

    println!();
    print!("{}", report::table(LABELS, &comparisons));
    let params = [
        ("qd", qd.to_string()),
        ("connections", ctrls.len().to_string()),
        ("io_queues", queues.to_string()),
        ("bs", bs.to_string()),
        ("digests", args.digests.name().to_string()),
        ("threads", threads.to_string()),
        ("rounds", load.rounds.to_string()),
        ("duration_s", format!("{}", load.duration.as_secs_f64())),
    ];
    for line in report::results(LABELS, &params, &comparisons) {
        println!("{line}");
    }
    Ok(())
}

/// Starts the in-process target: one filled RAM namespace of `size` bytes on 127.0.0.1.
async fn start_target(size: u64) -> Result<(Arc<Target>, SocketAddr)> {
    let device =
        Arc::new(RamDevice::new(size, RAM_BLOCK_SIZE).context("creating the RAM namespace")?);
    fill_local(device.as_ref()).await?;
    let target = Target::new(TargetOptions::default());
    target
        .add_subsystem(SubsystemConfig {
            nqn: BENCH_NQN.into(),
            hosts: HostAccess::Any,
            namespaces: vec![NamespaceConfig { nsid: 1, device }],
        })
        .context("adding the benchmark subsystem")?;
    let addr = target
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("starting the target")?;
    Ok((target, addr))
}

/// Opens the controllers `args` asks for.
async fn connect(addr: SocketAddr, nqn: &str, args: &TargetArgs) -> Result<Vec<Arc<Controller>>> {
    let connections = args.connections.max(1);
    // Every worker of a controller may land on the same queue for a moment (round robin per
    // command), so each queue may need as many slots as the controller has workers.
    let per_controller = args.load.qd.div_ceil(connections);
    let opts = HostOptions {
        header_digest: args.digests.header(),
        data_digest: args.digests.data(),
        io_queues: args.io_queues,
        queue_depth: u16::try_from(per_controller.clamp(1, MAX_QUEUE_DEPTH)).unwrap_or(1),
        ..HostOptions::default()
    };
    let mut ctrls = Vec::new();
    for i in 0..connections {
        let c = Controller::connect(addr, nqn, opts.clone())
            .await
            .with_context(|| {
                format!(
                    "connecting controller {} of {connections} to {addr} {nqn}",
                    i + 1
                )
            })?;
        if c.io_queue_count() < usize::from(args.io_queues) {
            eprintln!(
                "note: controller {} granted {} of {} I/O queues",
                c.cntlid(),
                c.io_queue_count(),
                args.io_queues
            );
        }
        ctrls.push(Arc::new(c));
    }
    Ok(ctrls)
}

/// A recognisable non-zero pattern (a sparse RAM device skips all-zero writes).
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed) | 1)
        .collect()
}

/// Writes the whole device once, directly.
pub(crate) async fn fill_local(device: &dyn BlockDevice) -> Result<()> {
    let bs = u64::from(device.block_size());
    let size = device.size_bytes();
    let full = IoBuf::from_slice(&pattern(FILL_CHUNK as usize, 7));
    let mut off = 0;
    while off < size {
        let len = FILL_CHUNK.min(size - off);
        let mut buf = full.clone();
        buf.truncate(len as usize);
        device
            .write(off / bs, buf, false)
            .await
            .context("filling the RAM namespace")?;
        off += len;
    }
    Ok(())
}

/// Writes the first `range` bytes of an external namespace through the host.
async fn fill_remote(ctrl: &Arc<Controller>, nsid: u32, block_size: u32, range: u64) -> Result<()> {
    let bsz = u64::from(block_size);
    let chunk = (FILL_CHUNK / bsz).max(1) * bsz;
    let data = Arc::new(pattern(chunk as usize, 7));
    let mut tasks = JoinSet::new();
    let mut off = 0;
    while off < range || !tasks.is_empty() {
        while off < range && tasks.len() < FILL_DEPTH {
            let len = chunk.min(range - off);
            let (ctrl, data) = (ctrl.clone(), data.clone());
            tasks.spawn(async move {
                ctrl.write(nsid, off / bsz, &data[..len as usize], false)
                    .await
            });
            off += len;
        }
        if let Some(done) = tasks.join_next().await {
            done.context("fill task died")?
                .context("filling the namespace")?;
        }
    }
    Ok(())
}

/// Random I/O on the namespace through the host.
pub(crate) struct NvmeDriver {
    pub(crate) ctrls: Vec<Arc<Controller>>,
    pub(crate) nsid: u32,
    /// Number of `bs`-aligned I/O positions in the tested range.
    pub(crate) slots: u64,
    pub(crate) blocks_per_io: u32,
    pub(crate) bs: usize,
    pub(crate) seed: u64,
}

/// A worker's controller, random state and write data.
pub(crate) struct NvmeWorker {
    ctrl: Arc<Controller>,
    rng: SmallRng,
    op: Op,
    data: Vec<u8>,
}

impl Driver for NvmeDriver {
    type Worker = NvmeWorker;

    fn worker(&self, index: usize, _workers: usize, op: Op) -> NvmeWorker {
        let data = match op {
            Op::Write => pattern(self.bs, index as u8),
            Op::Read => Vec::new(),
        };
        NvmeWorker {
            ctrl: self.ctrls[index % self.ctrls.len()].clone(),
            rng: SmallRng::seed_from_u64(self.seed ^ index as u64),
            op,
            data,
        }
    }

    async fn issue(&self, w: &mut NvmeWorker) -> Result<()> {
        let lba = w.rng.random_range(0..self.slots) * u64::from(self.blocks_per_io);
        match w.op {
            Op::Read => {
                let data = w.ctrl.read(self.nsid, lba, self.blocks_per_io).await?;
                if data.len() != self.bs {
                    bail!("read of {} bytes returned {}", self.bs, data.len());
                }
            }
            Op::Write => w.ctrl.write(self.nsid, lba, &w.data, false).await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::load::run;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_io_against_the_in_process_target() {
        let (target, addr) = start_target(16 << 20).await.unwrap();
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "ferrite-bench",
            "target",
            "--qd",
            "8",
            "--io-queues",
            "2",
        ])
        .unwrap();
        let crate::cli::Command::Target(args) = cli.command else {
            panic!("not target")
        };
        let ctrls = connect(addr, BENCH_NQN, &args).await.unwrap();
        assert_eq!(ctrls[0].io_queue_count(), 2);
        let driver = Arc::new(NvmeDriver {
            ctrls: ctrls.clone(),
            nsid: 1,
            slots: 4096,
            blocks_per_io: 1,
            bs: 4096,
            seed: 1,
        });
        for op in [Op::Write, Op::Read] {
            let phase = Phase::short(op);
            let s = run(&driver, &phase).await.unwrap();
            assert!(
                s.recorder.ops() > 50,
                "{op:?}: only {} ops",
                s.recorder.ops()
            );
        }
        // The fill reached the device: a read returns the pattern, not zeroes.
        let block = ctrls[0].read(1, 4095, 1).await.unwrap();
        assert!(block.iter().all(|&b| b != 0));
        ctrls[0].disconnect().await.unwrap();
        target.shutdown().await;
    }
}
