//! A verifying I/O workload through the Rust NVMe/TCP host: every 4 KiB block written carries
//! its LBA, a sequence number and a CRC32C of its payload; every read checks all three against
//! what was acknowledged. I/O errors and verification failures are counted, never ignored.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrite_host::Controller;
use rand::{Rng, SeedableRng};

/// Size of one verified block.
pub const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"FERRVRFY";

/// Builds the contents of block `lba` at version `seq`.
pub fn block(lba: u64, seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    let mut x = lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq;
    for chunk in b[32..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let crc = crc32c::crc32c(&b[32..]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks a block read back: `Ok(seq)` if well formed for `lba`.
pub fn check(lba: u64, b: &[u8]) -> Result<u64, String> {
    if b.len() != BLOCK {
        return Err(format!("lba {lba}: {} bytes", b.len()));
    }
    if &b[..8] != MAGIC {
        return Err(format!(
            "lba {lba}: no block header (all zero: {})",
            b.iter().all(|&x| x == 0)
        ));
    }
    let got_lba = u64::from_le_bytes(b[8..16].try_into().map_err(|_| "short")?);
    let seq = u64::from_le_bytes(b[16..24].try_into().map_err(|_| "short")?);
    let crc = u32::from_le_bytes(b[24..28].try_into().map_err(|_| "short")?);
    if got_lba != lba {
        return Err(format!("lba {lba}: block belongs to lba {got_lba}"));
    }
    if crc32c::crc32c(&b[32..]) != crc {
        return Err(format!("lba {lba} seq {seq}: payload CRC mismatch"));
    }
    Ok(seq)
}

/// What a workload saw.
#[derive(Debug, Default)]
pub struct Report {
    pub writes: u64,
    pub reads: u64,
    pub flushes: u64,
    pub io_errors: Vec<String>,
    pub verify_failures: Vec<String>,
    /// Acknowledged sequence number per LBA.
    pub model: HashMap<u64, u64>,
    /// When each LBA was last written (acknowledged).
    pub written_at: HashMap<u64, Instant>,
    /// (start, end) of every flush that completed.
    pub flushes_at: Vec<(Instant, Instant)>,
}

impl Report {
    /// The start of the last flush that completed before `t`: writes acknowledged before it are
    /// durable on every replica; later ones may be lost by a replica that crashes at `t`.
    pub fn last_flush_before(&self, t: Instant) -> Option<Instant> {
        self.flushes_at
            .iter()
            .filter(|(_, end)| *end < t)
            .map(|(start, _)| *start)
            .max()
    }

    /// 1 MiB regions holding LBAs written (acknowledged) at or after `since`.
    pub fn regions_written_since(&self, since: Instant, region: u64) -> BTreeSet<u64> {
        self.written_at
            .iter()
            .filter(|(_, t)| **t >= since)
            .map(|(lba, _)| lba * BLOCK as u64 / region)
            .collect()
    }
}

/// Runs `tasks` writers/verifiers on namespace `nsid` over LBAs `0..lbas` (read on every
/// write, so a test can narrow it while running) until `stop` is set. Each task owns the LBAs
/// congruent to its index, writes one, reads back one it wrote, and flushes every 16 writes.
/// Returns the merged report.
pub async fn run(
    ctrl: Arc<Controller>,
    nsid: u32,
    lbas: Arc<std::sync::atomic::AtomicU64>,
    tasks: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Report {
    let report = Arc::new(Mutex::new(Report::default()));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (ctrl, report, stop, lbas) = (ctrl.clone(), report.clone(), stop.clone(), lbas.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0xfe0 + t);
            let mut mine: HashMap<u64, u64> = HashMap::new();
            let mut seq = t << 40;
            let mut n = 0u64;
            let record = |r: &Mutex<Report>, f: &dyn Fn(&mut Report)| {
                if let Ok(mut g) = r.lock() {
                    f(&mut g);
                }
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let range = (lbas.load(std::sync::atomic::Ordering::Relaxed) / tasks).max(1);
                let lba = rng.random_range(0..range) * tasks + t;
                seq += 1;
                match ctrl.write(nsid, lba, &block(lba, seq), false).await {
                    Ok(()) => {
                        mine.insert(lba, seq);
                        let now = Instant::now();
                        record(&report, &|r| {
                            r.writes += 1;
                            r.model.insert(lba, seq);
                            r.written_at.insert(lba, now);
                        });
                    }
                    Err(e) => record(&report, &|r| {
                        r.io_errors.push(format!("write lba {lba}: {e}"))
                    }),
                }
                n += 1;
                if n.is_multiple_of(16) {
                    let started = Instant::now();
                    match ctrl.flush(nsid).await {
                        Ok(()) => {
                            let ended = Instant::now();
                            record(&report, &|r| {
                                r.flushes += 1;
                                r.flushes_at.push((started, ended));
                            })
                        }
                        Err(e) => record(&report, &|r| r.io_errors.push(format!("flush: {e}"))),
                    }
                }
                let keys: Vec<u64> = mine.keys().copied().collect();
                let probe = keys[rng
                    .random_range(0..keys.len().max(1))
                    .min(keys.len().saturating_sub(1))];
                let Some(&want) = mine.get(&probe) else {
                    continue;
                };
                match ctrl.read(nsid, probe, 1).await {
                    Ok(buf) => {
                        let verdict = check(probe, &buf);
                        record(&report, &|r| {
                            r.reads += 1;
                            match &verdict {
                                Ok(s) if *s == want => {}
                                Ok(s) => r.verify_failures.push(format!(
                                    "lba {probe}: read seq {s}, acknowledged {want}"
                                )),
                                Err(e) => r.verify_failures.push(e.clone()),
                            }
                        });
                    }
                    Err(e) => record(&report, &|r| {
                        r.io_errors.push(format!("read lba {probe}: {e}"))
                    }),
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    match Arc::try_unwrap(report) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(shared) => shared
            .lock()
            .map(|r| Report {
                model: r.model.clone(),
                ..Report::default()
            })
            .unwrap_or_default(),
    }
}

/// Reads back every LBA of `model` (32 reads in flight) and verifies each holds the
/// acknowledged version.
pub async fn verify_all(ctrl: &Controller, nsid: u32, model: &HashMap<u64, u64>) -> Vec<String> {
    let entries: Vec<(u64, u64)> = model.iter().map(|(l, s)| (*l, *s)).collect();
    let mut failures = Vec::new();
    for chunk in entries.chunks(32) {
        let reads = chunk.iter().map(|&(lba, want)| async move {
            match ctrl.read(nsid, lba, 1).await {
                Ok(buf) => match check(lba, &buf) {
                    Ok(s) if s == want => None,
                    Ok(s) => Some(format!("lba {lba}: seq {s}, acknowledged {want}")),
                    Err(e) => Some(e),
                },
                Err(e) => Some(format!("read lba {lba}: {e}")),
            }
        });
        failures.extend(futures::future::join_all(reads).await.into_iter().flatten());
    }
    failures
}

/// Connect helper with the host defaults tests use.
pub async fn connect(addr: std::net::SocketAddr, nqn: &str) -> Result<Arc<Controller>, String> {
    let opts = ferrite_host::HostOptions {
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    Controller::connect(addr, nqn, opts)
        .await
        .map(Arc::new)
        .map_err(|e| format!("connect {nqn} at {addr}: {e}"))
}
