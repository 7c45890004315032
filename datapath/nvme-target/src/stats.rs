//! Statistics kept with relaxed atomics on the I/O path and read as snapshots by the node
//! agent's metrics: per-namespace operation and byte counters and latency histograms, and
//! target-wide connection counters (connections served, and peers refused or disconnected
//! by the resource limits and timeouts of [`crate::TargetOptions`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in microseconds (the last bucket is +Inf).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000,
];

/// A fixed-bucket latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// Bucket counts (not cumulative) and the sum of observations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub counts: [u64; LATENCY_BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Counters of one namespace.
#[derive(Default)]
pub struct NamespaceStats {
    pub read_ops: AtomicU64,
    pub write_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flush_ops: AtomicU64,
    pub errors: AtomicU64,
    pub read_latency: Histogram,
    pub write_latency: Histogram,
}

/// A point-in-time copy of a namespace's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceStatsSnapshot {
    pub nqn: String,
    pub nsid: u32,
    pub read_ops: u64,
    pub write_ops: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub flush_ops: u64,
    pub errors: u64,
    pub read_latency: HistogramSnapshot,
    pub write_latency: HistogramSnapshot,
}

impl NamespaceStats {
    pub fn snapshot(&self, nqn: &str, nsid: u32) -> NamespaceStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NamespaceStatsSnapshot {
            nqn: nqn.to_string(),
            nsid,
            read_ops: l(&self.read_ops),
            write_ops: l(&self.write_ops),
            read_bytes: l(&self.read_bytes),
            write_bytes: l(&self.write_bytes),
            flush_ops: l(&self.flush_ops),
            errors: l(&self.errors),
            read_latency: self.read_latency.snapshot(),
            write_latency: self.write_latency.snapshot(),
        }
    }
}

/// Target-wide connection counters. Every refusal and forced disconnect is also logged.
#[derive(Default)]
pub struct TargetStats {
    /// Connections open now.
    pub connections_active: AtomicU64,
    /// Connections accepted and served since start.
    pub connections_accepted: AtomicU64,
    /// Connections closed at accept: the total limit was reached.
    pub refused_total_limit: AtomicU64,
    /// Connections closed at accept: the peer address's limit was reached.
    pub refused_address_limit: AtomicU64,
    /// Connections closed for not sending ICReq in time.
    pub ic_timeouts: AtomicU64,
    /// Connections closed for not completing a Connect in time.
    pub connect_timeouts: AtomicU64,
    /// Connections closed for not sending R2T data (or the rest of a PDU) in time.
    pub data_timeouts: AtomicU64,
    /// Connections closed because the host did not read its socket (writes made no progress
    /// for the drain timeout).
    pub drain_timeouts: AtomicU64,
    /// Connections terminated for having more commands outstanding than their queue size.
    pub queue_overflows: AtomicU64,
    /// Commands refused because a length from the wire exceeded the limits (MDTS).
    pub oversized_commands: AtomicU64,
    /// Connections terminated with a C2HTermReq for another protocol error (malformed PDUs).
    pub protocol_errors: AtomicU64,
    /// Times a connection's reader paused because its memory budget was used up.
    pub budget_stalls: AtomicU64,
}

/// A point-in-time copy of [`TargetStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetStatsSnapshot {
    pub connections_active: u64,
    pub connections_accepted: u64,
    pub refused_total_limit: u64,
    pub refused_address_limit: u64,
    pub ic_timeouts: u64,
    pub connect_timeouts: u64,
    pub data_timeouts: u64,
    pub drain_timeouts: u64,
    pub queue_overflows: u64,
    pub oversized_commands: u64,
    pub protocol_errors: u64,
    pub budget_stalls: u64,
}

impl TargetStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> TargetStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TargetStatsSnapshot {
            connections_active: l(&self.connections_active),
            connections_accepted: l(&self.connections_accepted),
            refused_total_limit: l(&self.refused_total_limit),
            refused_address_limit: l(&self.refused_address_limit),
            ic_timeouts: l(&self.ic_timeouts),
            connect_timeouts: l(&self.connect_timeouts),
            data_timeouts: l(&self.data_timeouts),
            drain_timeouts: l(&self.drain_timeouts),
            queue_overflows: l(&self.queue_overflows),
            oversized_commands: l(&self.oversized_commands),
            protocol_errors: l(&self.protocol_errors),
            budget_stalls: l(&self.budget_stalls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(11));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[LATENCY_BUCKETS_US.len()], 1);
        assert_eq!(s.count(), 4);
        assert_eq!(s.sum_us, 5 + 10 + 11 + 5_000_000);
    }
}
