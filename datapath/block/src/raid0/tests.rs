//! Tests of RAID0 pools over RAM and file members: create/import round trips, exact stripe
//! placement, every import refusal (with the members' bytes checked unchanged), capacity,
//! range checks, concurrent I/O against a model, and label recovery.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::label::{LABEL_SIZE, MemberLabel};
use super::store::{LabelCopy, read_labels, write_label};
use super::*;
use crate::{BlockDevice, BlockError, FileDevice, FileOptions, IoBuf, RamDevice};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const BS: u32 = 4096;
const STRIPE: u32 = 64 * 1024;
/// A member with exactly 16 stripes (1 MiB) of data area at 4 KiB blocks.
const SMALL: u64 = DATA_OFFSET + MIB + 4 * KIB;

type Dev = Arc<dyn BlockDevice>;

fn ram(size: u64) -> Dev {
    Arc::new(RamDevice::new(size, BS).unwrap())
}

fn rams(sizes: &[u64]) -> Vec<Dev> {
    sizes.iter().map(|&s| ram(s)).collect()
}

fn file_opts(size: Option<u64>) -> FileOptions {
    FileOptions {
        create_size: size,
        ..FileOptions::new(BS)
    }
}

fn files(dir: &Path, sizes: &[u64]) -> (Vec<PathBuf>, Vec<Dev>) {
    let paths: Vec<PathBuf> = (0..sizes.len())
        .map(|i| dir.join(format!("m{i}.img")))
        .collect();
    let devs = paths
        .iter()
        .zip(sizes)
        .map(|(p, &s)| Arc::new(FileDevice::open(p, file_opts(Some(s))).unwrap()) as Dev)
        .collect();
    (paths, devs)
}

fn reopen(paths: &[PathBuf]) -> Vec<Dev> {
    paths
        .iter()
        .map(|p| Arc::new(FileDevice::open(p, file_opts(None)).unwrap()) as Dev)
        .collect()
}

fn pool_uuid(n: u8) -> [u8; 16] {
    [n; 16]
}

fn pattern(len: usize, seed: u64) -> IoBuf {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let v: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    IoBuf::from_slice(&v)
}

/// Hash of a device's entire contents.
async fn fingerprint(dev: &Dev) -> u64 {
    let mut h = DefaultHasher::new();
    let chunk = (MIB / u64::from(dev.block_size())) as u32;
    let mut lba = 0;
    while lba < dev.num_blocks() {
        let n = chunk.min((dev.num_blocks() - lba) as u32);
        h.write(&dev.read(lba, n).await.unwrap());
        lba += u64::from(n);
    }
    h.finish()
}

async fn fingerprints(devs: &[Dev]) -> Vec<u64> {
    let mut v = Vec::new();
    for d in devs {
        v.push(fingerprint(d).await);
    }
    v
}

/// Asserts that importing `members` fails, the error matches `check`, and no member byte
/// changed.
async fn refused(members: Vec<Dev>, check: impl Fn(&PoolError) -> bool) -> PoolError {
    let before = fingerprints(&members).await;
    let err = Raid0Pool::import(members.clone()).await.unwrap_err();
    assert!(check(&err), "unexpected error: {err:?}");
    assert_eq!(
        fingerprints(&members).await,
        before,
        "a refused import changed member bytes ({err})"
    );
    err
}

async fn new_pool(name: &str, id: u8, members: &[Dev]) -> Raid0Pool {
    Raid0Pool::create(name, pool_uuid(id), members.to_vec(), STRIPE)
        .await
        .unwrap()
}

