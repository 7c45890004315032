//! The `rebuild` benchmark: the time a mirror takes to fully rebuild a new remote replica,
//! against a bare TCP stream of the same number of bytes over loopback, in alternating rounds.
//!
//! **Rebuild** (per round): a 1-replica mirror over a local RAM device of `--size` (plus the
//! 1 MiB label reserve), written through the mirror with non-zero data (a RAM device is sparse
//! and the rebuild must copy real data); a second in-process target on 127.0.0.1 exporting a
//! fresh RAM device; then, timed: `Mirror::add_replica` with a remote connector (the Rust host
//! over loopback NVMe/TCP, as the node agent does) and polling `Mirror::status()` every
//! [`POLL`] until that replica is `Healthy` (rebuilt and joined). Throughput = the rebuild's
//! `bytes_total` (the volume size) / elapsed.
//!
//! **TCP** (per round): one loopback connection (`TCP_NODELAY`), the client writes the same
//! number of bytes in `--chunk` writes from one buffer, the server reads them into a `--chunk`
//! buffer and discards them; timed from connect to the last byte read.
//!
//! The process's CPU time over each timed section is recorded too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferrite_block::format_size;
use ferrite_block::mirror::{LocalReplica, Mirror, MirrorOptions, ReplicaConnector, ReplicaState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::RebuildArgs;
use crate::compare::Labels;
use crate::mirror::{REPLICA_NQN, id, replica_device, replica_host_options, serve};
use crate::nvme::{fill_local, pattern};
use crate::report;
use crate::stats::{Transfer, process_cpu_time};
use ferrite_host::RemoteReplica;

/// How often the rebuild's status is polled.
const POLL: Duration = Duration::from_millis(2);
/// Longest a single rebuild may take before the benchmark gives up.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(600);
const LABELS: Labels = Labels {
    reference: "tcp",
    candidate: "rebuild",
};

fn cpu_now() -> Duration {
    process_cpu_time().unwrap_or_default()
}

/// Streams `bytes` over one loopback TCP connection in `chunk`-byte writes.
pub(crate) async fn tcp_stream(bytes: u64, chunk: usize) -> Result<Transfer> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("binding the TCP stream's listener")?;
    let addr = listener.local_addr()?;
    let data = pattern(chunk, 3);
    let (cpu0, t0) = (cpu_now(), Instant::now());
    let reader = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.context("accepting")?;
        sock.set_nodelay(true)?;
        let mut buf = vec![0u8; chunk];
        let mut got = 0u64;
        while got < bytes {
            let n = sock.read(&mut buf).await.context("reading the stream")?;
            if n == 0 {
                bail!("the stream ended after {got} of {bytes} bytes");
            }
            got += n as u64;
        }
        Ok::<_, anyhow::Error>(Instant::now())
    });
    let mut sock = TcpStream::connect(addr).await.context("connecting")?;
    sock.set_nodelay(true)?;
    let mut left = bytes;
    while left > 0 {
        let n = (chunk as u64).min(left) as usize;
        sock.write_all(&data[..n])
            .await
            .context("writing the stream")?;
        left -= n as u64;
    }
    sock.flush().await?;
    let done = reader.await.context("the stream reader died")??;
    let secs = (done - t0).as_secs_f64();
    let cpu_secs = cpu_now().saturating_sub(cpu0).as_secs_f64();
    drop(sock);
    Ok(Transfer {
        bytes,
        secs,
        cpu_secs,
    })
}

