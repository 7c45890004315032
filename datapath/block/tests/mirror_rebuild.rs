//! Mirror rebuilds: partial (only the dirty regions) when a faulted replica returns, full for
//! a new replica, host writes during a rebuild, and membership changes.

mod mirror_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferrite_block::BlockDevice;
use ferrite_block::mirror::{
    Mirror, MirrorError, MirrorOptions, RebuildKind, ReplicaState, compare_replicas, inspect,
};
use mirror_support::*;

const SIZE: u64 = 64 * MIB;
/// 4 KiB blocks per 1 MiB region.
const PER_REGION: u64 = MIB / 4096;

async fn two_way(id: u8) -> (Mirror, Arc<Faulty>, Arc<Faulty>) {
    let a = Faulty::ram(SIZE);
    let b = Faulty::ram(SIZE);
    let m = Mirror::create(
        [id; 16],
        vec![connector(1, &a), connector(2, &b)],
        fast_opts(),
    )
    .await
    .expect("create");
    (m, a, b)
}

#[tokio::test]
async fn mirror_returning_replica_gets_a_partial_rebuild_of_exactly_the_dirty_regions() {
    bounded(30, "test", async {
        let (m, a, b) = two_way(0x21).await;
        // Data everywhere first, while in sync, and flushed (so not dirty when B faults).
        for r in 0..63u64 {
            m.write(r * PER_REGION, pattern(8192, r), false)
                .await
                .unwrap();
        }
        m.flush().await.unwrap();
        b.set(Mode::Disconnected);
        // The first write fails on B (region 2): B is dropped and region 2 is dirty.
        m.write(2 * PER_REGION + 5, pattern(4096, 100), false)
            .await
            .unwrap();
        let s = m.status();
        assert!(!s.replica(&[2; 16]).unwrap().in_sync);
        let gen_degraded = s.generation;
        // Regions 10 and 11 (one write straddling both), 40 (twice), 62 (the last).
        m.write(11 * PER_REGION - 1, pattern(8192, 101), true)
            .await
            .unwrap();
        m.write(40 * PER_REGION, pattern(4096, 102), false)
            .await
            .unwrap();
        m.write(40 * PER_REGION + 9, pattern(4096, 103), false)
            .await
            .unwrap();
        m.write_zeroes(62 * PER_REGION, 3, false).await.unwrap();
        let s = m.status();
        assert_eq!(s.dirty_regions, 5);
        let l = inspect(a.inner().as_ref()).await.unwrap().unwrap();
        assert_eq!(
            l.dirty_regions,
            vec![2, 10, 11, 40, 62],
            "write intent persisted"
        );
        assert_eq!(l.bitmap_base, Some(gen_degraded - 1));
        // B comes back: partial rebuild of exactly those five regions.
        let written_before = b.data_write_bytes.load(Ordering::SeqCst);
        b.set(Mode::Ok);
        let s = wait_for(&m, 10, "rebuild", all_healthy).await;
        let rb = s.replica(&[2; 16]).unwrap();
        let p = rb.last_rebuild.clone().expect("rebuild progress");
        assert_eq!(p.kind, RebuildKind::Partial);
        assert_eq!(p.bytes_total, 5 * MIB);
        assert_eq!(p.bytes_done, 5 * MIB);
        assert_eq!(p.bytes_copied, 5 * MIB);
        assert_eq!(
            b.data_write_bytes.load(Ordering::SeqCst) - written_before,
            5 * MIB,
            "the target received exactly the dirty regions"
        );
        assert_eq!(s.rebuilt_bytes_total, 5 * MIB);
        assert_eq!(
            s.dirty_regions, 0,
            "bitmap cleared once everyone is in sync"
        );
        assert_eq!(s.bitmap_base, None);
        assert!(s.generation > gen_degraded);
        let r = compare_replicas(a.inner().as_ref(), b.inner().as_ref(), MIB)
            .await
            .unwrap();
        assert!(r.identical(), "{r:?}");
        let lb = inspect(b.inner().as_ref()).await.unwrap().unwrap();
        assert_eq!(lb.in_sync, vec![[1; 16], [2; 16]]);
        assert_eq!(lb.generation, s.generation);
        assert!(lb.dirty_regions.is_empty());
    })
    .await;
}