#[tokio::test]
async fn create_then_import_round_trip_through_fresh_file_handles() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, devs) = files(dir.path(), &[SMALL, SMALL + 64 * KIB, SMALL]);
    let pool = new_pool("round-trip", 1, &devs).await;
    assert_eq!(pool.capacity_bytes(), 3 * MIB);
    let member_uuids = pool.member_uuids().to_vec();
    let cap = pool.num_blocks();
    assert_eq!(cap, 3 * MIB / u64::from(BS));

    // Fill the pool with writes of assorted sizes that straddle stripe boundaries.
    let model = pattern((3 * MIB) as usize, 7);
    let mut lba = 0u64;
    let mut step = 1u64;
    while lba < cap {
        let n = step.min(cap - lba);
        let at = (lba * u64::from(BS)) as usize;
        let len = (n * u64::from(BS)) as usize;
        pool.write(
            lba,
            IoBuf::from_slice(&model[at..at + len]),
            step.is_multiple_of(3),
        )
        .await
        .unwrap();
        lba += n;
        step = step % 37 + 5;
    }
    pool.flush().await.unwrap();
    assert_eq!(&pool.read(0, cap as u32).await.unwrap()[..], &model[..]);
    drop(pool);
    drop(devs);

    let pool = Raid0Pool::import(reopen(&paths)).await.unwrap();
    assert_eq!(pool.name(), "round-trip");
    assert_eq!(pool.uuid(), pool_uuid(1));
    assert_eq!(pool.stripe_size(), STRIPE);
    assert_eq!(pool.capacity_bytes(), 3 * MIB);
    assert_eq!(pool.num_blocks(), cap);
    assert_eq!(pool.members().len(), 3);
    assert_eq!(pool.member_uuids(), &member_uuids[..]);
    assert_eq!(pool.generation(), 1);
    assert!(!pool.needs_label_repair());
    assert!(pool.volatile_cache());
    assert!(
        pool.describe().contains("round-trip"),
        "{}",
        pool.describe()
    );
    assert_eq!(&pool.read(0, cap as u32).await.unwrap()[..], &model[..]);
    // Odd ranges read through the pool match the model too.
    for (lba, n) in [
        (0u64, 1u32),
        (15, 2),
        (16, 48),
        (47, 3),
        (100, 200),
        (cap - 1, 1),
    ] {
        let at = (lba * u64::from(BS)) as usize;
        let len = n as usize * BS as usize;
        assert_eq!(
            &pool.read(lba, n).await.unwrap()[..],
            &model[at..at + len],
            "{lba}+{n}"
        );
    }
}

#[tokio::test]
async fn stripes_land_exactly_where_the_layout_says() {
    let devs = rams(&[SMALL, SMALL, SMALL]);
    let pool = new_pool("layout", 2, &devs).await;
    let cap = pool.num_blocks();
    let bs = BS as usize;
    // Tag every pool block with its LBA.
    let mut data = IoBuf::zeroed(cap as usize * bs);
    for lba in 0..cap as usize {
        let block = &mut data[lba * bs..(lba + 1) * bs];
        block.fill(0x5a);
        block[..8].copy_from_slice(&(lba as u64).to_le_bytes());
    }
    pool.write(0, data, false).await.unwrap();

    let stripe_blocks = u64::from(STRIPE / BS); // 16
    let data_start = DATA_OFFSET / u64::from(BS); // 256
    let per_member = MIB / u64::from(BS); // 256 data blocks per member
    for (m, dev) in devs.iter().enumerate() {
        let raw = dev.read(0, dev.num_blocks() as u32).await.unwrap();
        for k in 0..per_member {
            let ms = k / stripe_blocks;
            let pool_stripe = ms * 3 + m as u64;
            let want = pool_stripe * stripe_blocks + k % stripe_blocks;
            let at = ((data_start + k) as usize) * bs;
            let got = u64::from_le_bytes(raw[at..at + 8].try_into().unwrap());
            assert_eq!(got, want, "member {m} block {k}");
            assert!(raw[at + 8..at + bs].iter().all(|&b| b == 0x5a));
        }
        // Labels at both ends, nothing else outside the data area.
        assert_eq!(&raw[..8], b"FERRAID0");
        assert!(
            raw[LABEL_SIZE..DATA_OFFSET as usize]
                .iter()
                .all(|&b| b == 0)
        );
        let end = raw.len();
        assert_eq!(&raw[end - LABEL_SIZE..end - LABEL_SIZE + 8], b"FERRAID0");
        let data_end = (DATA_OFFSET + MIB) as usize;
        assert!(raw[data_end..end - LABEL_SIZE].iter().all(|&b| b == 0));
        let l = MemberLabel::decode(&raw[..LABEL_SIZE]).unwrap();
        assert_eq!(l.member_index as usize, m);
        assert_eq!(l.data_size, MIB);
        assert_eq!(MemberLabel::decode(&raw[end - LABEL_SIZE..]).unwrap(), l);
    }

    // Writes of one block land on the computed member block only.
    pool.write(16 * 4 + 3, pattern(bs, 1), false).await.unwrap(); // stripe 4 -> member 1, stripe 1
    let raw = devs[1].read(data_start + 16 + 3, 1).await.unwrap();
    assert_eq!(raw, pattern(bs, 1));
}

