//! Transport and controller limits the target advertises.

use std::time::Duration;

/// Limits and timings of the target. The defaults suit the Linux host and the benchmark.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// Largest data transfer of one command (MDTS), in bytes: a power of two multiple of 4 KiB.
    pub max_data_transfer: u32,
    /// Largest H2CData PDU payload the host may send (MAXH2CDATA), a multiple of 4, >= 4096.
    pub max_h2c_data: u32,
    /// In-capsule data accepted on I/O queues (IOCCSZ = 64 + this, in 16-byte units).
    pub in_capsule_data: u32,
    /// In-capsule data accepted on admin queues (the Linux host sends up to 8 KiB).
    pub admin_in_capsule_data: u32,
    /// Maximum I/O queue entries (CAP.MQES + 1).
    pub max_queue_entries: u16,
    /// Maximum admin queue entries.
    pub max_admin_queue_entries: u16,
    /// Maximum I/O queues per controller.
    pub max_io_queues: u16,
    /// Extra time past KATO before a silent host's controller is torn down.
    pub keep_alive_grace: Duration,
    /// Largest C2HData PDU payload the target sends.
    pub max_c2h_data: u32,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            max_data_transfer: 128 * 1024,
            max_h2c_data: 128 * 1024,
            in_capsule_data: 8192,
            admin_in_capsule_data: 8192,
            max_queue_entries: 128,
            max_admin_queue_entries: 32,
            max_io_queues: 64,
            keep_alive_grace: Duration::from_millis(500),
            max_c2h_data: 128 * 1024,
        }
    }
}

impl TargetOptions {
    /// MDTS as advertised: log2 of the transfer size in 4 KiB units.
    pub fn mdts(&self) -> u8 {
        let pages = (self.max_data_transfer / 4096).max(1);
        pages.ilog2() as u8
    }
}
