//! Output: one `ROUND` line per phase as it ends, then a human table of the medians and one
//! `RESULT` line per workload. `ROUND` and `RESULT` lines are `key=value` pairs separated by
//! spaces, meant for `grep ^RESULT` and friends; the table is for people.

use std::fmt::Write as _;

use crate::compare::{Comparison, Labels};
use crate::stats::{Summary, Transfer};

/// Prints one phase's figures.
pub fn round(workload: &str, side: &str, round: usize, s: &Summary) {
    println!(
        "ROUND workload={workload} side={side} round={round} ops={} iops={:.0} mib_s={:.1} \
         p50_us={:.1} p99_us={:.1} p999_us={:.1} cpu_us_per_io={:.2} cpu_cores={:.2}",
        s.ops, s.iops, s.mib_s, s.p50_us, s.p99_us, s.p999_us, s.cpu_us_per_op, s.cpu_cores
    );
}

/// The human table: per workload, each side's medians (and its IOPS range over the rounds),
/// then the ratios and the added latency.
pub fn table(labels: Labels, comparisons: &[Comparison]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<9} {:>10} {:>8} {:>9} {:>9} {:>9} {:>10} {:>6}  {:<21}",
        "workload",
        "side",
        "IOPS",
        "MiB/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "CPU µs/IO",
        "cores",
        "IOPS min..max"
    );
    for c in comparisons {
        for (side, med, rounds) in [
            (labels.reference, &c.reference, &c.reference_rounds),
            (labels.candidate, &c.candidate, &c.candidate_rounds),
        ] {
            let (lo, hi) = rounds.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), s| {
                (lo.min(s.iops), hi.max(s.iops))
            });
            let _ = writeln!(
                out,
                "{:<10} {:<9} {:>10.0} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>6.2}  {:.0}..{:.0}",
                c.workload,
                side,
                med.iops,
                med.mib_s,
                med.p50_us,
                med.p99_us,
                med.p999_us,
                med.cpu_us_per_op,
                med.cpu_cores,
                lo,
                hi
            );
        }
        let _ = writeln!(
            out,
            "{:<10} {}/{} IOPS = {:.3}   CPU per I/O = {:.2}x   added p50 = {:+.1} µs   added p99 = {:+.1} µs",
            c.workload,
            labels.candidate,
            labels.reference,
            c.iops_ratio(),
            c.cpu_ratio(),
            c.added_p50_us(),
            c.added_p99_us()
        );
    }
    out
}

/// One `RESULT` line per workload: `params` (the run's settings) first, then each side's
/// medians, the IOPS ratio of the medians, the added p50/p99 latency and the CPU time per
/// I/O of each side with their ratio.
pub fn results(
    labels: Labels,
    params: &[(&str, String)],
    comparisons: &[Comparison],
) -> Vec<String> {
    comparisons
        .iter()
        .map(|c| {
            let mut line = format!("RESULT workload={}", c.workload);
            for (k, v) in params {
                let _ = write!(line, " {k}={v}");
            }
            let (r, t) = (labels.reference, labels.candidate);
            let _ = write!(
                line,
                " {t}_iops={:.0} {r}_iops={:.0} ratio={:.3} {t}_mib_s={:.1} {r}_mib_s={:.1} \
                 {t}_p50_us={:.1} {r}_p50_us={:.1} added_p50_us={:.1} \
                 {t}_p99_us={:.1} {r}_p99_us={:.1} added_p99_us={:.1} {t}_p999_us={:.1} {r}_p999_us={:.1} \
                 {t}_cpu_us_per_io={:.2} {r}_cpu_us_per_io={:.2} cpu_ratio={:.3} {t}_cpu_cores={:.2} {r}_cpu_cores={:.2}",
                c.candidate.iops,
                c.reference.iops,
                c.iops_ratio(),
                c.candidate.mib_s,
                c.reference.mib_s,
                c.candidate.p50_us,
                c.reference.p50_us,
                c.added_p50_us(),
                c.candidate.p99_us,
                c.reference.p99_us,
                c.added_p99_us(),
                c.candidate.p999_us,
                c.reference.p999_us,
                c.candidate.cpu_us_per_op,
                c.reference.cpu_us_per_op,
                c.cpu_ratio(),
                c.candidate.cpu_cores,
                c.reference.cpu_cores,
            );
            line
        })
        .collect()
}

/// Prints one timed transfer (a `rebuild` round of either side).
pub fn transfer_round(bench: &str, side: &str, round: usize, t: &Transfer) -> String {
    format!(
        "ROUND bench={bench} side={side} round={round} bytes={} secs={:.3} mib_s={:.1} \
         cpu_ms_per_gib={:.1} cpu_cores={:.2}",
        t.bytes,
        t.secs,
        t.mib_s(),
        t.cpu_ms_per_gib(),
        t.cpu_cores()
    )
}

