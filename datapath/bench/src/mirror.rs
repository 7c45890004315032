//! The `mirror` benchmark: random I/O through the Rust host to a volume that is a 2-replica
//! mirror (one local RAM replica, one remote RAM replica on a second in-process target reached
//! over loopback NVMe/TCP), compared in alternating rounds with a 1-replica mirror (one local
//! RAM replica) served by the same target.
//!
//! Both volumes are `ferrite_block::mirror::Mirror`s served by one in-process target (two
//! subsystems), so the only difference between the sides is the second, remote replica: the
//! fan-out of every write to it over NVMe/TCP (the mirror's own host connection to the replica
//! target) and its completion. Reads of a 2-replica mirror are spread round robin over both
//! replicas, so half of them cross the second hop. Both volumes are filled with non-zero data
//! through the mirror before anything is measured (so the remote replica holds real data too).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use ferrite_block::mirror::{LocalReplica, Mirror, MirrorOptions, RESERVE_BYTES, ReplicaConnector};
use ferrite_block::{BlockDevice, RamDevice, format_size};
use ferrite_host::{Controller, HostOptions};
use ferrite_target::{HostAccess, NamespaceConfig, SubsystemConfig, Target, TargetOptions};

use crate::cli::MirrorArgs;
use crate::compare::{self, Labels};
use crate::load::Phase;
use crate::nvme::{MAX_QUEUE_DEPTH, NvmeDriver, RAM_BLOCK_SIZE, fill_local};
use crate::report;
use ferrite_host::RemoteReplica;

/// Subsystem of the 1-replica volume.
pub const SINGLE_NQN: &str = "nqn.2024-01.dev.ferrite:bench-single";
/// Subsystem of the 2-replica volume.
pub const MIRRORED_NQN: &str = "nqn.2024-01.dev.ferrite:bench-mirrored";
/// Subsystem of the replica target exporting the remote replica.
pub const REPLICA_NQN: &str = "nqn.2024-01.dev.ferrite:bench-replica";
const LABELS: Labels = Labels {
    reference: "single",
    candidate: "mirrored",
};

/// A fixed, distinct id per replica (the benchmark's mirrors are never re-assembled).
pub(crate) fn id(n: u8) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = 0xfe;
    id[15] = n;
    id
}

/// A RAM device big enough for a `size`-byte mirror volume (plus the label reserve).
pub(crate) fn replica_device(size: u64) -> Result<Arc<RamDevice>> {
    Ok(Arc::new(
        RamDevice::new(size + RESERVE_BYTES, RAM_BLOCK_SIZE).context("creating a RAM replica")?,
    ))
}

/// Starts a target on 127.0.0.1 exporting `device` as namespace 1 of `nqn`.
pub(crate) async fn serve(
    nqn: &str,
    device: Arc<dyn BlockDevice>,
) -> Result<(Arc<Target>, SocketAddr)> {
    let target = Target::new(TargetOptions::default());
    target
        .add_subsystem(SubsystemConfig {
            nqn: nqn.into(),
            hosts: HostAccess::Any,
            namespaces: vec![NamespaceConfig { nsid: 1, device }],
        })
        .with_context(|| format!("adding subsystem {nqn}"))?;
    let addr = target
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("starting a target")?;
    Ok((target, addr))
}

/// The host options of the mirror's connection to a remote replica.
pub(crate) fn replica_host_options(io_queues: u16) -> HostOptions {
    HostOptions {
        io_queues,
        ..HostOptions::default()
    }
}

/// Everything the benchmark set up.
struct Setup {
    volume_target: Arc<Target>,
    replica_target: Arc<Target>,
    single: Arc<Mirror>,
    mirrored: Arc<Mirror>,
    addr: SocketAddr,
}

