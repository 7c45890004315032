//! Measurements: a per-worker [`Recorder`] (an HDR latency histogram and an operation count),
//! the merged [`Sample`] of one phase, and its [`Summary`] (IOPS, MiB/s, p50/p99/p99.9 latency,
//! process CPU time per operation), plus the field-wise median over rounds.

use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// Highest latency the histograms track exactly (longer ones are clamped): 60 s in ns.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Significant decimal digits kept by the histograms.
const SIGFIGS: u8 = 3;

/// Latencies and completions of one worker (or, merged, of one phase).
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Recorder {
    pub fn new() -> Result<Recorder> {
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGFIGS)
            .context("creating a latency histogram")?;
        Ok(Recorder { hist })
    }

    /// Records one completed operation that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(ns);
    }

    /// Adds another recorder's operations to this one.
    pub fn merge(&mut self, other: &Recorder) -> Result<()> {
        self.hist
            .add(&other.hist)
            .context("merging latency histograms")
    }

    /// Operations recorded.
    pub fn ops(&self) -> u64 {
        self.hist.len()
    }
}

/// What one phase measured: every completion inside the measured window.
pub struct Sample {
    pub recorder: Recorder,
    /// Length of the measured window.
    pub window: Duration,
    /// Bytes moved per operation.
    pub bytes_per_op: u64,
    /// CPU time (user + system) the whole process used during the window.
    pub cpu: Duration,
}

/// The figures reported for one phase (or the medians over rounds).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub ops: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Process CPU time per operation, in µs (both sides of a loopback run count).
    pub cpu_us_per_op: f64,
    /// Cores the process kept busy on average (CPU time / window).
    pub cpu_cores: f64,
}

impl Summary {
    pub fn of(sample: &Sample) -> Summary {
        let h = &sample.recorder.hist;
        let secs = sample.window.as_secs_f64();
        let ops = sample.recorder.ops();
        let iops = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
        let us = |q: f64| {
            if ops == 0 {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1e3
            }
        };
        Summary {
            ops,
            iops,
            mib_s: iops * sample.bytes_per_op as f64 / (1024.0 * 1024.0),
            p50_us: us(0.50),
            p99_us: us(0.99),
            p999_us: us(0.999),
            cpu_us_per_op: if ops == 0 {
                0.0
            } else {
                sample.cpu.as_secs_f64() * 1e6 / ops as f64
            },
            cpu_cores: if secs > 0.0 {
                sample.cpu.as_secs_f64() / secs
            } else {
                0.0
            },
        }
    }

    /// The field-wise median of several summaries (each figure's own median).
    pub fn median(all: &[Summary]) -> Summary {
        let m = |f: fn(&Summary) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
        Summary {
            ops: m(|s| s.ops as f64).round() as u64,
            iops: m(|s| s.iops),
            mib_s: m(|s| s.mib_s),
            p50_us: m(|s| s.p50_us),
            p99_us: m(|s| s.p99_us),
            p999_us: m(|s| s.p999_us),
            cpu_us_per_op: m(|s| s.cpu_us_per_op),
            cpu_cores: m(|s| s.cpu_cores),
        }
    }
}

/// One timed bulk transfer (a rebuild or a TCP stream): bytes moved, wall time, process CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Transfer {
    pub bytes: u64,
    pub secs: f64,
    pub cpu_secs: f64,
}

impl Transfer {
    /// Throughput in MiB/s.
    pub fn mib_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 / (1024.0 * 1024.0) / self.secs
        } else {
            0.0
        }
    }

    /// Process CPU time per GiB moved, in ms.
    pub fn cpu_ms_per_gib(&self) -> f64 {
        if self.bytes > 0 {
            self.cpu_secs * 1e3 * (1u64 << 30) as f64 / self.bytes as f64
        } else {
            0.0
        }
    }

    /// Cores the process kept busy on average.
    pub fn cpu_cores(&self) -> f64 {
        if self.secs > 0.0 {
            self.cpu_secs / self.secs
        } else {
            0.0
        }
    }

    /// The field-wise median over rounds.
    pub fn median(all: &[Transfer]) -> Transfer {
        let m = |f: fn(&Transfer) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
        Transfer {
            bytes: m(|t| t.bytes as f64).round() as u64,
            secs: m(|t| t.secs),
            cpu_secs: m(|t| t.cpu_secs),
        }
    }
}

