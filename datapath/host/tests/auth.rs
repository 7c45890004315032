//! In-band authentication (DH-HMAC-CHAP) of the host library against Ferrite's own target
//! over loopback TCP: unidirectional and bidirectional for each hash with the null group and
//! ffdhe2048 (and one ffdhe8192 run), on the admin queue and every I/O queue; a wrong
//! secret, a missing secret, a wrong controller secret and a bidirectional request without
//! a controller secret are refused; hosts without keys keep working as before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrite_block::{BlockDevice, RamDevice};
use ferrite_host::{Controller, DhGroup, DhchapSecret, HashId, HostError, HostOptions};
use ferrite_target::{
    DhchapKeys, HostAccess, HostKeys, NamespaceConfig, SubsystemConfig, Target, TargetOptions,
};

const NQN: &str = "nqn.2024-01.dev.ferrite:auth";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn secret(hash: u8, fill: u8, len: usize) -> DhchapSecret {
    DhchapSecret::new(hash, &vec![fill; len]).unwrap()
}

fn host(ctrl: Option<DhchapSecret>, host_secret: Option<DhchapSecret>) -> HostOptions {
    HostOptions {
        timeout: Duration::from_secs(10),
        io_queues: 2,
        dhchap_secret: host_secret,
        dhchap_ctrl_secret: ctrl,
        ..HostOptions::default()
    }
}

/// A target whose subsystem requires `keys` from `hostnqn` (any host may connect).
async fn target_with(keys: HostKeys) -> (Arc<Target>, SocketAddr) {
    init_tracing();
    let t = Target::new(TargetOptions::default());
    let dev = Arc::new(RamDevice::new(8 << 20, 4096).unwrap()) as Arc<dyn BlockDevice>;
    t.add_subsystem_with_keys(
        SubsystemConfig {
            nqn: NQN.into(),
            hosts: HostAccess::Any,
            namespaces: vec![NamespaceConfig {
                nsid: 1,
                device: dev,
            }],
        },
        keys,
    )
    .unwrap();
    let addr = t.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (t, addr)
}

fn keys_for(hostnqn: &str, k: DhchapKeys) -> HostKeys {
    let mut m = HostKeys::new();
    m.insert(hostnqn.to_string(), k);
    m
}