/// The `rebuild` summary: a short table of the medians (with each side's MiB/s range over the
/// rounds) and the `RESULT` line. `reference` and `candidate` are every round of each side.
pub fn transfer_result(
    labels: Labels,
    params: &[(&str, String)],
    reference: &[Transfer],
    candidate: &[Transfer],
) -> (String, String) {
    let (r, c) = (Transfer::median(reference), Transfer::median(candidate));
    let ratio = if r.mib_s() > 0.0 {
        c.mib_s() / r.mib_s()
    } else {
        0.0
    };
    let cpu_ratio = if r.cpu_ms_per_gib() > 0.0 {
        c.cpu_ms_per_gib() / r.cpu_ms_per_gib()
    } else {
        0.0
    };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<9} {:>12} {:>9} {:>9} {:>12} {:>6}  {:<17}",
        "side", "bytes", "secs", "MiB/s", "CPU ms/GiB", "cores", "MiB/s min..max"
    );
    for (side, med, rounds) in [
        (labels.reference, &r, reference),
        (labels.candidate, &c, candidate),
    ] {
        let (lo, hi) = rounds.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
            (lo.min(t.mib_s()), hi.max(t.mib_s()))
        });
        let _ = writeln!(
            table,
            "{:<9} {:>12} {:>9.3} {:>9.1} {:>12.1} {:>6.2}  {:.1}..{:.1}",
            side,
            med.bytes,
            med.secs,
            med.mib_s(),
            med.cpu_ms_per_gib(),
            med.cpu_cores(),
            lo,
            hi
        );
    }
    let _ = writeln!(
        table,
        "{}/{} throughput = {:.3}   CPU per byte = {:.2}x",
        labels.candidate, labels.reference, ratio, cpu_ratio
    );
    let (rl, cl) = (labels.reference, labels.candidate);
    let mut line = String::from("RESULT");
    for (k, v) in params {
        let _ = write!(line, " {k}={v}");
    }
    let _ = write!(
        line,
        " {cl}_mib_s={:.1} {rl}_mib_s={:.1} ratio={:.3} {cl}_secs={:.3} {rl}_secs={:.3} \
         {cl}_cpu_ms_per_gib={:.1} {rl}_cpu_ms_per_gib={:.1} cpu_ratio={:.3} {cl}_cpu_cores={:.2} {rl}_cpu_cores={:.2}",
        c.mib_s(),
        r.mib_s(),
        ratio,
        c.secs,
        r.secs,
        c.cpu_ms_per_gib(),
        r.cpu_ms_per_gib(),
        cpu_ratio,
        c.cpu_cores(),
        r.cpu_cores()
    );
    (table, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_lines() {
        let t = |secs: f64| Transfer {
            bytes: 256 << 20,
            secs,
            cpu_secs: secs / 2.0,
        };
        assert_eq!(
            transfer_round("rebuild", "tcp", 2, &t(0.25)),
            "ROUND bench=rebuild side=tcp round=2 bytes=268435456 secs=0.250 mib_s=1024.0 \
             cpu_ms_per_gib=500.0 cpu_cores=0.50"
        );
        let labels = Labels {
            reference: "tcp",
            candidate: "rebuild",
        };
        let (table, line) = transfer_result(
            labels,
            &[("bench", "rebuild".into()), ("size", "268435456".into())],
            &[t(0.25), t(0.5), t(0.2)],
            &[t(1.0), t(2.0), t(0.5)],
        );
        assert!(
            line.starts_with(
                "RESULT bench=rebuild size=268435456 rebuild_mib_s=256.0 tcp_mib_s=1024.0 ratio=0.250 \
                 rebuild_secs=1.000 tcp_secs=0.250 rebuild_cpu_ms_per_gib=2000.0 tcp_cpu_ms_per_gib=500.0 \
                 cpu_ratio=4.000 "
            ),
            "{line}"
        );
        assert!(table.contains("rebuild/tcp throughput = 0.250"), "{table}");
        assert!(table.contains("512.0..1280.0"), "{table}");
    }

    fn summary(iops: f64, p50: f64) -> Summary {
        Summary {
            ops: 1,
            iops,
            mib_s: iops / 256.0,
            p50_us: p50,
            p99_us: p50 * 2.0,
            p999_us: p50 * 3.0,
            cpu_us_per_op: 10.0,
            cpu_cores: 1.5,
        }
    }

    #[test]
    fn result_line_carries_the_ratio_and_added_latency() {
        let c = Comparison {
            workload: "randread",
            reference_rounds: vec![summary(100_000.0, 100.0)],
            candidate_rounds: vec![summary(50_000.0, 150.0)],
            reference: summary(100_000.0, 100.0),
            candidate: summary(50_000.0, 150.0),
        };
        let labels = Labels {
            reference: "baseline",
            candidate: "target",
        };
        let lines = results(labels, &[("qd", "32".into())], std::slice::from_ref(&c));
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert!(
            l.starts_with(
                "RESULT workload=randread qd=32 target_iops=50000 baseline_iops=100000 ratio=0.500 "
            ),
            "{l}"
        );
        assert!(l.contains(" added_p50_us=50.0 "), "{l}");
        assert!(l.contains(" added_p99_us=100.0 "), "{l}");
        let t = table(labels, &[c]);
        assert!(t.contains("target/baseline IOPS = 0.500"), "{t}");
    }
}
