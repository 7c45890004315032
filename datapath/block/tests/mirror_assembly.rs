//! Mirror assembly from labels: clean reassembly, crash recovery with the persisted dirty
//! bitmap (on file-backed replicas), resync after an unclean shutdown, split-brain refusal,
//! and the safety checks (foreign labels, missing in-sync replicas).

mod mirror_support;

use std::path::Path;
use std::sync::Arc;

use ferrite_block::mirror::{
    LocalReplica, Mirror, MirrorError, RebuildKind, ReplicaConnector, ReplicaState,
    compare_replicas, inspect,
};
use ferrite_block::{BlockDevice, FileDevice, FileOptions, IoBuf, IoEngine, RamDevice};
use mirror_support::*;

const SIZE: u64 = 32 * MIB;
const PER_REGION: u64 = MIB / 4096;

fn file(dir: &Path, name: &str) -> Arc<dyn BlockDevice> {
    let opts = FileOptions {
        create_size: Some(SIZE),
        engine: IoEngine::Blocking,
        ..FileOptions::new(4096)
    };
    Arc::new(FileDevice::open(dir.join(name), opts).expect("file device"))
}

fn ram() -> Arc<dyn BlockDevice> {
    Arc::new(RamDevice::new(SIZE, 4096).unwrap())
}

fn local(id: u8, dev: &Arc<dyn BlockDevice>) -> Arc<dyn ReplicaConnector> {
    Arc::new(LocalReplica::new([id; 16], Arc::clone(dev)))
}