#[tokio::test]
async fn capacity_is_exact_for_unequal_members() {
    // Usable space: 2 MiB + 96 KiB (33 stripes), 1 MiB + 40 KiB (16 stripes), 4 MiB - 4 KiB
    // (63 stripes). The smallest rules: 3 x 16 x 64 KiB.
    let sizes = [3 * MIB + 100 * KIB, 2 * MIB + 44 * KIB, 5 * MIB];
    let pool = new_pool("unequal", 3, &rams(&sizes)).await;
    assert_eq!(pool.data_size_per_member(), 16 * 64 * KIB);
    assert_eq!(pool.capacity_bytes(), 3 * 16 * 64 * KIB);
    assert_eq!(pool.size_bytes(), pool.capacity_bytes());

    // With 4 KiB stripes, 1 MiB + 40 KiB is 266 whole stripes.
    let pool = Raid0Pool::create("unequal-4k", pool_uuid(4), rams(&sizes), 4096)
        .await
        .unwrap();
    assert_eq!(pool.capacity_bytes(), 3 * 266 * 4096);

    // One member, just big enough for one stripe.
    let one = rams(&[DATA_OFFSET + 64 * KIB + 4 * KIB]);
    let pool = new_pool("single", 5, &one).await;
    assert_eq!(pool.capacity_bytes(), 64 * KIB);
    pool.write(0, pattern(65536, 2), true).await.unwrap();
    assert_eq!(pool.read(0, 16).await.unwrap(), pattern(65536, 2));
    assert_eq!(one[0].read(256, 16).await.unwrap(), pattern(65536, 2));
}

#[tokio::test]
async fn create_refuses_bad_arguments_and_writes_nothing() {
    let devs = rams(&[SMALL, SMALL]);
    let check = |r: Result<Raid0Pool, PoolError>, want: &dyn Fn(&PoolError) -> bool| {
        let e = r.unwrap_err();
        assert!(want(&e), "{e:?}");
    };
    check(
        Raid0Pool::create("Bad", pool_uuid(1), devs.clone(), STRIPE).await,
        &|e| matches!(e, PoolError::InvalidName { .. }),
    );
    check(
        Raid0Pool::create(&"x".repeat(64), pool_uuid(1), devs.clone(), STRIPE).await,
        &|e| matches!(e, PoolError::InvalidName { .. }),
    );
    check(
        Raid0Pool::create("p", [0; 16], devs.clone(), STRIPE).await,
        &|e| matches!(e, PoolError::NilUuid),
    );
    check(
        Raid0Pool::create("p", pool_uuid(1), vec![], STRIPE).await,
        &|e| matches!(e, PoolError::NoMembers),
    );
    check(
        Raid0Pool::create("p", pool_uuid(1), rams(&[SMALL; 65]), STRIPE).await,
        &|e| matches!(e, PoolError::TooManyMembers { count: 65 }),
    );
    for stripe in [3 * 4096, 2048, 32 << 20] {
        check(
            Raid0Pool::create("p", pool_uuid(1), devs.clone(), stripe).await,
            &|e| matches!(e, PoolError::InvalidStripeSize { .. }),
        );
    }
    let mixed: Vec<Dev> = vec![
        devs[0].clone(),
        Arc::new(RamDevice::new(SMALL, 512).unwrap()),
    ];
    check(
        Raid0Pool::create("p", pool_uuid(1), mixed, STRIPE).await,
        &|e| {
            matches!(
                e,
                PoolError::BlockSizeMismatch {
                    position: 1,
                    block_size: 512,
                    expected: 4096,
                    ..
                }
            )
        },
    );
    let small = vec![devs[0].clone(), ram(DATA_OFFSET + 64 * KIB)];
    check(
        Raid0Pool::create("p", pool_uuid(1), small, STRIPE).await,
        &|e| matches!(e, PoolError::MemberTooSmall { position: 1, .. }),
    );
    let twice = vec![devs[0].clone(), devs[1].clone(), devs[0].clone()];
    check(
        Raid0Pool::create("p", pool_uuid(1), twice, STRIPE).await,
        &|e| {
            matches!(
                e,
                PoolError::DuplicateMember {
                    first: 0,
                    second: 2
                }
            )
        },
    );
    let blank = fingerprint(&ram(SMALL)).await;
    assert_eq!(fingerprints(&devs).await, vec![blank, blank]);
}