/// Connects, writes and reads back on every I/O queue, and disconnects.
async fn exercise(addr: SocketAddr, o: HostOptions) {
    let ctrl = Controller::connect(addr, NQN, o).await.unwrap();
    assert_eq!(ctrl.io_queue_count(), 2);
    for lba in 0..4u64 {
        let data = vec![lba as u8 + 1; 4096];
        ctrl.write(1, lba, &data, false).await.unwrap();
        assert_eq!(&ctrl.read(1, lba, 1).await.unwrap()[..], &data[..]);
    }
    ctrl.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidirectional_and_bidirectional_for_each_hash_with_null_and_ffdhe2048() {
    for hash in HashId::ALL {
        for group in [DhGroup::Null, DhGroup::Ffdhe2048] {
            for bidirectional in [false, true] {
                // Secrets of the hash's length, transformed with that hash.
                let hs = secret(hash.id(), 0x11, hash.len());
                let cs = bidirectional.then(|| secret(0, 0x22, 32));
                let o = host(cs.clone(), Some(hs.clone()));
                let mut k = DhchapKeys::new(hs, cs.clone());
                // The controller accepts only this hash and group, so they are the ones used.
                k.hashes = vec![hash];
                k.dh_groups = vec![group];
                let (t, addr) = target_with(keys_for(&o.hostnqn, k)).await;
                exercise(addr, o).await;
                t.shutdown().await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_group_and_hash() {
    let hs = secret(3, 0x33, 64);
    let cs = secret(2, 0x44, 48);
    let o = HostOptions {
        io_queues: 1,
        // Unoptimized test builds are slow at 8192-bit exponentiations: no keep-alive race.
        kato_ms: 30_000,
        ..host(Some(cs.clone()), Some(hs.clone()))
    };
    let mut k = DhchapKeys::new(hs, Some(cs));
    k.hashes = vec![HashId::Sha512];
    k.dh_groups = vec![DhGroup::Ffdhe8192];
    let (t, addr) = target_with(keys_for(&o.hostnqn, k)).await;
    let ctrl = Controller::connect(addr, NQN, o).await.unwrap();
    ctrl.write(1, 9, &[5u8; 4096], true).await.unwrap();
    ctrl.disconnect().await.unwrap();
    t.shutdown().await;
}

fn is_auth_failure(r: &Result<Controller, HostError>) -> bool {
    matches!(r, Err(HostError::Authentication { qid: 0, .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_missing_and_mismatched_secrets_are_refused() {
    let good = secret(1, 0x55, 32);
    let ctrl_secret = secret(0, 0x66, 32);
    let o = host(None, Some(good.clone()));
    let (t, addr) = target_with(keys_for(
        &o.hostnqn,
        DhchapKeys::new(good.clone(), Some(ctrl_secret.clone())),
    ))
    .await;

    // A wrong host secret.
    let wrong = HostOptions {
        dhchap_secret: Some(secret(1, 0x56, 32)),
        ..o.clone()
    };
    let r = Controller::connect(addr, NQN, wrong).await;
    assert!(is_auth_failure(&r), "{r:?}");
    // The same key with another transformation hash is another secret.
    let other_hash = HostOptions {
        dhchap_secret: Some(secret(2, 0x55, 32)),
        ..o.clone()
    };
    assert!(is_auth_failure(
        &Controller::connect(addr, NQN, other_hash).await
    ));
    // No secret at all.
    let none = HostOptions {
        dhchap_secret: None,
        ..o.clone()
    };
    let r = Controller::connect(addr, NQN, none).await;
    assert!(is_auth_failure(&r), "{r:?}");
    // A controller that does not know the controller secret the host expects.
    let bad_ctrl = HostOptions {
        dhchap_ctrl_secret: Some(secret(0, 0x67, 32)),
        ..o.clone()
    };
    let r = Controller::connect(addr, NQN, bad_ctrl).await;
    assert!(
        matches!(&r, Err(HostError::Authentication { reason, .. }) if reason.contains("controller's response")),
        "{r:?}"
    );
    // No group or hash in common.
    let no_group = HostOptions {
        dhchap_groups: vec![DhGroup::Ffdhe6144],
        ..o.clone()
    };
    let t2 = {
        let mut k = DhchapKeys::new(good.clone(), None);
        k.dh_groups = vec![DhGroup::Ffdhe2048];
        target_with(keys_for(&o.hostnqn, k)).await
    };
    assert!(is_auth_failure(
        &Controller::connect(t2.1, NQN, no_group).await
    ));
    t2.0.shutdown().await;

    // The right secrets still work, uni- and bidirectionally, after all those failures.
    exercise(addr, o.clone()).await;
    exercise(
        addr,
        HostOptions {
            dhchap_ctrl_secret: Some(ctrl_secret),
            ..o
        },
    )
    .await;
    assert_eq!(t.subsystem_info()[0].authenticated_hosts.len(), 1);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_without_a_controller_secret_is_refused() {
    let good = secret(0, 0x77, 48);
    let o = host(Some(secret(0, 0x78, 32)), Some(good.clone()));
    let (t, addr) = target_with(keys_for(&o.hostnqn, DhchapKeys::new(good, None))).await;
    let r = Controller::connect(addr, NQN, o).await;
    assert!(is_auth_failure(&r), "{r:?}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_without_keys_are_unchanged_and_key_changes_disconnect() {
    let good = secret(1, 0x12, 32);
    let keyed = host(None, Some(good.clone()));
    let (t, addr) = target_with(keys_for(
        &keyed.hostnqn,
        DhchapKeys::new(good.clone(), None),
    ))
    .await;
    // Another host, no keys configured for it: plain connect, its secret unused.
    exercise(addr, host(None, None)).await;
    exercise(addr, host(None, Some(secret(1, 0x13, 32)))).await;

    // A connected keyed host is disconnected when its keys change, and must use the new one.
    let ctrl = Controller::connect(addr, NQN, keyed.clone()).await.unwrap();
    let new = secret(1, 0x14, 32);
    t.set_host_keys(
        NQN,
        keys_for(&keyed.hostnqn, DhchapKeys::new(new.clone(), None)),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ctrl.is_connected() {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(is_auth_failure(
        &Controller::connect(addr, NQN, keyed.clone()).await
    ));
    exercise(
        addr,
        HostOptions {
            dhchap_secret: Some(new),
            ..keyed
        },
    )
    .await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_wide_keys_apply_to_every_subsystem_and_can_be_replaced() {
    init_tracing();
    let good = secret(1, 0x21, 32);
    let o = host(None, Some(good.clone()));
    let t = Target::new(TargetOptions {
        host_keys: keys_for(&o.hostnqn, DhchapKeys::new(good, None)),
        ..TargetOptions::default()
    });
    let dev = Arc::new(RamDevice::new(8 << 20, 4096).unwrap()) as Arc<dyn BlockDevice>;
    t.add_subsystem(SubsystemConfig {
        nqn: NQN.into(),
        hosts: HostAccess::Any,
        namespaces: vec![NamespaceConfig {
            nsid: 1,
            device: dev,
        }],
    })
    .unwrap();
    let addr = t.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    assert_eq!(
        t.subsystem_info()[0].authenticated_hosts,
        vec![o.hostnqn.clone()]
    );
    let none = HostOptions {
        dhchap_secret: None,
        ..o.clone()
    };
    assert!(is_auth_failure(
        &Controller::connect(addr, NQN, none.clone()).await
    ));
    let ctrl = Controller::connect(addr, NQN, o.clone()).await.unwrap();
    // Dropping the keys disconnects the host; it then connects without a secret.
    t.set_default_host_keys(HostKeys::new()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ctrl.is_connected() {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exercise(addr, none).await;
    t.shutdown().await;
}