/// CPU time (user + system) used so far by this process, or `None` if it cannot be read.
pub fn process_cpu_time() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the `rusage` it is given a valid pointer to, and only reports
    // success once it has.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised (all-zero is a valid `rusage`) and filled in by the call above.
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Some(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// The median of `values` (the mean of the middle two for an even count; 0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn summary_of_a_sample() {
        let mut r = Recorder::new().unwrap();
        for us in 1..=1000u64 {
            r.record(Duration::from_micros(us));
        }
        let mut other = Recorder::new().unwrap();
        other.record(Duration::from_secs(120)); // clamped, still counted
        r.merge(&other).unwrap();
        assert_eq!(r.ops(), 1001);
        let s = Summary::of(&Sample {
            recorder: r,
            window: Duration::from_secs(2),
            bytes_per_op: 1 << 20,
            cpu: Duration::from_millis(1001),
        });
        assert_eq!(s.ops, 1001);
        assert!((s.iops - 500.5).abs() < 1e-9);
        assert!((s.mib_s - 500.5).abs() < 1e-9);
        assert!((s.p50_us - 501.0).abs() < 1.0, "p50 {}", s.p50_us);
        assert!((s.p99_us - 991.0).abs() < 1.0, "p99 {}", s.p99_us);
        assert!((s.cpu_us_per_op - 1000.0).abs() < 1e-6);
        assert!((s.cpu_cores - 0.5005).abs() < 1e-9);
    }

    #[test]
    fn cpu_time_advances() {
        let a = process_cpu_time().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_time().unwrap() > a);
    }

    #[test]
    fn transfers() {
        let t = Transfer {
            bytes: 256 << 20,
            secs: 0.5,
            cpu_secs: 0.25,
        };
        assert!((t.mib_s() - 512.0).abs() < 1e-9);
        assert!((t.cpu_ms_per_gib() - 1000.0).abs() < 1e-9);
        assert!((t.cpu_cores() - 0.5).abs() < 1e-9);
        assert_eq!(Transfer::default().mib_s(), 0.0);
        let m = Transfer::median(&[
            t,
            Transfer { secs: 2.0, ..t },
            Transfer {
                secs: 1.0,
                cpu_secs: 1.0,
                ..t
            },
        ]);
        assert_eq!((m.bytes, m.secs, m.cpu_secs), (256 << 20, 1.0, 0.25));
    }

    #[test]
    fn median_summary_is_field_wise() {
        let a = Summary {
            ops: 1,
            iops: 10.0,
            mib_s: 1.0,
            p50_us: 9.0,
            p99_us: 1.0,
            p999_us: 1.0,
            ..Default::default()
        };
        let b = Summary {
            ops: 2,
            iops: 30.0,
            mib_s: 3.0,
            p50_us: 1.0,
            p99_us: 2.0,
            p999_us: 2.0,
            ..Default::default()
        };
        let c = Summary {
            ops: 3,
            iops: 20.0,
            mib_s: 2.0,
            p50_us: 5.0,
            p99_us: 3.0,
            p999_us: 3.0,
            ..Default::default()
        };
        let m = Summary::median(&[a, b, c]);
        assert_eq!(
            m,
            Summary {
                ops: 2,
                iops: 20.0,
                mib_s: 2.0,
                p50_us: 5.0,
                p99_us: 2.0,
                p999_us: 2.0,
                ..Default::default()
            }
        );
    }
}
