//! A real crash test of the thin store: a worker process (this test binary re-executed in
//! "worker mode") opens a file-backed store (`FileDevice`, `O_DIRECT`), creates volumes and
//! writes self-describing 4 KiB blocks, flushing every few batches and printing
//! `FLUSHED <seq>` / `CREATED <uuid>` / `DESTROYED <uuid>` only after those calls return
//! (and `ISSUE <batch>` / `DESTROYING <uuid>` before starting them). The
//! parent kills it with SIGKILL at a random moment, reopens the store in-process and checks:
//!
//! - every volume whose `CREATED` line was seen exists, unless its destroy had started
//!   (`DESTROYING`); a volume whose `DESTROYED` line was seen is gone;
//! - every block whose last write was covered by a seen `FLUSHED` line reads back as that
//!   version or a later operation on the same block (never an older version, never garbage);
//! - blocks never written read zero, and no block ever shows another volume's data.
//!
//! The store carries over from one iteration to the next, so each recovery starts from the
//! state left by the previous crash. Seed and iteration count can be set with
//! `FERRITE_THIN_CRASH_SEED` and `FERRITE_THIN_CRASH_ITERS`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_block::thin::{FormatOptions, ThinStore, format_uuid};
use ferrite_block::{BlockDevice, FileDevice, FileOptions, IoBuf};

const WORKER_ENV: &str = "FERRITE_THIN_CRASH_WORKER";
const SEED_ENV: &str = "FERRITE_THIN_CRASH_SEED";
const ITER_ENV: &str = "FERRITE_THIN_CRASH_ITER";
const ITERS_ENV: &str = "FERRITE_THIN_CRASH_ITERS";

const BS: u64 = 4096;
const DEVICE_BYTES: u64 = 64 << 20;
const CLUSTER: u32 = 64 << 10;
const CLUSTER_BLOCKS: u64 = CLUSTER as u64 / BS;
/// Two main volumes: a thin one and a thick one.
const MAIN: [([u8; 16], &str, u64, bool); 2] = [
    (uuid(0xa1), "main-a", 12 << 20, true),
    (uuid(0xb2), "main-b", 6 << 20, false),
];
const TEMP_TAG: u32 = 7;
const WRITES_PER_BATCH: u64 = 8;
const FLUSH_EVERY: u64 = 3;
const TEMP_EVERY: u64 = 7;
/// A worker never runs longer than this (it is normally killed much earlier).
const WORKER_MAX: Duration = Duration::from_secs(20);

const fn uuid(n: u8) -> [u8; 16] {
    let mut u = [0x5au8; 16];
    u[15] = n;
    u
}

fn temp_uuid(iter: u64, batch: u64) -> [u8; 16] {
    let mut u = uuid(0);
    u[0..8].copy_from_slice(&(iter << 32 | batch).to_le_bytes());
    u[14] = 0xee;
    u
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------------
// the schedule: a pure function of (seed, iteration, batch), so the parent knows what the
// worker did up to the last batch it announced

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Write block `lba` of volume `vol` with sequence number `seq`.
    Write { vol: usize, lba: u64, seq: u64 },
    /// Deallocate `n` blocks at `lba` of volume `vol`.
    Dealloc {
        vol: usize,
        lba: u64,
        n: u64,
        seq: u64,
    },
}

fn blocks(vol: usize) -> u64 {
    MAIN[vol].2 / BS
}

/// Sequence numbers of batch `b` are `b * 8 + 1 ..= b * 8 + 8`.
fn last_seq(batch: u64) -> u64 {
    batch * WRITES_PER_BATCH + WRITES_PER_BATCH
}

fn plan(seed: u64, iter: u64, batch: u64) -> Vec<Op> {
    let mut rng = Rng::new(seed ^ (iter << 40) ^ batch.wrapping_mul(0x1_0000_0001));
    let base = batch * WRITES_PER_BATCH;
    if rng.below(10) == 0 {
        let vol = rng.below(2) as usize;
        let n = 1 + rng.below(3 * CLUSTER_BLOCKS);
        let lba = rng.below(blocks(vol) - n);
        return vec![Op::Dealloc {
            vol,
            lba,
            n,
            seq: base + 1,
        }];
    }
    let mut seen = HashSet::new();
    let mut ops = Vec::new();
    for i in 0..WRITES_PER_BATCH {
        let vol = rng.below(2) as usize;
        let lba = rng.below(blocks(vol));
        if seen.insert((vol, lba)) {
            ops.push(Op::Write {
                vol,
                lba,
                seq: base + i + 1,
            });
        }
    }
    ops
}

