//! RAID0 storage pools: a [`Raid0Pool`] stripes a [`crate::BlockDevice`] over member devices
//! and records its layout in on-disk labels, so the pool can be imported again (and wrong,
//! missing, foreign or stale disks refused) after a restart.
//!
//! Member layout (every member the same; `B` = label region = max(4 KiB, block size)):
//!
//! | bytes                                  | content                                      |
//! |----------------------------------------|----------------------------------------------|
//! | `0 .. 4096`                            | primary label ([`label`])                    |
//! | `4096 .. DATA_OFFSET` (1 MiB)          | reserved, zero                               |
//! | `DATA_OFFSET .. DATA_OFFSET+data_size` | data area: this member's stripes             |
//! | ... `size-4096 .. size`                | backup label (in the device's last block)    |
//!
//! Pool block `lba` lives in stripe `s = lba / stripe_blocks` on member `s % N`, at that
//! member's data-area stripe `s / N`. Capacity is `N * data_size`, with `data_size` the
//! smallest member's usable space (`size - DATA_OFFSET - B`) rounded down to whole stripes.
//!
//! Module map: `label.rs` = the label format, `store.rs` = reading and writing label copies
//! on a device, `map.rs` = the striping arithmetic, `pool.rs` = create, import and I/O,
//! `error.rs` = [`PoolError`].

mod error;
pub mod label;
mod map;
mod pool;
mod store;
#[cfg(test)]
mod tests;

pub use error::PoolError;
pub use label::{
    DATA_OFFSET, DEFAULT_STRIPE_SIZE, LABEL_SIZE, LabelError, MAX_MEMBERS, MAX_STRIPE_SIZE,
    MemberLabel, format_uuid,
};
pub use pool::Raid0Pool;
