//! Mirror growth over real thin volumes: the new size reaches the labels before the host may
//! use it, data written before and after survives a close and re-assembly at the new size,
//! and refusals (shrink, replica not grown, degraded mirror, misaligned size) change nothing;
//! a replica that misses the new label is rebuilt (partially) at the new size; growth under
//! concurrent writes leaves the replicas identical.

mod mirror_support;

use std::sync::Arc;

use ferrite_block::mirror::{
    LocalReplica, Mirror, MirrorError, ReplicaConnector, compare_replicas, inspect,
};
use ferrite_block::thin::{ThinStore, ThinVolume};
use ferrite_block::{BlockDevice, IoBuf, RamDevice};
use mirror_support::*;

/// A thin store on a RAM device with one volume of `size` bytes.
async fn thin_replica(size: u64) -> (Arc<ThinStore>, Arc<ThinVolume>) {
    let dev: Arc<dyn BlockDevice> = Arc::new(RamDevice::new(512 * MIB, 4096).expect("ram"));
    let store = ThinStore::format(dev, 1 << 20).await.expect("format");
    let vol = store
        .create_volume([7; 16], "r", size, true)
        .await
        .expect("create volume");
    (store, vol)
}

fn local(id: u8, vol: &Arc<ThinVolume>) -> Arc<dyn ReplicaConnector> {
    Arc::new(LocalReplica::new(
        [id; 16],
        Arc::clone(vol) as Arc<dyn BlockDevice>,
    ))
}

#[tokio::test]
async fn mirror_grows_online_and_reassembles_at_the_new_size() {
    let (sa, a) = thin_replica(33 * MIB).await;
    let (sb, b) = thin_replica(33 * MIB).await;
    let m = Mirror::create([0x31; 16], vec![local(1, &a), local(2, &b)], fast_opts())
        .await
        .expect("create");
    assert_eq!(m.size_bytes(), 32 * MIB);
    m.write(0, pattern(64 * 1024, 1), false).await.unwrap();
    let last = m.num_blocks() - 1;
    m.write(last, pattern(4096, 2), false).await.unwrap();

    // Replicas not grown yet: refused, nothing changes.
    let e = m.grow(96 * MIB).await.unwrap_err();
    assert!(matches!(e, MirrorError::TooSmall { .. }), "{e}");
    assert_eq!(m.size_bytes(), 32 * MIB);
    // Shrinking and misaligned sizes are refused.
    let e = m.grow(16 * MIB).await.unwrap_err();
    assert!(e.to_string().contains("cannot shrink"), "{e}");
    let e = m.grow(64 * MIB + 512).await.unwrap_err();
    assert!(e.to_string().contains("multiple of the block size"), "{e}");

    sa.resize([7; 16], 97 * MIB).await.expect("grow replica a");
    // One replica grown is not enough.
    let e = m.grow(96 * MIB).await.unwrap_err();
    assert!(matches!(e, MirrorError::TooSmall { .. }), "{e}");
    sb.resize([7; 16], 97 * MIB).await.expect("grow replica b");
    assert_eq!(m.grow(96 * MIB).await.expect("grow"), 96 * MIB);
    assert_eq!(m.size_bytes(), 96 * MIB);
    assert_eq!(
        m.grow(96 * MIB).await.expect("same size is a no-op"),
        96 * MIB
    );
    // Every label records the new size.
    for r in [&a, &b] {
        let l = inspect(&**r).await.expect("read label").expect("label");
        assert_eq!(l.size, 96 * MIB, "{l:?}");
    }
    // The new area is addressable, reads as zeroes, and takes writes on both replicas.
    let new_last = m.num_blocks() - 1;
    assert_eq!(m.read(last + 1, 1).await.unwrap(), IoBuf::zeroed(4096));
    m.write(new_last, pattern(4096, 3), false).await.unwrap();
    m.write(last + 1, pattern(8192, 4), false).await.unwrap();
    m.flush().await.unwrap();
    let r = compare_replicas(&*a, &*b, MIB).await.unwrap();
    assert!(r.identical(), "{r:?}");
    assert_eq!(r.bytes_compared, 96 * MIB);
    m.close().await.expect("close");

    let m = Mirror::assemble([0x31; 16], vec![local(1, &a), local(2, &b)], fast_opts())
        .await
        .expect("assemble");
    assert_eq!(m.size_bytes(), 96 * MIB);
    assert_eq!(m.read(0, 16).await.unwrap(), pattern(64 * 1024, 1));
    assert_eq!(m.read(last, 1).await.unwrap(), pattern(4096, 2));
    assert_eq!(m.read(last + 1, 2).await.unwrap(), pattern(8192, 4));
    assert_eq!(m.read(new_last, 1).await.unwrap(), pattern(4096, 3));
    m.close().await.expect("close");
}