#[tokio::test]
async fn mirror_clean_close_and_reassembly_keep_data_without_rebuilds() {
    bounded(30, "test", async {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (file(dir.path(), "a.img"), file(dir.path(), "b.img"));
        let m = Mirror::create([0x31; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        m.write(100, pattern(16384, 1), true).await.unwrap();
        m.close().await.unwrap();
        drop(m);
        // Reopen the files, as a restarted node would.
        drop((a, b));
        let (a, b) = (file(dir.path(), "a.img"), file(dir.path(), "b.img"));
        let m = Mirror::assemble([0x31; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        let s = m.status();
        assert_eq!(s.generation, 2);
        assert!(all_healthy(&s), "{s:?}");
        assert_eq!(m.read(100, 4).await.unwrap(), pattern(16384, 1));
        assert_eq!(s.rebuilt_bytes_total, 0);
        let l = inspect(a.as_ref()).await.unwrap().unwrap();
        assert!(!l.clean, "open mirrors are marked unclean");
        m.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn mirror_reassembly_after_a_crash_keeps_the_dirty_bitmap() {
    bounded(30, "test", async {
        let dir = tempfile::tempdir().unwrap();
        let fa = Faulty::wrap(file(dir.path(), "a.img"));
        let fb = Faulty::wrap(file(dir.path(), "b.img"));
        let m = Mirror::create(
            [0x32; 16],
            vec![connector(1, &fa), connector(2, &fb)],
            fast_opts(),
        )
        .await
        .unwrap();
        for r in 0..31u64 {
            m.write(r * PER_REGION, pattern(4096, r), false)
                .await
                .unwrap();
        }
        m.flush().await.unwrap();
        fb.set(Mode::Disconnected);
        m.write(5 * PER_REGION + 3, pattern(4096, 200), false)
            .await
            .unwrap();
        m.write(7 * PER_REGION, pattern(8192, 201), false)
            .await
            .unwrap();
        m.write(30 * PER_REGION + 8, pattern(4096, 202), false)
            .await
            .unwrap();
        assert_eq!(m.status().dirty_regions, 3);
        // The mirror node crashes: no close, nothing more is written.
        drop(m);
        drop((fa, fb));
        // A new instance assembles from freshly opened files; B is reachable again.
        let (a, b) = (file(dir.path(), "a.img"), file(dir.path(), "b.img"));
        let la = inspect(a.as_ref()).await.unwrap().unwrap();
        assert!(!la.clean);
        assert_eq!(la.dirty_regions, vec![5, 7, 30]);
        let lb = inspect(b.as_ref()).await.unwrap().unwrap();
        assert!(lb.generation < la.generation);
        let m = Mirror::assemble([0x32; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        let s = wait_for(&m, 10, "partial rebuild", all_healthy).await;
        let p = s.replica(&[2; 16]).unwrap().last_rebuild.clone().unwrap();
        assert_eq!(p.kind, RebuildKind::Partial);
        assert_eq!(p.bytes_copied, 3 * MIB, "exactly the three dirty regions");
        // A was the only in-sync replica: nothing to resync against.
        assert!(s.replica(&[1; 16]).unwrap().last_rebuild.is_none());
        let r = compare_replicas(a.as_ref(), b.as_ref(), MIB).await.unwrap();
        assert!(r.identical(), "{r:?}");
        assert_eq!(m.read(7 * PER_REGION, 2).await.unwrap(), pattern(8192, 201));
        m.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn mirror_unclean_shutdown_resyncs_replicas_that_diverged_on_unacknowledged_writes() {
    bounded(30, "test", async {
        let (a, b) = (ram(), ram());
        let m = Mirror::create([0x33; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        for r in 0..31u64 {
            m.write(r * PER_REGION, pattern(4096, r), false)
                .await
                .unwrap();
        }
        // A write in flight at the crash reached B but not A.
        let raw_lba = (RESERVE + 12 * MIB) / 4096 + 4;
        b.write(raw_lba, pattern(4096, 99), false).await.unwrap();
        drop(m);
        let m = Mirror::assemble([0x33; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        let s = wait_for(&m, 10, "resync", all_healthy).await;
        let p = s.replica(&[2; 16]).unwrap().last_rebuild.clone().unwrap();
        assert_eq!(p.kind, RebuildKind::Resync);
        assert_eq!(p.bytes_done, SIZE - MIB, "every region compared");
        assert_eq!(p.bytes_copied, MIB, "only the differing region copied");
        let r = compare_replicas(a.as_ref(), b.as_ref(), MIB).await.unwrap();
        assert!(r.identical(), "{r:?}");
        m.close().await.unwrap();
    })
    .await;
}

const RESERVE: u64 = ferrite_block::mirror::RESERVE_BYTES;

#[tokio::test]
async fn mirror_split_brain_assembly_is_refused() {
    bounded(30, "test", async {
        let (a, b) = (ram(), ram());
        let m = Mirror::create([0x34; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        m.write(0, pattern(4096, 1), false).await.unwrap();
        m.close().await.unwrap();
        drop(m);
        // A partition: each side is assembled alone (the operator forced it) and takes writes.
        let mut force = fast_opts();
        force.allow_missing_in_sync = true;
        let b_down: Arc<dyn ReplicaConnector> = connector(2, &{
            let f = Faulty::wrap(Arc::clone(&b));
            f.set(Mode::Disconnected);
            f
        });
        let x = Mirror::assemble([0x34; 16], vec![local(1, &a), b_down], force.clone())
            .await
            .unwrap();
        x.write(0, pattern(4096, 2), false).await.unwrap();
        drop(x);
        let a_down: Arc<dyn ReplicaConnector> = connector(1, &{
            let f = Faulty::wrap(Arc::clone(&a));
            f.set(Mode::Disconnected);
            f
        });
        let y = Mirror::assemble([0x34; 16], vec![a_down, local(2, &b)], force.clone())
            .await
            .unwrap();
        y.write(0, pattern(4096, 3), false).await.unwrap();
        drop(y);
        for opts in [fast_opts(), force] {
            let e = Mirror::assemble([0x34; 16], vec![local(1, &a), local(2, &b)], opts)
                .await
                .unwrap_err();
            assert!(matches!(e, MirrorError::SplitBrain { .. }), "{e}");
            assert!(e.to_string().contains("split brain"), "{e}");
        }
        // The refusal wrote nothing: each side still reads its own data.
        assert_eq!(a.read(RESERVE / 4096, 1).await.unwrap(), pattern(4096, 2));
        assert_eq!(b.read(RESERVE / 4096, 1).await.unwrap(), pattern(4096, 3));
    })
    .await;
}

#[tokio::test]
async fn mirror_split_brain_at_diverging_generations_is_refused() {
    bounded(30, "test", async {
        let (a, b) = (ram(), ram());
        let m = Mirror::create([0x35; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        drop(m);
        let mut force = fast_opts();
        force.allow_missing_in_sync = true;
        let down = |id: u8, dev: &Arc<dyn BlockDevice>| -> Arc<dyn ReplicaConnector> {
            let f = Faulty::wrap(Arc::clone(dev));
            f.set(Mode::Disconnected);
            connector(id, &f)
        };
        // A's side goes through three more assemblies (higher generation) than B's.
        for _ in 0..3 {
            let x = Mirror::assemble([0x35; 16], vec![local(1, &a), down(2, &b)], force.clone())
                .await
                .unwrap();
            x.write(8, pattern(4096, 5), false).await.unwrap();
            drop(x);
        }
        let y = Mirror::assemble([0x35; 16], vec![down(1, &a), local(2, &b)], force.clone())
            .await
            .unwrap();
        y.write(8, pattern(4096, 6), false).await.unwrap();
        drop(y);
        let la = inspect(a.as_ref()).await.unwrap().unwrap();
        let lb = inspect(b.as_ref()).await.unwrap().unwrap();
        assert!(la.generation > lb.generation);
        let e = Mirror::assemble([0x35; 16], vec![local(1, &a), local(2, &b)], force)
            .await
            .unwrap_err();
        assert!(matches!(e, MirrorError::SplitBrain { .. }), "{e}");
    })
    .await;
}

#[tokio::test]
async fn mirror_missing_in_sync_replica_refuses_assembly_unless_allowed() {
    bounded(30, "test", async {
        let (a, b) = (ram(), ram());
        let m = Mirror::create([0x36; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        m.close().await.unwrap();
        drop(m);
        let fb = Faulty::wrap(Arc::clone(&b));
        fb.set(Mode::Disconnected);
        let e = Mirror::assemble(
            [0x36; 16],
            vec![local(1, &a), connector(2, &fb)],
            fast_opts(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, MirrorError::InSyncReplicaMissing { .. }), "{e}");
        // Without its connector at all, too.
        let e = Mirror::assemble([0x36; 16], vec![local(1, &a)], fast_opts())
            .await
            .unwrap_err();
        assert!(matches!(e, MirrorError::InSyncReplicaMissing { .. }), "{e}");
        // Allowed: assembled degraded; B is retried in the background and rebuilt when back.
        let mut force = fast_opts();
        force.allow_missing_in_sync = true;
        let m = Mirror::assemble([0x36; 16], vec![local(1, &a), connector(2, &fb)], force)
            .await
            .unwrap();
        let s = m.status();
        assert!(matches!(
            s.replica(&[2; 16]).unwrap().state,
            ReplicaState::Faulted | ReplicaState::Connecting
        ));
        m.write(0, pattern(4096, 1), false).await.unwrap();
        fb.set(Mode::Ok);
        let s = wait_for(&m, 10, "rebuild", all_healthy).await;
        let p = s.replica(&[2; 16]).unwrap().last_rebuild.clone().unwrap();
        assert_eq!(p.kind, RebuildKind::Partial);
        assert_eq!(p.bytes_copied, MIB);
    })
    .await;
}

#[tokio::test]
async fn mirror_labels_of_other_mirrors_are_never_overwritten() {
    bounded(30, "test", async {
        let (a, b, c) = (ram(), ram(), ram());
        let m = Mirror::create([0x37; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        m.close().await.unwrap();
        // Creating over a labeled replica, assembling the wrong mirror, or a connector that
        // reaches another replica's device: all refused.
        let e = Mirror::create([0x38; 16], vec![local(3, &a)], fast_opts())
            .await
            .unwrap_err();
        assert!(matches!(e, MirrorError::AlreadyLabeled { .. }), "{e}");
        let e = Mirror::assemble([0x38; 16], vec![local(1, &a)], fast_opts())
            .await
            .unwrap_err();
        assert!(matches!(e, MirrorError::ForeignLabel { .. }), "{e}");
        let e = Mirror::assemble([0x37; 16], vec![local(1, &a), local(3, &b)], fast_opts())
            .await
            .unwrap_err();
        assert!(matches!(e, MirrorError::ReplicaMismatch { .. }), "{e}");
        let e = Mirror::assemble([0x37; 16], vec![local(3, &c)], fast_opts())
            .await
            .unwrap_err();
        assert!(matches!(e, MirrorError::NoLabel { .. }), "{e}");
        let m2 = Mirror::create([0x38; 16], vec![local(3, &c)], fast_opts())
            .await
            .unwrap();
        let e = m2.add_replica(local(1, &a)).await.unwrap_err();
        assert!(matches!(e, MirrorError::ForeignLabel { .. }), "{e}");
        // A corrupted label slot falls back to the other one.
        let l_before = inspect(a.as_ref()).await.unwrap().unwrap();
        let slot = (l_before.seq % 2) * (512 * 1024) / 4096;
        a.write(slot, IoBuf::from_slice(&[0xee; 4096]), false)
            .await
            .unwrap();
        let l_after = inspect(a.as_ref()).await.unwrap().unwrap();
        assert_eq!(l_after.seq, l_before.seq - 1);
        let m = Mirror::assemble([0x37; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .unwrap();
        wait_for(&m, 10, "healthy", all_healthy).await;
    })
    .await;
}