/// A self-describing block: magic, volume tag, LBA, iteration, sequence, CRC32C of the rest.
fn block(tag: u32, lba: u64, iter: u64, seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    b[0..4].copy_from_slice(b"FCRT");
    b[4..8].copy_from_slice(&tag.to_le_bytes());
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b[16..24].copy_from_slice(&iter.to_le_bytes());
    b[24..32].copy_from_slice(&seq.to_le_bytes());
    let mut r = Rng::new(lba ^ (iter << 48) ^ (seq << 8) ^ u64::from(tag));
    for chunk in b[36..].chunks_mut(8) {
        let v = r.next().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..32]), &b[36..]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What a block holds: `Ok(None)` zeroes, `Ok(Some((tag, lba, iter, seq)))` a valid block.
fn parse(b: &[u8]) -> Result<Option<(u32, u64, u64, u64)>, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(None);
    }
    if &b[0..4] != b"FCRT" {
        return Err("garbage (no magic)".into());
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..32]), &b[36..]);
    if b[32..36] != crc.to_le_bytes() {
        return Err("torn or corrupt block (bad CRC)".into());
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let tag = u32::from_le_bytes(b[4..8].try_into().unwrap_or([0; 4]));
    Ok(Some((tag, u64_at(8), u64_at(16), u64_at(24))))
}

fn open_device(path: &Path, create: bool) -> Arc<dyn BlockDevice> {
    let opts = FileOptions {
        block_size: BS as u32,
        create_size: create.then_some(DEVICE_BYTES),
        ..FileOptions::default()
    };
    Arc::new(FileDevice::open(path, opts).expect("open the backing file"))
}

// ---------------------------------------------------------------------------------------------
// worker