#[tokio::test]
async fn mirror_new_empty_replica_gets_a_full_rebuild() {
    bounded(30, "test", async {
        let (m, a, _b) = two_way(0x22).await;
        for r in (0..63u64).step_by(3) {
            m.write(r * PER_REGION + 1, pattern(4096, r), false)
                .await
                .unwrap();
        }
        let c = Faulty::ram(SIZE + 8 * MIB); // larger is fine
        m.add_replica(connector(3, &c)).await.unwrap();
        let s = m.status();
        assert_eq!(s.replicas.len(), 3);
        let rc = s.replica(&[3; 16]).unwrap();
        assert!(!rc.in_sync);
        assert!(matches!(
            rc.state,
            ReplicaState::Rebuilding | ReplicaState::Healthy
        ));
        let s = wait_for(&m, 10, "full rebuild", all_healthy).await;
        let p = s.replica(&[3; 16]).unwrap().last_rebuild.clone().unwrap();
        assert_eq!(p.kind, RebuildKind::Full);
        assert_eq!(p.bytes_copied, SIZE - MIB);
        let r = compare_replicas(a.inner().as_ref(), c.inner().as_ref(), MIB)
            .await
            .unwrap();
        assert!(r.identical(), "{r:?}");
        assert_eq!(
            r.bytes_compared,
            SIZE - MIB,
            "compared over the volume size from the labels"
        );
        // Duplicate adds are refused; a replica can be removed, but never the last in-sync one.
        assert!(matches!(
            m.add_replica(connector(3, &c)).await,
            Err(MirrorError::DuplicateReplica(_))
        ));
        m.remove_replica([3; 16]).await.unwrap();
        m.remove_replica([2; 16]).await.unwrap();
        assert!(matches!(
            m.remove_replica([1; 16]).await,
            Err(MirrorError::LastReplica(_))
        ));
        assert!(matches!(
            m.remove_replica([9; 16]).await,
            Err(MirrorError::UnknownReplica(_))
        ));
        let l = inspect(a.inner().as_ref()).await.unwrap().unwrap();
        assert_eq!(l.in_sync, vec![[1; 16]]);
        assert_eq!(l.members.len(), 1);
        // A too-small replica is refused.
        let tiny = Faulty::ram(8 * MIB);
        assert!(matches!(
            m.add_replica(connector(4, &tiny)).await,
            Err(MirrorError::TooSmall { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn mirror_rebuild_copies_regions_in_parallel_up_to_the_option() {
    bounded(60, "test", async {
        for width in [1usize, 4] {
            let a = Faulty::ram(SIZE);
            let opts = MirrorOptions {
                rebuild_parallelism: width,
                ..fast_opts()
            };
            let m = Mirror::create([0x40 + width as u8; 16], vec![connector(1, &a)], opts)
                .await
                .expect("create");
            for r in (0..63u64).step_by(5) {
                m.write(r * PER_REGION, pattern(4096, r), false)
                    .await
                    .unwrap();
            }
            let c = Faulty::ram(SIZE);
            c.write_delay_ms.store(5, Ordering::SeqCst);
            m.add_replica(connector(2, &c)).await.unwrap();
            wait_for(&m, 30, "full rebuild", all_healthy).await;
            let most = c.max_writes_in_flight.load(Ordering::SeqCst);
            assert_eq!(
                most, width as u64,
                "copies in flight with rebuild_parallelism {width}"
            );
            let r = compare_replicas(a.inner().as_ref(), c.inner().as_ref(), MIB)
                .await
                .unwrap();
            assert!(r.identical(), "{r:?}");
            m.close().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_host_writes_during_rebuild_end_up_on_every_replica() {
    bounded(60, "test", async {
        let (m, a, b) = two_way(0x23).await;
        let m = Arc::new(m);
        for r in 0..63u64 {
            m.write(r * PER_REGION, pattern(4096, r), false)
                .await
                .unwrap();
        }
        let c = Faulty::ram(SIZE);
        // Slow the copy down so host writes race with it across the whole volume.
        c.write_delay_ms.store(2, Ordering::SeqCst);
        m.add_replica(connector(3, &c)).await.unwrap();
        let writer = {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                let mut model = std::collections::HashMap::new();
                let mut i = 0u64;
                loop {
                    let done = m
                        .status()
                        .replica(&[3; 16])
                        .is_some_and(|r| r.state == ReplicaState::Healthy);
                    // Regions from the end backwards and forwards, several offsets per region.
                    let region = (i * 17) % 63;
                    let lba = region * PER_REGION + (i % 7) * 3;
                    m.write(lba, pattern(4096 * 2, 1000 + i), i.is_multiple_of(5))
                        .await
                        .unwrap();
                    model.insert(lba, 1000 + i);
                    model.remove(&(lba + 1));
                    if lba > 0 {
                        model.remove(&(lba - 1));
                    }
                    i += 1;
                    if done && i > 300 {
                        return (model, i);
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            })
        };
        let (model, n) = writer.await.unwrap();
        assert!(n > 300);
        let s = wait_for(&m, 30, "rebuild", all_healthy).await;
        assert_eq!(
            s.replica(&[3; 16])
                .unwrap()
                .last_rebuild
                .as_ref()
                .unwrap()
                .kind,
            RebuildKind::Full
        );
        for (x, y) in [(&a, &b), (&a, &c)] {
            let r = compare_replicas(x.inner().as_ref(), y.inner().as_ref(), 64 * 1024)
                .await
                .unwrap();
            assert!(r.identical(), "{r:?}");
        }
        // Reading from the new replica alone returns the last host writes.
        a.set(Mode::Disconnected);
        b.set(Mode::Disconnected);
        for (lba, seed) in model {
            let got = m.read(lba, 1).await.unwrap();
            assert_eq!(&got[..], &pattern(8192, seed)[..4096], "lba {lba}");
        }
        assert_eq!(m.status().healthy(), 1);
        assert!(m.status().replica(&[3; 16]).unwrap().in_sync);
    })
    .await;
}

#[tokio::test]
async fn mirror_a_rebuild_source_failure_switches_to_another_source() {
    bounded(30, "test", async {
        let a = Faulty::ram(SIZE);
        let b = Faulty::ram(SIZE);
        let c = Faulty::ram(SIZE);
        let m = Mirror::create(
            [0x24; 16],
            vec![connector(1, &a), connector(2, &b), connector(3, &c)],
            fast_opts(),
        )
        .await
        .unwrap();
        for r in 0..63u64 {
            m.write(r * PER_REGION, pattern(4096, r), false)
                .await
                .unwrap();
        }
        c.set(Mode::Disconnected);
        for r in 0..20u64 {
            m.write(r * PER_REGION + 1, pattern(4096, 50 + r), false)
                .await
                .unwrap();
        }
        c.write_delay_ms.store(5, Ordering::SeqCst);
        c.set(Mode::Ok);
        wait_for(&m, 10, "rebuild", |s| {
            s.replica(&[3; 16]).unwrap().state == ReplicaState::Rebuilding
        })
        .await;
        // One source dies mid-rebuild: the other takes over.
        a.set(Mode::FailIo);
        m.write(30 * PER_REGION, pattern(4096, 7), false)
            .await
            .unwrap();
        c.write_delay_ms.store(0, Ordering::SeqCst);
        wait_for(&m, 10, "c in sync", |s| {
            let r = s.replica(&[3; 16]).unwrap();
            r.in_sync && r.state == ReplicaState::Healthy
        })
        .await;
        let r = compare_replicas(b.inner().as_ref(), c.inner().as_ref(), MIB)
            .await
            .unwrap();
        assert!(r.identical(), "{r:?}");
        // And A comes back afterwards.
        a.set(Mode::Ok);
        wait_for(&m, 10, "all in sync", all_healthy).await;
        let r = compare_replicas(a.inner().as_ref(), c.inner().as_ref(), MIB)
            .await
            .unwrap();
        assert!(r.identical(), "{r:?}");
        assert_eq!(m.read(30 * PER_REGION, 1).await.unwrap(), pattern(4096, 7));
    })
    .await;
}

/// A replica that crashes loses the writes it acknowledged since its last flush (its cache,
/// or a thin volume's unflushed metadata). The regions written since the last completed
/// flush therefore become dirty when it faults, and its partial rebuild restores them.
#[tokio::test]
async fn mirror_unflushed_writes_of_a_faulted_replica_are_rebuilt() {
    bounded(30, "test", async {
        let (m, a, b) = two_way(0x26).await;
        m.write(3 * PER_REGION, pattern(4096, 1), false)
            .await
            .unwrap();
        m.write(4 * PER_REGION, pattern(4096, 2), false)
            .await
            .unwrap();
        m.flush().await.unwrap();
        // Acknowledged by both replicas, but not flushed.
        m.write(7 * PER_REGION, pattern(4096, 3), false)
            .await
            .unwrap();
        m.write(8 * PER_REGION, pattern(4096, 4), false)
            .await
            .unwrap();
        b.set(Mode::Disconnected);
        m.write(20 * PER_REGION, pattern(4096, 5), false)
            .await
            .unwrap();
        let l = inspect(a.inner().as_ref()).await.unwrap().unwrap();
        assert_eq!(
            l.dirty_regions,
            vec![7, 8, 20],
            "unflushed regions are dirty; flushed ones are not"
        );
        // B "crashed": its unflushed writes are gone.
        for r in [7u64, 8] {
            b.inner()
                .write_zeroes((1 << 20) / 4096 + r * PER_REGION, PER_REGION, false)
                .await
                .unwrap();
        }
        b.set(Mode::Ok);
        let s = wait_for(&m, 10, "rebuild", all_healthy).await;
        let p = s
            .replica(&[2; 16])
            .unwrap()
            .last_rebuild
            .clone()
            .expect("rebuild");
        assert_eq!(p.kind, RebuildKind::Partial);
        assert_eq!(p.bytes_copied, 3 * MIB);
        let r = compare_replicas(a.inner().as_ref(), b.inner().as_ref(), MIB)
            .await
            .unwrap();
        assert!(r.identical(), "{r:?}");
    })
    .await;
}
