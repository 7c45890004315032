//! Reference-versus-candidate comparison in alternating rounds.
//!
//! The two sides never run at the same time (they would compete for the same cores): each
//! round runs the reference's phase, then the candidate's, and [`alternate`] returns every
//! round's figures with their medians. Alternating spreads slow drifts of the machine (other
//! load, thermal or frequency changes) over both sides instead of penalising one.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::load::{self, Driver, Phase};
use crate::report;
use crate::stats::Summary;

/// The names of the two sides, used in reports and in the machine-readable keys.
#[derive(Clone, Copy, Debug)]
pub struct Labels {
    /// What the candidate is measured against (e.g. `baseline`).
    pub reference: &'static str,
    /// What is being measured (e.g. `target`).
    pub candidate: &'static str,
}

/// The outcome of one workload: every round of both sides and their medians.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub workload: &'static str,
    pub reference_rounds: Vec<Summary>,
    pub candidate_rounds: Vec<Summary>,
    pub reference: Summary,
    pub candidate: Summary,
}

impl Comparison {
    /// Candidate IOPS over reference IOPS (medians).
    pub fn iops_ratio(&self) -> f64 {
        if self.reference.iops > 0.0 {
            self.candidate.iops / self.reference.iops
        } else {
            0.0
        }
    }

    /// Candidate CPU time per I/O over the reference's (medians).
    pub fn cpu_ratio(&self) -> f64 {
        if self.reference.cpu_us_per_op > 0.0 {
            self.candidate.cpu_us_per_op / self.reference.cpu_us_per_op
        } else {
            0.0
        }
    }

    /// Median p50 latency the candidate adds over the reference, in µs.
    pub fn added_p50_us(&self) -> f64 {
        self.candidate.p50_us - self.reference.p50_us
    }

    /// Median p99 latency the candidate adds over the reference, in µs.
    pub fn added_p99_us(&self) -> f64 {
        self.candidate.p99_us - self.reference.p99_us
    }
}

/// Runs `rounds` pairs of phases (reference, then candidate), printing each as it ends.
pub async fn alternate<R: Driver, C: Driver>(
    reference: &Arc<R>,
    candidate: &Arc<C>,
    phase: &Phase,
    rounds: usize,
    labels: Labels,
) -> Result<Comparison> {
    let workload = phase.op.workload();
    let mut reference_rounds = Vec::with_capacity(rounds);
    let mut candidate_rounds = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let sample = load::run(reference, phase)
            .await
            .with_context(|| format!("{workload}: {} round {round}", labels.reference))?;
        let s = Summary::of(&sample);
        report::round(workload, labels.reference, round, &s);
        reference_rounds.push(s);

        let sample = load::run(candidate, phase)
            .await
            .with_context(|| format!("{workload}: {} round {round}", labels.candidate))?;
        let s = Summary::of(&sample);
        report::round(workload, labels.candidate, round, &s);
        candidate_rounds.push(s);
    }
    Ok(Comparison {
        workload,
        reference: Summary::median(&reference_rounds),
        candidate: Summary::median(&candidate_rounds),
        reference_rounds,
        candidate_rounds,
    })
}
