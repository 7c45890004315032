//! Transport and controller limits the target advertises, and the resource limits and
//! timeouts that keep one hostile or stuck peer from exhausting the process (memory per
//! connection, connections per address and in total, and how long the target waits on a
//! peer).

use std::time::Duration;

use crate::auth::HostKeys;

/// Limits and timings of the target. The defaults suit the Linux host and the benchmark.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// Largest data transfer of one command (MDTS), in bytes: a power of two multiple of 4 KiB.
    /// Every command's SGL data length is checked against it before anything is allocated.
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
    /// Memory budget of one connection, in bytes: data of the commands it has executing or
    /// waiting to be written to its socket (read data, write data being executed). Over it,
    /// the target stops reading new PDUs from that connection until its replies drain; write
    /// data requested by R2T is held to the same budget (further R2Ts wait). Never less than
    /// one `max_data_transfer`.
    pub max_connection_buffer: usize,
    /// Connections served at once, in total; further ones are closed at accept.
    pub max_connections: usize,
    /// Connections served at once from one peer IP address.
    pub max_connections_per_address: usize,
    /// How long a new connection may take to send its ICReq.
    pub ic_timeout: Duration,
    /// How long an initialized connection may take to bind a queue with a successful Connect.
    pub connect_timeout: Duration,
    /// How long a queue that must authenticate (DH-HMAC-CHAP) may take, from its Connect
    /// response to the end of the transaction; past it the connection is closed.
    pub auth_timeout: Duration,
    /// How long the host may take to send the data an R2T asked for, and to finish a PDU
    /// whose header has arrived.
    pub data_timeout: Duration,
    /// How long a write to a host's socket may make no progress (the host does not read)
    /// before the connection is closed.
    pub drain_timeout: Duration,
    /// DH-HMAC-CHAP keys of hosts that must authenticate on every subsystem of the target
    /// (a subsystem's own keys for a host take precedence); replaced at run time with
    /// [`crate::Target::set_default_host_keys`].
    pub host_keys: HostKeys,
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
            max_connection_buffer: 4 << 20,
            max_connections: 1024,
            max_connections_per_address: 128,
            ic_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            host_keys: HostKeys::new(),
        }
    }
}

impl TargetOptions {
    /// MDTS as advertised: log2 of the transfer size in 4 KiB units.
    pub fn mdts(&self) -> u8 {
        let pages = (self.max_data_transfer / 4096).max(1);
        pages.ilog2() as u8
    }

    /// The per-connection budget actually enforced: at least one maximum transfer, so that
    /// any single valid command can always proceed.
    pub fn connection_budget(&self) -> usize {
        self.max_connection_buffer
            .max(self.max_data_transfer as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_at_least_one_transfer() {
        let o = TargetOptions {
            max_connection_buffer: 0,
            ..Default::default()
        };
        assert_eq!(o.connection_budget(), 128 * 1024);
        assert_eq!(TargetOptions::default().connection_budget(), 4 << 20);
        assert_eq!(TargetOptions::default().mdts(), 5);
    }
}
