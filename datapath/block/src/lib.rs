//! Ferrite's block layer: the [`BlockDevice`] trait every storage backend implements, the
//! aligned I/O buffer that carries data through it, and the backends themselves (RAM for tests
//! and benchmarks, files and raw block devices opened with `O_DIRECT`).
//!
//! The block layer knows nothing of NVMe/TCP: the target serves any `BlockDevice` as a
//! namespace, and later layers (RAID0 pools, thin volumes, mirrors) are `BlockDevice`s too.
//!
//! Backends are usually named by a [`BackendSpec`] (`ram:1G`, `file:/dev/nvme0n1`,
//! `file:/var/lib/ferrite/a.img:10G`) and opened with [`BackendSpec::open`].

pub mod buf;
pub mod device;
mod engine;
pub mod error;
pub mod file;
pub mod mirror;
pub mod raid0;
pub mod ram;
pub mod spec;
pub mod thin;
mod uring;
pub mod uuid_text;

pub use buf::IoBuf;
pub use device::BlockDevice;
pub use error::{BlockError, blocks_in, check_block_size, check_range, check_size};
pub use file::{FileDevice, FileOptions, IoEngine};
pub use ram::RamDevice;
pub use spec::{BackendSpec, format_size, parse_size};