async fn setup(args: &MirrorArgs) -> Result<Setup> {
    let opts = MirrorOptions::default();
    // The remote replica: a second target on loopback.
    let (replica_target, replica_addr) = serve(REPLICA_NQN, replica_device(args.size)?).await?;

    let single = Mirror::create(
        id(1),
        vec![
            Arc::new(LocalReplica::new(id(11), replica_device(args.size)?))
                as Arc<dyn ReplicaConnector>,
        ],
        opts.clone(),
    )
    .await
    .context("creating the 1-replica mirror")?;
    let mirrored = Mirror::create(
        id(2),
        vec![
            Arc::new(LocalReplica::new(id(21), replica_device(args.size)?))
                as Arc<dyn ReplicaConnector>,
            Arc::new(RemoteReplica {
                id: id(22),
                addr: replica_addr,
                nqn: REPLICA_NQN.into(),
                options: replica_host_options(args.replica_io_queues),
            }),
        ],
        opts,
    )
    .await
    .context("creating the 2-replica mirror")?;
    let (single, mirrored) = (Arc::new(single), Arc::new(mirrored));
    let st = mirrored.status();
    ensure!(
        st.healthy() == 2,
        "the 2-replica mirror has {} healthy replica(s): {:?}",
        st.healthy(),
        st.replicas
    );
    fill_local(single.as_ref())
        .await
        .context("filling the 1-replica volume")?;
    fill_local(mirrored.as_ref())
        .await
        .context("filling the 2-replica volume")?;

    let volume_target = Target::new(TargetOptions::default());
    for (nqn, dev) in [(SINGLE_NQN, &single), (MIRRORED_NQN, &mirrored)] {
        volume_target
            .add_subsystem(SubsystemConfig {
                nqn: nqn.into(),
                hosts: HostAccess::Any,
                namespaces: vec![NamespaceConfig {
                    nsid: 1,
                    device: Arc::clone(dev) as Arc<dyn BlockDevice>,
                }],
            })
            .with_context(|| format!("adding subsystem {nqn}"))?;
    }
    let addr = volume_target
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("starting the volume target")?;
    Ok(Setup {
        volume_target,
        replica_target,
        single,
        mirrored,
        addr,
    })
}

/// The host's driver for one volume.
async fn driver(addr: SocketAddr, nqn: &str, args: &MirrorArgs) -> Result<Arc<NvmeDriver>> {
    let bs = u64::from(args.load.bs);
    let opts = HostOptions {
        io_queues: args.io_queues,
        queue_depth: u16::try_from(args.load.qd.clamp(1, MAX_QUEUE_DEPTH)).unwrap_or(1),
        ..HostOptions::default()
    };
    let ctrl = Controller::connect(addr, nqn, opts)
        .await
        .with_context(|| format!("connecting to {addr} {nqn}"))?;
    let geometry = ctrl.namespace_geometry(1).await.context("namespace 1")?;
    ensure!(
        bs.is_multiple_of(u64::from(geometry.block_size)),
        "--bs {bs} is not a multiple of the volume's {}-byte blocks",
        geometry.block_size
    );
    let slots = geometry.num_blocks * u64::from(geometry.block_size) / bs;
    ensure!(slots > 0, "the volume holds no {bs}-byte I/O");
    Ok(Arc::new(NvmeDriver {
        ctrls: vec![Arc::new(ctrl)],
        nsid: 1,
        slots,
        blocks_per_io: u32::try_from(bs / u64::from(geometry.block_size))
            .context("--bs too large")?,
        bs: bs as usize,
        seed: rand::random(),
    }))
}