#[tokio::test]
async fn create_never_overwrites_a_labelled_member() {
    let devs = rams(&[SMALL, SMALL, SMALL]);
    let _a = new_pool("pool-a", 1, &devs[..2]).await;
    let before = fingerprints(&devs).await;

    // Another pool over a member of pool-a.
    let e = Raid0Pool::create(
        "pool-b",
        pool_uuid(2),
        vec![devs[2].clone(), devs[1].clone()],
        STRIPE,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, PoolError::AlreadyLabeled { position: 1, existing, .. } if existing.contains("pool-a")),
        "{e:?}"
    );
    // The same pool again.
    let e = new_pool_err("pool-a", 1, &devs[..2]).await;
    assert!(
        matches!(e, PoolError::AlreadyLabeled { position: 0, .. }),
        "{e:?}"
    );
    assert_eq!(fingerprints(&devs).await, before);

    // A damaged label (magic present, checksum wrong) is refused too.
    let damaged = ram(SMALL);
    let mut block = IoBuf::zeroed(BS as usize);
    block[..8].copy_from_slice(b"FERRAID0");
    damaged.write(0, block, false).await.unwrap();
    let before = fingerprint(&damaged).await;
    let e = Raid0Pool::create("pool-c", pool_uuid(3), vec![damaged.clone()], STRIPE)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PoolError::AlreadyLabeled { existing, .. } if existing.contains("checksum")),
        "{e:?}"
    );
    assert_eq!(fingerprint(&damaged).await, before);
}

async fn new_pool_err(name: &str, id: u8, members: &[Dev]) -> PoolError {
    Raid0Pool::create(name, pool_uuid(id), members.to_vec(), STRIPE)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn create_detects_two_handles_on_one_file_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, devs) = files(dir.path(), &[SMALL, SMALL]);
    let alias: Dev = Arc::new(FileDevice::open(&paths[0], file_opts(None)).unwrap());
    let e = Raid0Pool::create(
        "aliased",
        pool_uuid(1),
        vec![devs[0].clone(), devs[1].clone(), alias],
        STRIPE,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            PoolError::DuplicateMember {
                first: 0,
                second: 2
            }
        ),
        "{e:?}"
    );
    // The labels it wrote are gone: the devices are blank and usable again.
    let blank = fingerprint(&ram(SMALL)).await;
    assert_eq!(fingerprints(&devs).await, vec![blank, blank]);
    let pool = new_pool("aliased", 1, &devs).await;
    assert_eq!(pool.capacity_bytes(), 2 * MIB);
}

/// A three-member RAM pool with data written, and its members.
async fn populated(id: u8) -> (Vec<Dev>, IoBuf) {
    let devs = rams(&[SMALL, SMALL, SMALL]);
    let pool = new_pool(&format!("pool-{id}"), id, &devs).await;
    let data = pattern((3 * MIB) as usize, u64::from(id));
    pool.write(0, data.clone(), false).await.unwrap();
    (devs, data)
}

#[tokio::test]
async fn import_refuses_missing_members() {
    let (m, _) = populated(1).await;
    let e = refused(vec![m[0].clone(), m[1].clone()], |e| {
        matches!(e, PoolError::MissingMembers { given: 2, expected: 3, missing, .. } if missing == &[2])
    })
    .await;
    assert!(e.to_string().contains("missing member index(es): 2"), "{e}");
    refused(
        vec![m[0].clone(), m[2].clone()],
        |e| matches!(e, PoolError::MissingMembers { missing, .. } if missing == &[1]),
    )
    .await;
    refused(
        vec![m[2].clone()],
        |e| matches!(e, PoolError::MissingMembers { missing, .. } if missing == &[0, 1]),
    )
    .await;
}

#[tokio::test]
async fn import_refuses_extra_members() {
    let (m, _) = populated(1).await;
    let blank = ram(SMALL);
    refused(
        vec![m[0].clone(), m[1].clone(), m[2].clone(), blank],
        |e| matches!(e, PoolError::ExtraMembers { given: 4, expected: 3, extra, .. } if extra == &[3]),
    )
    .await;
    let (other, _) = populated(2).await;
    refused(
        vec![m[0].clone(), other[0].clone(), m[1].clone(), m[2].clone()],
        |e| matches!(e, PoolError::ExtraMembers { extra, .. } if extra == &[1]),
    )
    .await;
    refused(
        vec![m[0].clone(), m[1].clone(), m[2].clone(), m[1].clone()],
        |e| matches!(e, PoolError::ExtraMembers { extra, .. } if extra == &[3]),
    )
    .await;
}

#[tokio::test]
async fn import_refuses_reordered_members_and_says_which_is_which() {
    let (m, data) = populated(1).await;
    let e = refused(
        vec![m[1].clone(), m[0].clone(), m[2].clone()],
        |e| matches!(e, PoolError::MisorderedMembers { found } if found == &[1, 0, 2]),
    )
    .await;
    assert_eq!(
        e.to_string(),
        "members are out of order: position 0 holds member index 1, position 1 holds member index 0; pass them in member-index order"
    );
    refused(
        vec![m[2].clone(), m[0].clone(), m[1].clone()],
        |e| matches!(e, PoolError::MisorderedMembers { found } if found == &[2, 0, 1]),
    )
    .await;
    // In order it imports, with the data intact.
    let pool = Raid0Pool::import(m.clone()).await.unwrap();
    assert_eq!(pool.read(0, (3 * MIB / 4096) as u32).await.unwrap(), data);
}

