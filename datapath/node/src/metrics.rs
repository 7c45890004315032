//! Prometheus metrics of the datapath, built from snapshots at scrape time: per-namespace
//! (volume) operations, bytes and latency histograms from the target, and its connection
//! counters (open connections, refusals by the connection limits, disconnects by timeouts,
//! budgets and queue-size violations); pool capacity and
//! usage, replica allocation, volume and per-replica state, and rebuild progress from the
//! storage.

use ferrite_block::mirror::ReplicaState;
use ferrite_target::Target;
use uuid::Uuid;

use crate::storage::{Storage, VolumeState};
use ferrite_target::stats::{HistogramSnapshot, LATENCY_BUCKETS_US, TargetStatsSnapshot};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(l: Vec<LabelPair>, v: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::default();
    m.set_label(l);
    m.set_counter(c);
    m
}

fn gauge(l: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(l);
    m.set_gauge(g);
    m
}

const REPLICA_STATES: [(ReplicaState, &str); 5] = [
    (ReplicaState::Healthy, "healthy"),
    (ReplicaState::Faulted, "faulted"),
    (ReplicaState::Rebuilding, "rebuilding"),
    (ReplicaState::Stale, "stale"),
    (ReplicaState::Connecting, "connecting"),
];

/// Pool, replica, volume state and rebuild families.
fn storage_families(storage: &Storage) -> Vec<MetricFamily> {
    let (mut cap, mut used, mut free) = (Vec::new(), Vec::new(), Vec::new());
    for p in storage.pools() {
        let l = labels(&[("pool", &p.name)]);
        cap.push(gauge(l.clone(), p.store.capacity_bytes() as f64));
        used.push(gauge(l.clone(), p.store.used_bytes() as f64));
        free.push(gauge(l, p.store.free_bytes() as f64));
    }
    let (mut alloc, mut size) = (Vec::new(), Vec::new());
    for r in storage.replicas() {
        let id = r.uuid.to_string();
        let info = r.volume.info();
        let l = labels(&[("replica", &id), ("pool", &r.pool)]);
        alloc.push(gauge(l.clone(), info.allocated_bytes as f64));
        size.push(gauge(l, info.size as f64));
    }
    let (mut vstate, mut rstate, mut done, mut total, mut rebuilt) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rec in storage.volume_records() {
        let Some(v) = storage.volume_view(rec.uuid) else {
            continue;
        };
        let vid = v.uuid.to_string();
        let current = v.state();
        for s in VolumeState::ALL {
            vstate.push(gauge(
                labels(&[("volume", &vid), ("state", s.name())]),
                if s == current { 1.0 } else { 0.0 },
            ));
        }
        let Some(st) = &v.status else { continue };
        rebuilt.push(counter(labels(&[("volume", &vid)]), st.rebuilt_bytes_total));
        for r in &st.replicas {
            let rid = Uuid::from_bytes(r.id).to_string();
            for (s, name) in REPLICA_STATES {
                let l = labels(&[("volume", &vid), ("replica", &rid), ("state", name)]);
                rstate.push(gauge(l, if s == r.state { 1.0 } else { 0.0 }));
            }
            let p = r.rebuild.as_ref().or(r.last_rebuild.as_ref());
            let l = labels(&[("volume", &vid), ("replica", &rid)]);
            done.push(gauge(
                l.clone(),
                p.map(|p| p.bytes_done).unwrap_or(0) as f64,
            ));
            total.push(gauge(l, p.map(|p| p.bytes_total).unwrap_or(0) as f64));
        }
    }
    vec![
        family(
            "ferrite_pool_capacity_bytes",
            "Bytes a pool can hold for replicas",
            MetricType::GAUGE,
            cap,
        ),
        family(
            "ferrite_pool_used_bytes",
            "Bytes of a pool allocated or reserved by replicas",
            MetricType::GAUGE,
            used,
        ),
        family(
            "ferrite_pool_free_bytes",
            "Bytes of a pool still free",
            MetricType::GAUGE,
            free,
        ),
        family(
            "ferrite_replica_size_bytes",
            "Size of a replica (including the mirror label reserve)",
            MetricType::GAUGE,
            size,
        ),
        family(
            "ferrite_replica_allocated_bytes",
            "Bytes of pool space a replica has allocated",
            MetricType::GAUGE,
            alloc,
        ),
        family(
            "ferrite_volume_state",
            "1 for the volume's current state, 0 for the others",
            MetricType::GAUGE,
            vstate,
        ),
        family(
            "ferrite_volume_replica_state",
            "1 for each volume replica's current state, 0 for the others",
            MetricType::GAUGE,
            rstate,
        ),
        family(
            "ferrite_volume_replica_rebuild_bytes_done",
            "Bytes done of the replica's current (or last) rebuild",
            MetricType::GAUGE,
            done,
        ),
        family(
            "ferrite_volume_replica_rebuild_bytes_total",
            "Bytes to do in the replica's current (or last) rebuild",
            MetricType::GAUGE,
            total,
        ),
        family(
            "ferrite_volume_rebuilt_bytes_total",
            "Bytes rebuilt onto the volume's replicas since it was assembled",
            MetricType::COUNTER,
            rebuilt,
        ),
    ]
}