/// Worker mode: only does something when re-executed by the parent with the worker env set.
#[test]
fn crash_worker() {
    let Ok(path) = std::env::var(WORKER_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let iter: u64 = std::env::var(ITER_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run_worker(PathBuf::from(path), seed, iter));
}

async fn run_worker(path: PathBuf, seed: u64, iter: u64) {
    // Start on a fresh line (the test harness leaves "test crash_worker ... " unterminated).
    println!();
    let dev = open_device(&path, false);
    let store = ThinStore::open(dev).await.expect("worker: open the store");
    let mut vols = Vec::new();
    for (u, name, size, thin) in MAIN {
        let v = store.create_volume(u, name, size, thin).await.unwrap();
        println!("CREATED {}", format_uuid(&u));
        vols.push(v);
    }
    let start = Instant::now();
    for batch in 0u64.. {
        if start.elapsed() > WORKER_MAX {
            break;
        }
        println!("ISSUE {batch}");
        let mut tasks = Vec::new();
        for op in plan(seed, iter, batch) {
            let vols = vols.clone();
            tasks.push(tokio::spawn(async move {
                match op {
                    Op::Write { vol, lba, seq } => {
                        let data = IoBuf::from_slice(&block(vol as u32, lba, iter, seq));
                        vols[vol].write(lba, data, false).await
                    }
                    Op::Dealloc { vol, lba, n, .. } => vols[vol].deallocate(lba, n).await,
                }
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        if batch % FLUSH_EVERY == FLUSH_EVERY - 1 {
            for v in &vols {
                v.flush().await.unwrap();
            }
            println!("FLUSHED {}", last_seq(batch));
        }
        if batch % TEMP_EVERY == TEMP_EVERY - 1 {
            let t = temp_uuid(iter, batch);
            let tmp = store
                .create_volume(t, "temp", 1 << 20, batch % 2 == 0)
                .await
                .unwrap();
            println!("CREATED {}", format_uuid(&t));
            for i in 0..4u64 {
                let lba = (batch * 5 + i * 67) % 256;
                let data = IoBuf::from_slice(&block(TEMP_TAG, lba, iter, batch));
                tmp.write(lba, data, false).await.unwrap();
            }
            println!("DESTROYING {}", format_uuid(&t));
            store.destroy(t).await.unwrap();
            println!("DESTROYED {}", format_uuid(&t));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// parent

/// What the parent learned from one worker's output.
#[derive(Default, Debug)]
struct Seen {
    created: HashSet<String>,
    /// Volumes whose destroy was started (it may or may not have completed).
    destroying: HashSet<String>,
    destroyed: HashSet<String>,
    flushed: Option<u64>,
    issued: Option<u64>,
}

fn parse_output(lines: &[String]) -> Seen {
    let mut s = Seen::default();
    for l in lines {
        // The test harness may print "test crash_worker ... " on the same line before the
        // worker's first output: look for the keyword anywhere in the line.
        let words: Vec<&str> = l.split_whitespace().collect();
        let Some(i) = words.iter().position(|w| {
            matches!(
                *w,
                "CREATED" | "DESTROYING" | "DESTROYED" | "FLUSHED" | "ISSUE"
            )
        }) else {
            continue;
        };
        match (words.get(i).copied(), words.get(i + 1).copied()) {
            (Some("CREATED"), Some(u)) => {
                s.created.insert(u.to_string());
            }
            (Some("DESTROYING"), Some(u)) => {
                s.destroying.insert(u.to_string());
            }
            (Some("DESTROYED"), Some(u)) => {
                s.destroyed.insert(u.to_string());
            }
            (Some("FLUSHED"), Some(n)) => {
                if let Ok(n) = n.parse::<u64>() {
                    s.flushed = s.flushed.max(Some(n));
                }
            }
            (Some("ISSUE"), Some(n)) => {
                if let Ok(n) = n.parse::<u64>() {
                    s.issued = s.issued.max(Some(n));
                }
            }
            _ => {}
        }
    }
    s
}

/// Per block of each main volume: the version that survived the previous iterations
/// (`None` = zeroes), as `(iteration, seq)`.
type Baseline = Vec<Vec<Option<(u64, u64)>>>;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Version {
    Write(u64),
    Zero(u64),
}

impl Version {
    fn seq(self) -> u64 {
        match self {
            Version::Write(s) | Version::Zero(s) => s,
        }
    }
}

struct Stats {
    flushed_blocks_checked: u64,
    killed_before_first_flush: u64,
    temp_volumes_checked: u64,
}

async fn verify(
    path: &Path,
    seed: u64,
    iter: u64,
    seen: &Seen,
    main_created: &mut [bool; 2],
    baseline: &mut Baseline,
    stats: &mut Stats,
) {
    let ctx = format!("seed {seed} iteration {iter}");
    let store = ThinStore::open(open_device(path, false))
        .await
        .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
    // Volumes.
    let listed: HashMap<String, _> = store
        .list()
        .into_iter()
        .map(|v| (format_uuid(&v.uuid), v))
        .collect();
    for u in &seen.created {
        if !seen.destroying.contains(u) {
            assert!(
                listed.contains_key(u),
                "{ctx}: created volume {u} is missing"
            );
        }
    }
    for u in &seen.destroyed {
        assert!(
            !listed.contains_key(u),
            "{ctx}: destroyed volume {u} still exists"
        );
    }
    // Operations per block of this iteration, up to the last announced batch.
    let mut ops: Vec<HashMap<u64, Vec<Version>>> = vec![HashMap::new(), HashMap::new()];
    if let Some(last) = seen.issued {
        for batch in 0..=last {
            for op in plan(seed, iter, batch) {
                match op {
                    Op::Write { vol, lba, seq } => {
                        ops[vol].entry(lba).or_default().push(Version::Write(seq))
                    }
                    Op::Dealloc { vol, lba, n, seq } => {
                        for l in lba..lba + n {
                            ops[vol].entry(l).or_default().push(Version::Zero(seq));
                        }
                    }
                }
            }
        }
    }
    let flushed = seen.flushed.unwrap_or(0);
    if seen.flushed.is_none() {
        stats.killed_before_first_flush += 1;
    }
    for (vi, (u, _, size, thin)) in MAIN.iter().enumerate() {
        main_created[vi] |= seen.created.contains(&format_uuid(u));
        let Some(vol) = store.volume(*u) else {
            assert!(!main_created[vi], "{ctx}: main volume {vi} missing");
            continue;
        };
        assert_eq!(vol.size_bytes(), *size, "{ctx}");
        assert_eq!(vol.is_thin(), *thin, "{ctx}");
        let data = vol.read(0, (size / BS) as u32).await.unwrap();
        for lba in 0..size / BS {
            let b = &data[(lba * BS) as usize..((lba + 1) * BS) as usize];
            let here: &[Version] = ops[vi].get(&lba).map(|v| &v[..]).unwrap_or(&[]);
            let required = here.iter().rev().find(|v| v.seq() <= flushed).copied();
            let allowed: Vec<Version> = match required {
                Some(r) => here
                    .iter()
                    .copied()
                    .filter(|v| v.seq() >= r.seq())
                    .collect(),
                None => here.to_vec(),
            };
            if required.is_some() {
                stats.flushed_blocks_checked += 1;
            }
            let prior = baseline[vi][lba as usize];
            let what = parse(b).unwrap_or_else(|e| panic!("{ctx}: volume {vi} block {lba}: {e}"));
            let ok = match what {
                None => {
                    (required.is_none() && prior.is_none())
                        || allowed.iter().any(|v| matches!(v, Version::Zero(_)))
                }
                Some((tag, l, it, seq)) => {
                    assert_eq!(
                        (tag, l),
                        (vi as u32, lba),
                        "{ctx}: volume {vi} block {lba} holds another block's data"
                    );
                    if it == iter {
                        allowed.contains(&Version::Write(seq))
                    } else {
                        required.is_none() && prior == Some((it, seq))
                    }
                }
            };
            assert!(
                ok,
                "{ctx}: volume {vi} block {lba} holds {what:?} (before: {prior:?}); flushed up to \
                 {flushed}, required {required:?}, allowed {allowed:?}"
            );
            baseline[vi][lba as usize] = what.map(|(_, _, it, seq)| (it, seq));
        }
    }
    // Temporary volumes left behind: their data must be their own, then they go.
    for (u, info) in &listed {
        if MAIN.iter().any(|m| format_uuid(&m.0) == *u) {
            continue;
        }
        stats.temp_volumes_checked += 1;
        let vol = store.volume(info.uuid).unwrap();
        let data = vol.read(0, (info.size / BS) as u32).await.unwrap();
        for (lba, b) in data.chunks(BS as usize).enumerate() {
            match parse(b) {
                Ok(None) => {}
                Ok(Some((tag, l, _, _))) => assert_eq!(
                    (tag, l),
                    (TEMP_TAG, lba as u64),
                    "{ctx}: temp volume {u} block {lba} holds foreign data"
                ),
                Err(e) => panic!("{ctx}: temp volume {u} block {lba}: {e}"),
            }
        }
        store.destroy(info.uuid).await.unwrap();
    }
    // Accounting is consistent after recovery.
    let list = store.list();
    let allocated: u64 = list.iter().map(|v| v.allocated_bytes).sum();
    let reserved: u64 = list
        .iter()
        .filter(|v| !v.thin)
        .map(|v| v.size - v.allocated_bytes)
        .sum();
    assert_eq!(
        store.used_bytes(),
        allocated + reserved,
        "{ctx}: accounting"
    );
}

#[test]
fn thin_store_survives_sigkill() {
    if std::env::var(WORKER_ENV).is_ok() {
        return;
    }
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let iters: u64 = std::env::var(ITERS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    eprintln!("thin crash test: seed {seed} ({SEED_ENV}), {iters} iterations");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("thin.img");
    let log = dir.path().join("worker.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = FormatOptions {
            cluster_size: CLUSTER,
            // A small journal: checkpoints happen every few commits, so kills land in them.
            journal_bytes: Some(12 * 4096),
            max_volumes: Some(16),
            force: false,
        };
        ThinStore::format_with(open_device(&path, true), &opts)
            .await
            .unwrap();
    });
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(seed);
    let mut baseline: Baseline = MAIN
        .iter()
        .map(|m| vec![None; (m.2 / BS) as usize])
        .collect();
    let mut main_created = [false; 2];
    let mut stats = Stats {
        flushed_blocks_checked: 0,
        killed_before_first_flush: 0,
        temp_volumes_checked: 0,
    };
    let mut flushes = 0u64;
    let started = Instant::now();
    for iter in 0..iters {
        let delay = Duration::from_millis(30 + rng.below(400));
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_worker", "--nocapture", "--test-threads=1"])
            .env(WORKER_ENV, &path)
            .env(SEED_ENV, seed.to_string())
            .env(ITER_ENV, iter.to_string())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(delay);
        let early = child.try_wait().unwrap();
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let lines = reader.join().unwrap();
        if let Some(st) = early {
            panic!(
                "seed {seed} iteration {iter}: worker exited by itself ({st}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let seen = parse_output(&lines);
        flushes += lines.iter().filter(|l| l.starts_with("FLUSHED")).count() as u64;
        eprintln!(
            "iteration {iter}: killed after {delay:?} ({status}); issued {:?} batches, flushed up to {:?}, {} volumes created",
            seen.issued.map(|b| b + 1),
            seen.flushed,
            seen.created.len()
        );
        rt.block_on(verify(
            &path,
            seed,
            iter,
            &seen,
            &mut main_created,
            &mut baseline,
            &mut stats,
        ));
    }
    let elapsed = started.elapsed();
    eprintln!(
        "thin crash test: {iters} SIGKILL iterations in {elapsed:.1?}; {flushes} flushes acknowledged, \
         {} flushed blocks verified, {} temp volumes recovered, {} kills before the first flush",
        stats.flushed_blocks_checked, stats.temp_volumes_checked, stats.killed_before_first_flush
    );
    assert!(
        main_created.iter().all(|&c| c),
        "the workers never created the volumes"
    );
    assert!(
        stats.flushed_blocks_checked > 0,
        "no flushed block was ever verified"
    );
}