#[tokio::test]
async fn import_refuses_foreign_and_unlabelled_members() {
    let (m, _) = populated(1).await;
    let (other, _) = populated(2).await;
    let e = refused(vec![m[0].clone(), other[1].clone(), m[2].clone()], |e| {
        matches!(e, PoolError::ForeignMember { position: 1, found, expected, .. }
            if found.contains("pool-2") && expected.contains("pool-1"))
    })
    .await;
    assert!(e.to_string().contains("belongs to pool \"pool-2\""), "{e}");

    let e = refused(vec![m[0].clone(), ram(SMALL), m[2].clone()], |e| {
        matches!(e, PoolError::NotAMember { position: 1, .. })
    })
    .await;
    assert!(e.to_string().contains("not a Ferrite pool member"), "{e}");
    refused(vec![ram(SMALL)], |e| {
        matches!(e, PoolError::NotAMember { position: 0, .. })
    })
    .await;
    // A device too small to hold two labels is simply not a member.
    refused(vec![ram(4096)], |e| {
        matches!(e, PoolError::NotAMember { position: 0, .. })
    })
    .await;
    refused(vec![], |e| matches!(e, PoolError::NoMembers)).await;
}

#[tokio::test]
async fn import_refuses_duplicate_members() {
    let (m, _) = populated(1).await;
    refused(vec![m[0].clone(), m[0].clone(), m[2].clone()], |e| {
        matches!(
            e,
            PoolError::DuplicateMember {
                first: 0,
                second: 1
            }
        )
    })
    .await;

    // Two handles on the same file.
    let dir = tempfile::tempdir().unwrap();
    let (paths, devs) = files(dir.path(), &[SMALL, SMALL]);
    drop(new_pool("files", 3, &devs).await);
    let alias: Dev = Arc::new(FileDevice::open(&paths[1], file_opts(None)).unwrap());
    refused(vec![devs[1].clone(), alias], |e| {
        matches!(
            e,
            PoolError::DuplicateMember {
                first: 0,
                second: 1
            }
        )
    })
    .await;
}

#[tokio::test]
async fn import_refuses_a_stale_member() {
    let (m, _) = populated(1).await;
    // Keep an old copy of member 1, move the pool to generation 2, then put the copy back.
    let n = m[1].num_blocks() as u32;
    let old = m[1].read(0, n).await.unwrap();
    let pool = Raid0Pool::import(m.clone()).await.unwrap();
    pool.rewrite_labels().await.unwrap();
    assert_eq!(pool.generation(), 2);
    drop(pool);
    m[1].write(0, old, false).await.unwrap();

    let e = refused(m.clone(), |e| {
        matches!(
            e,
            PoolError::StaleMember {
                position: 1,
                member_index: 1,
                generation: 1,
                expected: 2
            }
        )
    })
    .await;
    assert!(e.to_string().contains("stale"), "{e}");
}

#[tokio::test]
async fn import_refuses_a_shrunk_member() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, devs) = files(dir.path(), &[SMALL, SMALL]);
    drop(new_pool("shrink", 1, &devs).await);
    drop(devs);
    // Cut the last 64 KiB + 4 KiB: the backup label and part of the data area are gone.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&paths[1])
        .unwrap();
    f.set_len(SMALL - 68 * KIB).unwrap();
    drop(f);
    let e = refused(reopen(&paths), |e| {
        matches!(e, PoolError::MemberShrunk { position: 1, size, required, .. }
            if *size == SMALL - 68 * KIB && *required == SMALL)
    })
    .await;
    assert!(e.to_string().contains("shrank"), "{e}");
}