#[tokio::test]
async fn a_degraded_mirror_refuses_to_grow_until_it_is_back_in_sync() {
    let (sa, ta) = thin_replica(33 * MIB).await;
    let (sb, tb) = thin_replica(33 * MIB).await;
    let a = Faulty::wrap(ta as Arc<dyn BlockDevice>);
    let b = Faulty::wrap(tb as Arc<dyn BlockDevice>);
    let m = Mirror::create(
        [0x32; 16],
        vec![connector(1, &a), connector(2, &b)],
        fast_opts(),
    )
    .await
    .expect("create");
    sa.resize([7; 16], 65 * MIB).await.expect("grow a");
    sb.resize([7; 16], 65 * MIB).await.expect("grow b");
    b.set(Mode::FailIo);
    let _ = m.write(8, pattern(4096, 10), false).await;
    wait_for(&m, 10, "b faulted", |s| s.healthy() == 1).await;
    let e = m.grow(64 * MIB).await.unwrap_err();
    assert!(matches!(e, MirrorError::Grow { .. }), "{e}");
    assert!(
        e.to_string().contains("replica-2"),
        "names the replica: {e}"
    );
    assert_eq!(m.size_bytes(), 32 * MIB, "nothing changed");
    for r in [&a, &b] {
        assert_eq!(
            inspect(&**r.inner())
                .await
                .expect("read label")
                .expect("label")
                .size,
            32 * MIB
        );
    }
    b.set(Mode::Ok);
    wait_for(&m, 20, "b back in sync", all_healthy).await;
    assert_eq!(m.grow(64 * MIB).await.expect("grow"), 64 * MIB);
    m.write(m.num_blocks() - 2, pattern(8192, 11), true)
        .await
        .unwrap();
    let r = compare_replicas(&**a.inner(), &**b.inner(), MIB)
        .await
        .unwrap();
    assert!(r.identical(), "{r:?}");
    m.close().await.expect("close");
}

#[tokio::test]
async fn a_replica_whose_label_write_fails_during_growth_is_rebuilt_at_the_new_size() {
    let (sa, ta) = thin_replica(33 * MIB).await;
    let (sb, tb) = thin_replica(33 * MIB).await;
    let a = Faulty::wrap(ta as Arc<dyn BlockDevice>);
    let b = Faulty::wrap(tb as Arc<dyn BlockDevice>);
    let m = Mirror::create(
        [0x33; 16],
        vec![connector(1, &a), connector(2, &b)],
        fast_opts(),
    )
    .await
    .expect("create");
    for i in 0..8u64 {
        m.write(i * 1024, pattern(4096, i), false).await.unwrap();
    }
    m.flush().await.unwrap();
    sa.resize([7; 16], 65 * MIB).await.expect("grow a");
    sb.resize([7; 16], 65 * MIB).await.expect("grow b");
    // b cannot take the new label: it is faulted, the growth goes on with a alone.
    b.set(Mode::FailLabelWrites);
    assert_eq!(m.grow(64 * MIB).await.expect("grow"), 64 * MIB);
    let s = m.status();
    assert_eq!(s.healthy(), 1, "{s:#?}");
    assert_eq!(inspect(&**a.inner()).await.unwrap().unwrap().size, 64 * MIB);
    assert_eq!(
        inspect(&**b.inner()).await.unwrap().unwrap().size,
        32 * MIB,
        "b kept its old label"
    );
    // Writes while b is out, in the old area and past its old end.
    let top = m.num_blocks() - 4;
    m.write(top, pattern(16384, 40), false).await.unwrap();
    m.write(5, pattern(4096, 41), false).await.unwrap();
    m.flush().await.unwrap();
    b.set(Mode::Ok);
    let s = wait_for(&m, 20, "b rebuilt", all_healthy).await;
    let p = s.replica(&[2; 16]).unwrap().last_rebuild.clone().unwrap();
    assert_eq!(p.kind, ferrite_block::mirror::RebuildKind::Partial, "{p:?}");
    assert!(p.bytes_copied <= 4 * MIB, "only the dirty regions: {p:?}");
    let r = compare_replicas(&**a.inner(), &**b.inner(), MIB)
        .await
        .unwrap();
    assert!(r.identical(), "{r:?}");
    assert_eq!(r.bytes_compared, 64 * MIB);
    m.close().await.expect("close");
    // Both labels now record the new size; a fresh assembly serves everything.
    let m = Mirror::assemble(
        [0x33; 16],
        vec![connector(1, &a), connector(2, &b)],
        fast_opts(),
    )
    .await
    .expect("assemble");
    assert_eq!(m.size_bytes(), 64 * MIB);
    assert_eq!(m.read(top, 4).await.unwrap(), pattern(16384, 40));
    assert_eq!(m.read(5, 1).await.unwrap(), pattern(4096, 41));
    m.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_under_concurrent_writes_keeps_the_replicas_identical() {
    let (sa, a) = thin_replica(33 * MIB).await;
    let (sb, b) = thin_replica(33 * MIB).await;
    let m = Arc::new(
        Mirror::create([0x34; 16], vec![local(1, &a), local(2, &b)], fast_opts())
            .await
            .expect("create"),
    );
    sa.resize([7; 16], 129 * MIB).await.expect("grow a");
    sb.resize([7; 16], 129 * MIB).await.expect("grow b");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (m, stop) = (m.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Anywhere in the size the mirror reports now (it grows meanwhile).
                let blocks = m.num_blocks();
                let lba = (n * 7919 + w * 104_729) % (blocks - 1);
                m.write(lba, pattern(4096, n + w), false)
                    .await
                    .expect("write during growth");
                n += 1;
            }
            n
        }));
    }
    for size in [48 * MIB, 64 * MIB, 96 * MIB, 128 * MIB] {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(m.grow(size).await.expect("grow"), size);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in writers {
        total += w.await.expect("writer");
    }
    assert!(total > 0);
    m.flush().await.unwrap();
    let r = compare_replicas(&*a, &*b, MIB).await.unwrap();
    assert!(r.identical(), "{r:?}");
    assert_eq!(r.bytes_compared, 128 * MIB);
    m.close().await.expect("close");
}
