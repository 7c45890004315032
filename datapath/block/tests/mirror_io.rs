//! Mirror host I/O: fan-out writes, balanced reads, degraded operation, stale replicas never
//! serving reads, and total failure turning into errors rather than hangs.

mod mirror_support;

use std::sync::Arc;
use std::time::Duration;

use ferrite_block::mirror::{Mirror, ReplicaState, compare_replicas, inspect};
use ferrite_block::{BlockDevice, IoBuf};
use mirror_support::*;

const SIZE: u64 = 64 * MIB;

async fn two_way() -> (Mirror, Arc<Faulty>, Arc<Faulty>) {
    let a = Faulty::ram(SIZE);
    let b = Faulty::ram(SIZE);
    let m = Mirror::create(
        [0x11; 16],
        vec![connector(1, &a), connector(2, &b)],
        fast_opts(),
    )
    .await
    .expect("create");
    (m, a, b)
}

#[tokio::test]
async fn mirror_writes_reach_every_replica_and_reads_are_balanced() {
    let (m, a, b) = two_way().await;
    assert_eq!(m.size_bytes(), SIZE - MIB);
    assert_eq!(m.block_size(), 4096);
    let s = m.status();
    assert_eq!(s.generation, 1);
    assert_eq!(s.healthy(), 2);
    for i in 0..32u64 {
        m.write(i * 64, pattern(8192, i), i % 3 == 0).await.unwrap();
    }
    m.write_zeroes(64, 1, false).await.unwrap();
    m.deallocate(128, 2).await.unwrap();
    m.flush().await.unwrap();
    for f in [&a, &b] {
        assert_eq!(
            f.flushes.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "flush reaches every replica"
        );
        assert_eq!(
            f.fua_writes.load(std::sync::atomic::Ordering::SeqCst),
            11,
            "FUA reaches every replica"
        );
    }
    for i in 0..32u64 {
        let got = m.read(i * 64, 2).await.unwrap();
        let mut want = pattern(8192, i);
        if i == 1 {
            want[..4096].fill(0);
        }
        if i == 2 {
            want.fill(0);
        }
        assert_eq!(got, want, "block {i}");
    }
    assert!(
        a.reads() >= 10 && b.reads() >= 10,
        "round-robin: {} / {}",
        a.reads(),
        b.reads()
    );
    let r = compare_replicas(a.inner().as_ref(), b.inner().as_ref(), MIB)
        .await
        .unwrap();
    assert!(r.identical(), "{r:?}");
    assert_eq!(r.bytes_compared, SIZE - MIB);
    // Out-of-range and misaligned requests are the host's error and fault nothing.
    assert!(m.read(m.num_blocks(), 1).await.is_err());
    assert!(m.write(0, IoBuf::zeroed(100), false).await.is_err());
    assert_eq!(m.status().healthy(), 2);
    m.close().await.unwrap();
    assert!(m.read(0, 1).await.is_err(), "closed");
    let l = inspect(a.inner().as_ref()).await.unwrap().unwrap();
    assert!(l.clean);
    assert_eq!(l.in_sync, vec![[1; 16], [2; 16]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_degraded_writes_keep_succeeding_with_zero_host_errors() {
    bounded(30, "test", async {
        let (m, a, b) = two_way().await;
        let m = Arc::new(m);
        let writer = {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                let mut errors = 0;
                for i in 0..400u64 {
                    let lba = i * 37 % 15_000;
                    if m.write(lba, pattern(4096, i), false).await.is_err() {
                        errors += 1;
                    }
                    if i % 50 == 0 && m.flush().await.is_err() {
                        errors += 1;
                    }
                    tokio::task::yield_now().await;
                }
                errors
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        b.set(Mode::FailIo);
        let errors = writer.await.unwrap();
        assert_eq!(errors, 0, "host saw errors while one replica was healthy");
        let s = m.status();
        let rb = s.replica(&[2; 16]).unwrap();
        assert!(!rb.in_sync);
        assert_ne!(rb.state, ReplicaState::Healthy);
        assert!(s.generation >= 2);
        assert!(s.bitmap_base.is_some());
        // The survivor's label lists only itself and carries the dirty regions.
        let l = inspect(a.inner().as_ref()).await.unwrap().unwrap();
        assert_eq!(l.in_sync, vec![[1; 16]]);
        assert_eq!(l.generation, s.generation);
        assert!(!l.dirty_regions.is_empty());
        // Every write is readable.
        for i in 0..400u64 {
            let lba = i * 37 % 15_000;
            let later_overwrite = (i + 1..400).any(|j| j * 37 % 15_000 == lba);
            if !later_overwrite {
                assert_eq!(m.read(lba, 1).await.unwrap(), pattern(4096, i));
            }
        }
    })
    .await;
}

#[tokio::test]
async fn mirror_reads_never_hit_a_stale_replica() {
    bounded(30, "test", async {
        let (m, a, b) = two_way().await;
        m.write(0, pattern(4 * 4096, 1), false).await.unwrap();
        b.set(Mode::Disconnected);
        m.write(0, pattern(4 * 4096, 2), false).await.unwrap();
        let stale_reads = b.reads();
        for _ in 0..50 {
            assert_eq!(m.read(0, 4).await.unwrap(), pattern(4 * 4096, 2));
        }
        assert_eq!(b.reads(), stale_reads, "a faulted replica served reads");
        // Let it come back but rebuild slowly: it must not serve reads while rebuilding.
        b.write_delay_ms
            .store(20, std::sync::atomic::Ordering::SeqCst);
        b.set(Mode::Ok);
        wait_for(&m, 10, "rebuild start", |s| {
            s.replica(&[2; 16]).unwrap().state == ReplicaState::Rebuilding
        })
        .await;
        let before = b.reads();
        for _ in 0..50 {
            assert_eq!(m.read(0, 4).await.unwrap(), pattern(4 * 4096, 2));
        }
        assert_eq!(b.reads(), before, "a rebuilding replica served reads");
        assert!(a.reads() > 0);
        b.write_delay_ms
            .store(0, std::sync::atomic::Ordering::SeqCst);
        wait_for(&m, 10, "rebuild done", all_healthy).await;
        for _ in 0..20 {
            assert_eq!(m.read(0, 4).await.unwrap(), pattern(4 * 4096, 2));
        }
        assert!(b.reads() > before, "back in sync, it serves reads again");
    })
    .await;
}

#[tokio::test]
async fn mirror_read_error_retries_on_another_replica_and_faults_the_bad_one() {
    let (m, _a, b) = two_way().await;
    m.write(10, pattern(4096, 5), false).await.unwrap();
    b.set(Mode::FailIo);
    for _ in 0..4 {
        assert_eq!(m.read(10, 1).await.unwrap(), pattern(4096, 5));
    }
    let s = m.status();
    assert!(!s.replica(&[2; 16]).unwrap().in_sync);
    assert_eq!(s.generation, 2);
}

#[tokio::test]
async fn mirror_all_replicas_failed_gives_errors_not_hangs_and_recovers() {
    bounded(30, "test", async {
        let (m, a, b) = two_way().await;
        m.write(0, pattern(4096, 1), false).await.unwrap();
        a.set(Mode::FailIo);
        b.set(Mode::Disconnected);
        assert!(m.write(0, pattern(4096, 2), false).await.is_err());
        assert!(m.write(8, pattern(4096, 3), false).await.is_err());
        assert!(m.read(0, 1).await.is_err());
        assert!(m.flush().await.is_err());
        assert_eq!(m.status().healthy(), 0);
        // One replica stays listed in sync (the last one): it returns without a rebuild and
        // the mirror is back online; the other then catches up.
        a.set(Mode::Ok);
        wait_for(&m, 10, "online again", |s| s.healthy() >= 1).await;
        m.write(16, pattern(4096, 4), false).await.unwrap();
        b.set(Mode::Ok);
        wait_for(&m, 10, "all healthy", all_healthy).await;
        assert_eq!(m.read(16, 1).await.unwrap(), pattern(4096, 4));
        let r = compare_replicas(a.inner().as_ref(), b.inner().as_ref(), MIB)
            .await
            .unwrap();
        assert!(r.identical(), "{r:?}");
    })
    .await;
}

#[tokio::test]
async fn mirror_a_hung_replica_is_faulted_by_the_io_timeout() {
    bounded(30, "test", async {
        let a = Faulty::ram(SIZE);
        let b = Faulty::ram(SIZE);
        let mut opts = fast_opts();
        opts.io_timeout = Some(Duration::from_millis(200));
        let m = Mirror::create([0x12; 16], vec![connector(1, &a), connector(2, &b)], opts)
            .await
            .unwrap();
        b.set(Mode::Hang);
        m.write(0, pattern(4096, 1), true).await.unwrap();
        assert!(!m.status().replica(&[2; 16]).unwrap().in_sync);
        a.set(Mode::Hang);
        let t = tokio::time::Instant::now();
        assert!(m.write(0, pattern(4096, 2), false).await.is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
    })
    .await;
}

#[tokio::test]
async fn mirror_notices_a_lost_replica_without_io() {
    bounded(30, "test", async {
        let (m, a, b) = two_way().await;
        m.write(0, pattern(4096, 1), false).await.unwrap();
        m.flush().await.unwrap();
        b.announces_loss
            .store(true, std::sync::atomic::Ordering::SeqCst);
        b.set(Mode::Disconnected);
        // No host I/O: the liveness watch faults b and persists the new generation.
        let s = wait_for(&m, 10, "b faulted without I/O", |s| s.healthy() == 1).await;
        let rb = s.replica(&[2; 16]).unwrap();
        assert!(!rb.in_sync, "{s:#?}");
        assert!(
            rb.last_error
                .as_deref()
                .is_some_and(|e| e.contains("connection closed")),
            "{rb:?}"
        );
        let l = inspect(a.inner().as_ref()).await.unwrap().unwrap();
        assert_eq!(l.in_sync, vec![[1; 16]], "persisted: {l:?}");
        // Back: partial rebuild (nothing was written meanwhile) and in sync again.
        b.set(Mode::Ok);
        wait_for(&m, 20, "b back", all_healthy).await;
        m.close().await.unwrap();
    })
    .await;
}