#[tokio::test]
async fn import_refuses_a_changed_block_size_and_corrupt_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, devs) = files(dir.path(), &[SMALL]);
    drop(new_pool("bs", 1, &devs).await);
    drop(devs);
    let small_blocks: Dev = Arc::new(FileDevice::open(&paths[0], FileOptions::new(512)).unwrap());
    refused(vec![small_blocks], |e| {
        matches!(
            e,
            PoolError::BlockSizeMismatch {
                position: 0,
                block_size: 512,
                expected: 4096,
                ..
            }
        )
    })
    .await;

    // Both copies damaged: a specific error, not "not a member".
    let (m, _) = populated(1).await;
    let mut junk = IoBuf::zeroed(BS as usize);
    junk[..8].copy_from_slice(b"FERRAID0");
    junk[100] = 1;
    m[2].write(0, junk.clone(), false).await.unwrap();
    m[2].write(m[2].num_blocks() - 1, junk, false)
        .await
        .unwrap();
    refused(m.clone(), |e| {
        matches!(
            e,
            PoolError::CorruptLabel {
                position: 2,
                primary: LabelError::BadChecksum { .. },
                ..
            }
        )
    })
    .await;
}

#[tokio::test]
async fn out_of_range_is_rejected_and_touches_nothing() {
    let devs = rams(&[SMALL, SMALL + 64 * KIB]);
    let pool = new_pool("bounds", 1, &devs).await;
    let n = pool.num_blocks();
    assert_eq!(n, 2 * MIB / 4096);
    let before = fingerprints(&devs).await;
    let oor = |r: Result<(), BlockError>| {
        assert!(matches!(r, Err(BlockError::OutOfRange { .. })), "{r:?}")
    };
    assert!(matches!(
        pool.read(n, 1).await,
        Err(BlockError::OutOfRange { lba, nblocks: 1, capacity }) if lba == n && capacity == n
    ));
    assert!(matches!(
        pool.read(n - 1, 2).await,
        Err(BlockError::OutOfRange { .. })
    ));
    assert!(matches!(
        pool.read(u64::MAX, 2).await,
        Err(BlockError::OutOfRange { .. })
    ));
    oor(pool.write(n - 1, pattern(8192, 1), false).await);
    oor(pool.write(u64::MAX, pattern(4096, 1), false).await);
    oor(pool.write_zeroes(n, 1, false).await);
    oor(pool.write_zeroes(0, n + 1, true).await);
    oor(pool.deallocate(1, n).await);
    oor(pool.deallocate(u64::MAX, 2).await);
    assert!(matches!(
        pool.write(0, pattern(1000, 1), false).await,
        Err(BlockError::Misaligned { .. })
    ));
    assert_eq!(fingerprints(&devs).await, before);
    // Zero-length I/O at the end is fine and does nothing.
    assert!(pool.read(n, 0).await.unwrap().is_empty());
    pool.write(n, IoBuf::zeroed(0), false).await.unwrap();
    pool.write_zeroes(n, 0, false).await.unwrap();
    assert_eq!(fingerprints(&devs).await, before);
}

/// xorshift64*: a small deterministic generator for the random I/O test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_random_io_matches_a_model() {
    // 512-byte blocks and 4 KiB stripes: 8-block stripes, so most I/Os cross several.
    let devs: Vec<Dev> = [SMALL, SMALL + 20 * KIB, SMALL + 4 * KIB]
        .iter()
        .map(|&s| Arc::new(RamDevice::new(s, 512).unwrap()) as Dev)
        .collect();
    let pool: Arc<dyn BlockDevice> = Arc::new(
        Raid0Pool::create("random", pool_uuid(9), devs, 4096)
            .await
            .unwrap(),
    );
    let cap = pool.num_blocks();
    let tasks = 8u64;
    let slice = cap / tasks;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            // Each task owns blocks [base, base + slice) and keeps its own model of them.
            let base = t * slice;
            let mut model = vec![0u8; (slice * 512) as usize];
            let mut rng = Rng(0x1234_5678 + t);
            for i in 0..150u64 {
                let lba = rng.below(slice);
                let n = 1 + rng.below((slice - lba).min(64));
                let (at, len) = ((lba * 512) as usize, (n * 512) as usize);
                match rng.below(10) {
                    0..=4 => {
                        let data = pattern(len, t * 1000 + i);
                        model[at..at + len].copy_from_slice(&data);
                        pool.write(base + lba, data, i % 7 == 0).await.unwrap();
                    }
                    5..=7 => {
                        let got = pool.read(base + lba, n as u32).await.unwrap();
                        assert_eq!(&got[..], &model[at..at + len], "task {t} op {i}");
                    }
                    8 => {
                        model[at..at + len].fill(0);
                        pool.write_zeroes(base + lba, n, i % 2 == 0).await.unwrap();
                    }
                    _ => {
                        model[at..at + len].fill(0);
                        pool.deallocate(base + lba, n).await.unwrap();
                        pool.flush().await.unwrap();
                    }
                }
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            model
        }));
    }
    let mut whole = Vec::new();
    for h in handles {
        whole.extend(h.await.unwrap());
    }
    let got = pool.read(0, (slice * tasks) as u32).await.unwrap();
    assert_eq!(&got[..], &whole[..]);
}

