//! Ferrite's CSI node plugin: the CSI Identity and Node services.
//!
//! It connects the Linux kernel NVMe/TCP initiator to a volume's target (writing the
//! connect options to `/dev/nvme-fabrics`), finds the namespace's block device through sysfs
//! (multipath heads or plain namespaces), formats it only if blank, mounts it at the staging
//! path (or binds the raw device), binds it into pods, reports usage and health, grows
//! filesystems online, and disconnects only the volume's own controllers.
//!
//! Modules, one job each: [`sysfs`] (controllers, namespaces), [`fabrics`] (connect,
//! disconnect), [`mount`] (mount table, mount/umount), [`format`] (blkid, mkfs, grow),
//! [`hostnqn`] (host identity), [`volume`] (contexts, capabilities), [`state`] (records of
//! staged volumes), [`stage`], [`publish`], [`stats`], [`expand`] (the operations),
//! [`identity`] and [`node`] (the gRPC services), [`endpoint`] (unix/tcp serving).

pub mod config;
pub mod device;
pub mod endpoint;
pub mod error;
pub mod exec;
pub mod expand;
pub mod fabrics;
pub mod format;
pub mod hostnqn;
pub mod identity;
pub mod locks;
pub mod mount;
pub mod node;
pub mod publish;
pub mod stage;
pub mod state;
pub mod stats;
pub mod sysfs;
pub mod volume;

pub use config::{Config, Plugin};
pub use endpoint::{Endpoint, serve};
