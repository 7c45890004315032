//! The closed-loop load generator every benchmark uses.
//!
//! A [`Driver`] knows how to issue one I/O; [`run`] holds the queue depth with a fixed number
//! of worker tasks, each keeping exactly one I/O outstanding (issue, wait, issue again), for a
//! warm-up followed by a measured window. Only completions inside the window are counted and
//! their latencies recorded, so IOPS is completions / window length; the process's CPU time
//! over the window is read too (CPU per I/O holds up better than IOPS on a busy machine).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::stats::{Recorder, Sample, process_cpu_time};

/// The kind of I/O a phase runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    /// The workload name used in reports.
    pub fn workload(self) -> &'static str {
        match self {
            Op::Read => "randread",
            Op::Write => "randwrite",
        }
    }
}

/// Something to put load on: a way to issue one I/O from one worker.
pub trait Driver: Send + Sync + 'static {
    /// Per-worker state (which connection, random state, buffers).
    type Worker: Send + 'static;

    /// State of worker `index` (of `workers`) for a phase of `op`s.
    fn worker(&self, index: usize, workers: usize, op: Op) -> Self::Worker;

    /// Issues one I/O and waits for it to complete.
    fn issue(&self, worker: &mut Self::Worker) -> impl Future<Output = Result<()>> + Send;
}

/// One phase of load.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub op: Op,
    /// Worker tasks, hence I/Os outstanding.
    pub workers: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub bytes_per_op: u64,
}

impl Phase {
    /// A measured phase of `op` with `workers` outstanding I/Os of `bytes_per_op`, timed by
    /// the `--warmup`/`--duration` options.
    pub fn of(load: &crate::cli::LoadArgs, op: Op, workers: usize, bytes_per_op: u64) -> Phase {
        Phase {
            op,
            workers,
            warmup: load.warmup,
            duration: load.duration,
            bytes_per_op,
        }
    }

    /// A short phase for unit tests: 8 workers, 4 KiB, 20 ms warm-up, 200 ms measured.
    #[cfg(test)]
    pub fn short(op: Op) -> Phase {
        Phase {
            op,
            workers: 8,
            warmup: Duration::from_millis(20),
            duration: Duration::from_millis(200),
            bytes_per_op: 4096,
        }
    }
}

/// Runs one phase against `driver`. The first failed I/O stops the phase and is returned.
pub async fn run<D: Driver>(driver: &Arc<D>, phase: &Phase) -> Result<Sample> {
    let measure_from = Instant::now() + phase.warmup;
    let end = measure_from + phase.duration;
    let op = phase.op;
    let mut tasks = JoinSet::new();
    for index in 0..phase.workers {
        let driver = driver.clone();
        let mut worker = driver.worker(index, phase.workers, op);
        tasks.spawn(async move {
            let mut rec = Recorder::new()?;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                driver
                    .issue(&mut worker)
                    .await
                    .with_context(|| format!("worker {index}: {} failed", op.workload()))?;
                let done = Instant::now();
                if done >= measure_from && done <= end {
                    rec.record(done - start);
                }
            }
            Ok::<_, anyhow::Error>(rec)
        });
    }

    // Process CPU time over the measured window, read by a task that wakes at its edges.
    let cpu_probe = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from).await;
        let before = process_cpu_time();
        tokio::time::sleep_until(end).await;
        Some(process_cpu_time()?.saturating_sub(before?))
    });

    let mut total = Recorder::new()?;
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined
            .map_err(|e| anyhow!("a load worker died: {e}"))
            .and_then(|r| r);
        match outcome {
            Ok(rec) => total.merge(&rec)?,
            Err(e) => {
                tasks.abort_all();
                cpu_probe.abort();
                return Err(e);
            }
        }
    }
    let cpu = cpu_probe.await.ok().flatten().unwrap_or_default();
    Ok(Sample {
        recorder: total,
        cpu,
        window: phase.duration,
        bytes_per_op: phase.bytes_per_op,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Completes each I/O after a fixed delay; fails once `fail_after` I/Os were issued.
    struct Sleeper {
        delay: Duration,
        issued: AtomicUsize,
        fail_after: usize,
    }

    impl Driver for Sleeper {
        type Worker = ();

        fn worker(&self, _: usize, _: usize, _: Op) {}

        async fn issue(&self, _: &mut ()) -> Result<()> {
            if self.issued.fetch_add(1, Ordering::Relaxed) >= self.fail_after {
                anyhow::bail!("injected failure");
            }
            tokio::time::sleep(self.delay).await;
            Ok(())
        }
    }

    fn phase(workers: usize) -> Phase {
        Phase {
            op: Op::Read,
            workers,
            warmup: Duration::from_millis(100),
            duration: Duration::from_secs(1),
            bytes_per_op: 4096,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn holds_the_queue_depth_for_the_window() {
        let d = Arc::new(Sleeper {
            delay: Duration::from_millis(10),
            issued: AtomicUsize::new(0),
            fail_after: usize::MAX,
        });
        let s = run(&d, &phase(4)).await.unwrap();
        // 4 workers x 1 s / 10 ms = 400 completions in the window (paused clock: exact).
        let ops = s.recorder.ops();
        assert!((396..=404).contains(&ops), "ops {ops}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_io_ends_the_phase() {
        let d = Arc::new(Sleeper {
            delay: Duration::from_millis(10),
            issued: AtomicUsize::new(0),
            fail_after: 50,
        });
        let err = run(&d, &phase(2)).await.err().unwrap();
        assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
    }
}