#[tokio::test]
async fn large_zeroing_spans_cover_every_member_once() {
    let devs = rams(&[SMALL, SMALL, SMALL]);
    let pool = new_pool("zeroes", 1, &devs).await;
    let cap = pool.num_blocks();
    let data = pattern((cap * 4096) as usize, 3);
    pool.write(0, data.clone(), false).await.unwrap();
    // Zero from the middle of stripe 1 to the middle of stripe 40.
    let (lba, n) = (16 + 5, 39 * 16);
    pool.write_zeroes(lba, n, false).await.unwrap();
    let mut model = data.to_vec();
    model[(lba * 4096) as usize..((lba + n) * 4096) as usize].fill(0);
    assert_eq!(&pool.read(0, cap as u32).await.unwrap()[..], &model[..]);
    pool.deallocate(0, cap).await.unwrap();
    assert!(
        pool.read(0, cap as u32)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
    // Labels survive zeroing the whole pool.
    drop(pool);
    Raid0Pool::import(devs).await.unwrap();
}

#[tokio::test]
async fn backup_label_recovers_a_damaged_primary() {
    let (m, data) = populated(1).await;
    // Garbage over member 1's primary label, and member 2's primary wiped to zeroes.
    m[1].write(0, pattern(4096, 5), false).await.unwrap();
    m[2].write(0, IoBuf::zeroed(4096), false).await.unwrap();
    let pool = Raid0Pool::import(m.clone()).await.unwrap();
    assert!(pool.needs_label_repair());
    assert_eq!(pool.generation(), 1);
    assert_eq!(pool.read(0, (3 * MIB / 4096) as u32).await.unwrap(), data);

    pool.rewrite_labels().await.unwrap();
    assert!(!pool.needs_label_repair());
    assert_eq!(pool.generation(), 2);
    drop(pool);
    for d in &m {
        let c = read_labels(d.as_ref()).await.unwrap();
        assert!(c.both_at(2), "{c:?}");
    }
    let pool = Raid0Pool::import(m.clone()).await.unwrap();
    assert!(!pool.needs_label_repair());
    assert_eq!(pool.generation(), 2);

    // A damaged backup alone is tolerated as well.
    drop(pool);
    let last = m[0].num_blocks() - 1;
    m[0].write(last, pattern(4096, 6), false).await.unwrap();
    let pool = Raid0Pool::import(m.clone()).await.unwrap();
    assert!(pool.needs_label_repair());
    assert_eq!(pool.read(0, (3 * MIB / 4096) as u32).await.unwrap(), data);
}

#[tokio::test]
async fn interrupted_label_rewrite_imports_at_the_last_complete_generation() {
    let (m, data) = populated(1).await;
    let labels: Vec<MemberLabel> = {
        let mut v = Vec::new();
        for d in &m {
            v.push(read_labels(d.as_ref()).await.unwrap().primary.unwrap());
        }
        v
    };
    let next = |l: &MemberLabel| MemberLabel {
        generation: 2,
        ..l.clone()
    };
    // Crash during the primary phase: only member 0's primary reached generation 2.
    write_label(m[0].as_ref(), &next(&labels[0]), LabelCopy::Primary)
        .await
        .unwrap();
    let pool = Raid0Pool::import(m.clone()).await.unwrap();
    assert!(pool.needs_label_repair());
    assert_eq!(pool.generation(), 2);
    assert_eq!(pool.read(0, (3 * MIB / 4096) as u32).await.unwrap(), data);
    drop(pool);

    // Crash during the backup phase: all primaries at 2, backups at 1.
    for (d, l) in m.iter().zip(&labels) {
        write_label(d.as_ref(), &next(l), LabelCopy::Primary)
            .await
            .unwrap();
    }
    let pool = Raid0Pool::import(m.clone()).await.unwrap();
    assert!(pool.needs_label_repair());
    pool.rewrite_labels().await.unwrap();
    assert_eq!(pool.generation(), 3);
    drop(pool);
    let pool = Raid0Pool::import(m.clone()).await.unwrap();
    assert!(!pool.needs_label_repair());
    assert_eq!(pool.generation(), 3);
}

#[tokio::test]
async fn grown_member_still_imports_and_relabels_at_its_new_end() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, devs) = files(dir.path(), &[SMALL, SMALL]);
    drop(new_pool("grow", 1, &devs).await);
    drop(devs);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&paths[0])
        .unwrap();
    f.set_len(SMALL + MIB).unwrap();
    drop(f);
    // The backup is found where the label says the end was.
    let devs = reopen(&paths);
    let c = read_labels(devs[0].as_ref()).await.unwrap();
    assert!(c.both_at(1), "{c:?}");
    assert_eq!(c.backup.unwrap().member_size, SMALL);
    let pool = Raid0Pool::import(devs.clone()).await.unwrap();
    assert!(pool.needs_label_repair());
    assert_eq!(pool.capacity_bytes(), 2 * MIB);
    pool.rewrite_labels().await.unwrap();
    drop(pool);
    let c = read_labels(devs[0].as_ref()).await.unwrap();
    assert!(c.both_at(2));
    assert_eq!(c.backup.unwrap().member_size, SMALL + MIB);
    let pool = Raid0Pool::import(reopen(&paths)).await.unwrap();
    assert!(!pool.needs_label_repair());
}

