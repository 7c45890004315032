//! Prometheus metrics of the datapath, built from snapshots at scrape time: per-namespace
//! (volume) operations, bytes and latency histograms from the target.

use ferrite_target::Target;
use ferrite_target::stats::{HistogramSnapshot, LATENCY_BUCKETS_US};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};
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
pub fn render(target: &Target) -> String {
    let stats = target.namespace_stats();
    let mut ops = Vec::new();
    let mut bytes = Vec::new();
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for s in &stats {
        let nsid = s.nsid.to_string();
        let base = [("nqn", s.nqn.as_str()), ("nsid", nsid.as_str())];
        for (op, n, b, h) in [("read", s.read_ops, s.read_bytes, &s.read_latency), ("write", s.write_ops, s.write_bytes, &s.write_latency)] {
            let l = labels(&[base[0], base[1], ("op", op)]);
            ops.push(counter(l.clone(), n));
            bytes.push(counter(l.clone(), b));
            lat.push(histogram(l, h));
        }
        ops.push(counter(labels(&[base[0], base[1], ("op", "flush")]), s.flush_ops));
        errors.push(counter(labels(&base), s.errors));
    }
    let families = vec![
        family("ferrite_volume_ops_total", "I/O commands completed per namespace and operation", MetricType::COUNTER, ops),
        family("ferrite_volume_bytes_total", "Bytes read or written per namespace", MetricType::COUNTER, bytes),
        family(
            "ferrite_volume_latency_seconds",
            "Time from command receipt to completion by the storage stack",
            MetricType::HISTOGRAM,
            lat,
        ),
        family("ferrite_volume_errors_total", "I/O commands completed with an error status", MetricType::COUNTER, errors),
    ];
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        return format!("# error encoding metrics: {e}\n");
    }
    String::from_utf8(out).unwrap_or_default()
}