/// Runs `ferrite-bench mirror`.
pub async fn run(args: &MirrorArgs, threads: usize) -> Result<()> {
    let load = &args.load;
    let qd = load.qd as usize;
    let bs = u64::from(load.bs);
    let s = setup(args).await?;
    let single = driver(s.addr, SINGLE_NQN, args).await?;
    let mirrored = driver(s.addr, MIRRORED_NQN, args).await?;
    println!(
        "ferrite-bench mirror: in-process target {} serving a {} 1-replica mirror (local RAM) and a \
         {} 2-replica mirror (local RAM + remote RAM on target {} over loopback, {} I/O queue(s)); \
         qd {qd}, {} host I/O queue(s) per volume, bs {bs}, {threads} runtime thread(s), {} round(s) \
         of {:?} warm-up + {:?} measured per side",
        s.addr,
        format_size(args.size),
        format_size(args.size),
        s.replica_target
            .listen_addrs()
            .first()
            .map_or_else(|| "?".to_string(), |a| a.to_string()),
        args.replica_io_queues,
        args.io_queues,
        load.rounds,
        load.warmup,
        load.duration
    );
    let mut comparisons = Vec::new();
    for op in load.workload.ops() {
        let phase = Phase::of(load, op, qd, bs);
        comparisons.push(
            compare::alternate(&single, &mirrored, &phase, load.rounds as usize, LABELS).await?,
        );
    }
    // The remote replica must still be in sync: a fault would have turned the mirrored side
    // into a 1-replica volume halfway through.
    let st = s.mirrored.status();
    let healthy = st.healthy();

    for d in [&single, &mirrored] {
        for c in &d.ctrls {
            if let Err(e) = c.disconnect().await {
                eprintln!("warning: disconnecting controller {}: {e}", c.cntlid());
            }
        }
    }
    drop((single, mirrored));
    s.volume_target.shutdown().await;
    for m in [&s.single, &s.mirrored] {
        if let Err(e) = m.close().await {
            eprintln!("warning: closing a mirror: {e}");
        }
    }
    // Drop the mirrors (and so the mirror's host connection to its remote replica) before the
    // replica target goes, or the host logs that the controller hung up.
    let Setup {
        volume_target,
        replica_target,
        single,
        mirrored,
        ..
    } = s;
    drop((volume_target, single, mirrored));
    replica_target.shutdown().await;
    ensure!(
        healthy == 2,
        "the remote replica left the mirror during the run ({healthy} healthy): {:?}",
        st.replicas
            .iter()
            .map(|r| (r.description.clone(), r.state, r.last_error.clone()))
            .collect::<Vec<_>>()
    );

    println!();
    print!("{}", report::table(LABELS, &comparisons));
    let params = [
        ("bench", "mirror".to_string()),
        ("qd", qd.to_string()),
        ("io_queues", args.io_queues.to_string()),
        ("replica_io_queues", args.replica_io_queues.to_string()),
        ("bs", bs.to_string()),
        ("size", args.size.to_string()),
        ("threads", threads.to_string()),
        ("rounds", load.rounds.to_string()),
        ("duration_s", format!("{}", load.duration.as_secs_f64())),
    ];
    for line in report::results(LABELS, &params, &comparisons) {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::load::{Op, run as run_phase};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_volumes_take_random_io() {
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "ferrite-bench",
            "mirror",
            "--qd",
            "8",
            "--size",
            "8MiB",
        ])
        .unwrap();
        let crate::cli::Command::Mirror(args) = cli.command else {
            panic!("not mirror")
        };
        let s = setup(&args).await.unwrap();
        assert_eq!(s.mirrored.status().healthy(), 2);
        for nqn in [SINGLE_NQN, MIRRORED_NQN] {
            let d = driver(s.addr, nqn, &args).await.unwrap();
            assert_eq!(d.slots, 8 << 20 >> 12);
            for op in [Op::Write, Op::Read] {
                let phase = Phase::short(op);
                let sample = run_phase(&d, &phase).await.unwrap();
                assert!(
                    sample.recorder.ops() > 20,
                    "{nqn} {op:?}: {}",
                    sample.recorder.ops()
                );
            }
            d.ctrls[0].disconnect().await.unwrap();
        }
        assert_eq!(s.mirrored.status().healthy(), 2);
        s.volume_target.shutdown().await;
        s.replica_target.shutdown().await;
    }
}