/// The target's connection families.
fn target_families(s: &TargetStatsSnapshot) -> Vec<MetricFamily> {
    let refused = vec![
        counter(labels(&[("reason", "total_limit")]), s.refused_total_limit),
        counter(
            labels(&[("reason", "address_limit")]),
            s.refused_address_limit,
        ),
    ];
    let closed = [
        ("icreq_timeout", s.ic_timeouts),
        ("connect_timeout", s.connect_timeouts),
        ("data_timeout", s.data_timeouts),
        ("drain_timeout", s.drain_timeouts),
        ("queue_overflow", s.queue_overflows),
        ("protocol_error", s.protocol_errors),
    ]
    .iter()
    .map(|(reason, n)| counter(labels(&[("reason", reason)]), *n))
    .collect();
    vec![
        family(
            "ferrite_target_connections",
            "NVMe/TCP connections open",
            MetricType::GAUGE,
            vec![gauge(Vec::new(), s.connections_active as f64)],
        ),
        family(
            "ferrite_target_connections_accepted_total",
            "NVMe/TCP connections accepted",
            MetricType::COUNTER,
            vec![counter(Vec::new(), s.connections_accepted)],
        ),
        family(
            "ferrite_target_connections_refused_total",
            "NVMe/TCP connections refused at accept by a connection limit",
            MetricType::COUNTER,
            refused,
        ),
        family(
            "ferrite_target_connections_closed_total",
            "NVMe/TCP connections closed by the target for a timeout, a queue overflow or a protocol error",
            MetricType::COUNTER,
            closed,
        ),
        family(
            "ferrite_target_oversized_commands_total",
            "Commands refused because a length from the wire exceeded the transfer limit (MDTS)",
            MetricType::COUNTER,
            vec![counter(Vec::new(), s.oversized_commands)],
        ),
        family(
            "ferrite_target_budget_stalls_total",
            "Times a connection stopped reading because its memory budget was used up",
            MetricType::COUNTER,
            vec![counter(Vec::new(), s.budget_stalls)],
        ),
    ]
}

fn histogram(l: Vec<LabelPair>, h: &HistogramSnapshot) -> Metric {
    let mut cumulative = 0;
    let buckets = LATENCY_BUCKETS_US
        .iter()
        .zip(h.counts.iter())
        .map(|(bound, n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(*bound as f64 / 1e6);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut hist = Histogram::default();
    hist.set_sample_count(h.count());
    hist.set_sample_sum(h.sum_us as f64 / 1e6);
    hist.set_bucket(buckets);
    let mut m = Metric::default();
    m.set_label(l);
    m.set_histogram(hist);
    m
}

/// Renders every metric in the Prometheus text exposition format.
pub fn render(target: &Target, storage: &Storage) -> String {
    let stats = target.namespace_stats();
    let mut ops = Vec::new();
    let mut bytes = Vec::new();
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for s in &stats {
        let nsid = s.nsid.to_string();
        let base = [("nqn", s.nqn.as_str()), ("nsid", nsid.as_str())];
        for (op, n, b, h) in [
            ("read", s.read_ops, s.read_bytes, &s.read_latency),
            ("write", s.write_ops, s.write_bytes, &s.write_latency),
        ] {
            let l = labels(&[base[0], base[1], ("op", op)]);
            ops.push(counter(l.clone(), n));
            bytes.push(counter(l.clone(), b));
            lat.push(histogram(l, h));
        }
        ops.push(counter(
            labels(&[base[0], base[1], ("op", "flush")]),
            s.flush_ops,
        ));
        errors.push(counter(labels(&base), s.errors));
    }
    let mut families = vec![
        family(
            "ferrite_volume_ops_total",
            "I/O commands completed per namespace and operation",
            MetricType::COUNTER,
            ops,
        ),
        family(
            "ferrite_volume_bytes_total",
            "Bytes read or written per namespace",
            MetricType::COUNTER,
            bytes,
        ),
        family(
            "ferrite_volume_latency_seconds",
            "Time from command receipt to completion by the storage stack",
            MetricType::HISTOGRAM,
            lat,
        ),
        family(
            "ferrite_volume_errors_total",
            "I/O commands completed with an error status",
            MetricType::COUNTER,
            errors,
        ),
    ];
    families.extend(target_families(&target.stats()));
    // Families without samples are left out (an empty family is not valid exposition).
    families.extend(
        storage_families(storage)
            .into_iter()
            .filter(|f| !f.get_metric().is_empty()),
    );
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        return format!("# error encoding metrics: {e}\n");
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_counters_are_exported() {
        let s = TargetStatsSnapshot {
            connections_active: 3,
            connections_accepted: 10,
            refused_total_limit: 1,
            refused_address_limit: 2,
            drain_timeouts: 4,
            oversized_commands: 5,
            ..Default::default()
        };
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&target_families(&s), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            "ferrite_target_connections 3",
            "ferrite_target_connections_accepted_total 10",
            "ferrite_target_connections_refused_total{reason=\"total_limit\"} 1",
            "ferrite_target_connections_refused_total{reason=\"address_limit\"} 2",
            "ferrite_target_connections_closed_total{reason=\"drain_timeout\"} 4",
            "ferrite_target_oversized_commands_total 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