#[tokio::test]
async fn large_blocks_keep_labels_in_the_first_and_last_4k() {
    let size = DATA_OFFSET + 4 * 65536 + 65536;
    let devs: Vec<Dev> = (0..2)
        .map(|_| Arc::new(RamDevice::new(size, 65536).unwrap()) as Dev)
        .collect();
    let pool = Raid0Pool::create("big-blocks", pool_uuid(1), devs.clone(), 65536)
        .await
        .unwrap();
    assert_eq!(pool.capacity_bytes(), 2 * 4 * 65536);
    pool.write(0, pattern(8 * 65536, 1), false).await.unwrap();
    drop(pool);
    let raw = devs[1].read(0, devs[1].num_blocks() as u32).await.unwrap();
    assert_eq!(&raw[..8], b"FERRAID0");
    let end = raw.len();
    assert!(MemberLabel::decode(&raw[end - LABEL_SIZE..]).is_ok());
    let pool = Raid0Pool::import(devs).await.unwrap();
    assert_eq!(pool.read(0, 8).await.unwrap(), pattern(8 * 65536, 1));
}

#[tokio::test]
async fn destroy_clears_labels_so_members_can_be_reused() {
    let devs = rams(&[SMALL, SMALL]);
    let pool = new_pool("doomed", 1, &devs).await;
    pool.destroy().await.unwrap();
    refused(devs.clone(), |e| {
        matches!(e, PoolError::NotAMember { position: 0, .. })
    })
    .await;
    let pool = new_pool("reborn", 2, &devs).await;
    assert_eq!(pool.name(), "reborn");
}

#[tokio::test]
async fn pool_errors_flow_into_block_errors() {
    async fn open_pool(members: Vec<Dev>) -> Result<Raid0Pool, BlockError> {
        Ok(Raid0Pool::import(members).await?)
    }
    let e = open_pool(vec![ram(SMALL)]).await.unwrap_err();
    assert!(
        matches!(&e, BlockError::InvalidSpec(m) if m.contains("not a Ferrite pool member")),
        "{e:?}"
    );
}

#[tokio::test]
async fn volatile_cache_is_any_members() {
    let pool = new_pool("ram-only", 1, &rams(&[SMALL, SMALL])).await;
    assert!(!pool.volatile_cache());
    pool.flush().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, mut devs) = files(dir.path(), &[SMALL]);
    devs.push(ram(SMALL));
    let pool = new_pool("mixed", 2, &devs).await;
    assert!(pool.volatile_cache());
    pool.flush().await.unwrap();
}

#[tokio::test]
async fn import_refuses_unknown_and_inconsistent_members() {
    // Two pools that (wrongly) share a UUID: a device of one is not listed by the other.
    let a = rams(&[SMALL, SMALL]);
    let b = rams(&[SMALL, SMALL]);
    drop(new_pool("twin", 7, &a).await);
    drop(new_pool("twin", 7, &b).await);
    refused(vec![a[0].clone(), b[1].clone()], |e| {
        matches!(e, PoolError::UnknownMember { position: 1, .. })
    })
    .await;

    // Same pool and generation, but member 1's label (both copies) claims another stripe size.
    let mut l = read_labels(a[1].as_ref()).await.unwrap().primary.unwrap();
    l.stripe_size = 32 * 1024;
    for copy in [LabelCopy::Primary, LabelCopy::Backup] {
        write_label(a[1].as_ref(), &l, copy).await.unwrap();
    }
    refused(a.clone(), |e| {
        matches!(
            e,
            PoolError::InconsistentLabels {
                position: 1,
                field: "stripe size"
            }
        )
    })
    .await;
}
