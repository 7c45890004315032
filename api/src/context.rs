//! The keys of the CSI `volume_context` / `publish_context` maps that tell the CSI node
//! plugin how to reach a volume.
//!
//! The controller (operator) returns them in `CreateVolumeResponse.volume.volume_context`
//! and/or `ControllerPublishVolumeResponse.publish_context`; the kubelet passes both maps to
//! `NodeStageVolume` and `NodePublishVolume`. When a key is in both, the publish context
//! wins (it is computed per node at attach time).
//!
//! Example: `nqn=nqn.2024-01.dev.ferrite:pvc-1234`, `nsid=1`,
//! `targets=10.0.0.11:4420,10.0.0.12:4420`, `ctrlLossTmo=1800`.

/// Subsystem NQN of the volume (required).
pub const NQN: &str = "nqn";
/// Namespace ID within the subsystem (decimal, default 1).
pub const NSID: &str = "nsid";
/// Comma-separated NVMe/TCP portals, `HOST:PORT` (IPv6 as `[ADDR]:PORT`; a host name is
/// resolved by the node). One controller is connected per portal (multipath). Required.
pub const TARGETS: &str = "targets";
/// Transport: only `tcp` (the default).
pub const TRANSPORT: &str = "transport";
/// Seconds the kernel keeps reconnecting a lost controller before failing I/O for good
/// (`ctrl_loss_tmo`; `-1` = forever). Default: the node plugin's `--ctrl-loss-tmo`.
pub const CTRL_LOSS_TMO: &str = "ctrlLossTmo";
/// Seconds between reconnect attempts (`reconnect_delay`).
pub const RECONNECT_DELAY: &str = "reconnectDelay";
/// Seconds after a path loss before I/O fails over/fails fast (`fast_io_fail_tmo`).
pub const FAST_IO_FAIL_TMO: &str = "fastIoFailTmo";
/// Number of I/O queues (`nr_io_queues`); default: the kernel's (one per CPU).
pub const NR_IO_QUEUES: &str = "nrIoQueues";
/// Keep-alive timeout in seconds (`keep_alive_tmo`).
pub const KEEP_ALIVE_TMO: &str = "keepAliveTmo";
/// `true` to enable NVMe/TCP header digests (`hdr_digest`).
pub const HEADER_DIGEST: &str = "headerDigest";
/// `true` to enable NVMe/TCP data digests (`data_digest`).
pub const DATA_DIGEST: &str = "dataDigest";