/// One full rebuild of a new remote replica of a filled `size`-byte mirror.
async fn rebuild_once(args: &RebuildArgs, round: u32) -> Result<Transfer> {
    let opts = MirrorOptions {
        region_size: args.region_size,
        rebuild_parallelism: args.parallel as usize,
        ..MirrorOptions::default()
    };
    let local = replica_device(args.size)?;
    let mirror = Mirror::create(
        id(100),
        vec![Arc::new(LocalReplica::new(id(101), local)) as Arc<dyn ReplicaConnector>],
        opts,
    )
    .await
    .context("creating the mirror")?;
    fill_local(&mirror).await.context("filling the mirror")?;
    let (target, addr) = serve(REPLICA_NQN, replica_device(args.size)?).await?;
    let new_id = id(102 + (round % 100) as u8);
    let connector = Arc::new(RemoteReplica {
        id: new_id,
        addr,
        nqn: REPLICA_NQN.into(),
        options: replica_host_options(args.replica_io_queues),
    });

    let (cpu0, t0) = (cpu_now(), Instant::now());
    mirror
        .add_replica(connector)
        .await
        .context("adding the remote replica")?;
    let progress = loop {
        let st = mirror.status();
        let r = st
            .replica(&new_id)
            .context("the new replica vanished from the mirror")?;
        match r.state {
            ReplicaState::Healthy => break r.last_rebuild.clone(),
            ReplicaState::Rebuilding | ReplicaState::Connecting => {}
            other => bail!(
                "the new replica became {other:?} during the rebuild: {}",
                r.last_error.as_deref().unwrap_or("no error recorded")
            ),
        }
        ensure!(
            t0.elapsed() < REBUILD_TIMEOUT,
            "the rebuild did not finish within {REBUILD_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL).await;
    };
    let secs = t0.elapsed().as_secs_f64();
    let cpu_secs = cpu_now().saturating_sub(cpu0).as_secs_f64();
    let bytes = progress.map_or(0, |p| p.bytes_total);
    ensure!(
        bytes == args.size,
        "the rebuild reported {bytes} bytes in all, expected the volume's {}",
        args.size
    );
    if let Err(e) = mirror.close().await {
        eprintln!("warning: closing the mirror: {e}");
    }
    // Drop the mirror (and so its host connection to the replica) before the replica target
    // goes, or the host logs that the controller hung up.
    drop(mirror);
    target.shutdown().await;
    Ok(Transfer {
        bytes,
        secs,
        cpu_secs,
    })
}

/// Runs `ferrite-bench rebuild`.
pub async fn run(args: &RebuildArgs, threads: usize) -> Result<()> {
    ensure!(
        args.size > 0 && args.size.is_multiple_of(args.region_size.max(1)),
        "--size must be a non-zero multiple of --region-size"
    );
    let chunk = usize::try_from(args.chunk)
        .ok()
        .filter(|&c| c > 0)
        .context("--chunk must be between 1 byte and the address space")?;
    println!(
        "ferrite-bench rebuild: full rebuild of a {} mirror (local RAM replica, {} regions, {} \
         copied at once) onto a new remote RAM replica over loopback NVMe/TCP ({} I/O queue(s)), against a {} loopback TCP \
         stream in {} writes; {threads} runtime thread(s), {} round(s)",
        format_size(args.size),
        format_size(args.region_size),
        args.parallel,
        args.replica_io_queues,
        format_size(args.size),
        format_size(args.chunk),
        args.rounds
    );
    let (mut tcp, mut rebuild) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let t = tcp_stream(args.size, chunk)
            .await
            .with_context(|| format!("tcp round {round}"))?;
        println!(
            "{}",
            report::transfer_round("rebuild", LABELS.reference, round as usize, &t)
        );
        tcp.push(t);
        let r = rebuild_once(args, round)
            .await
            .with_context(|| format!("rebuild round {round}"))?;
        println!(
            "{}",
            report::transfer_round("rebuild", LABELS.candidate, round as usize, &r)
        );
        rebuild.push(r);
    }
    let params = [
        ("bench", "rebuild".to_string()),
        ("size", args.size.to_string()),
        ("region_size", args.region_size.to_string()),
        ("chunk", args.chunk.to_string()),
        ("replica_io_queues", args.replica_io_queues.to_string()),
        ("parallel", args.parallel.to_string()),
        ("threads", threads.to_string()),
        ("rounds", args.rounds.to_string()),
    ];
    let (table, line) = report::transfer_result(LABELS, &params, &tcp, &rebuild);
    println!();
    print!("{table}");
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tcp_stream_moves_every_byte() {
        let t = tcp_stream(8 << 20, 100_000).await.unwrap();
        assert_eq!(t.bytes, 8 << 20);
        assert!(t.secs > 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_rebuild_completes() {
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "ferrite-bench",
            "rebuild",
            "--size",
            "8MiB",
        ])
        .unwrap();
        let crate::cli::Command::Rebuild(args) = cli.command else {
            panic!("not rebuild")
        };
        let t = rebuild_once(&args, 1).await.unwrap();
        assert_eq!(t.bytes, 8 << 20);
        assert!(t.secs > 0.0);
    }
}
