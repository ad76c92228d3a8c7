//! The report's result, as the JSON output spells it (docs/report.md): per
//! experiment its epochs (SRM p-value, variants' figures) and its audit.

use serde::Serialize;

use super::srm::srm_p_value;
use super::tally::{Experiment, Tally};

/// The whole report.
#[derive(Serialize)]
pub(crate) struct Summary {
    pub(crate) lines: u64,
    pub(crate) malformed_lines: u64,
    /// No audit count and no SRM test failed.
    pub(crate) clean: bool,
    pub(crate) experiments: Vec<ExperimentSummary>,
}

#[derive(Serialize)]
pub(crate) struct ExperimentSummary {
    pub(crate) name: String,
    pub(crate) epochs: Vec<EpochSummary>,
    pub(crate) audit: AuditSummary,
}

#[derive(Serialize)]
pub(crate) struct EpochSummary {
    pub(crate) epoch: u32,
    /// `null` when there is nothing to test (epoch 0, one variant, no
    /// first exposure, or first exposures logged without `share`).
    pub(crate) srm_p_value: Option<f64>,
    pub(crate) variants: Vec<VariantSummary>,
}

#[derive(Serialize)]
pub(crate) struct VariantSummary {
    pub(crate) name: String,
    pub(crate) units: u64,
    pub(crate) first_exposures: u64,
    pub(crate) requests: u64,
    pub(crate) error_rate: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

#[derive(Serialize)]
pub(crate) struct AuditSummary {
    pub(crate) units_in_several_variants: u64,
    pub(crate) units_with_changed_epoch: u64,
    pub(crate) units_with_several_first_exposures: u64,
    pub(crate) lines_without_stamps: u64,
    pub(crate) examples: Vec<String>,
}

impl EpochSummary {
    /// Whether this epoch's SRM test fails at level `alpha`.
    pub(crate) fn srm_failed(&self, alpha: f64) -> bool {
        self.srm_p_value.is_some_and(|p| p < alpha)
    }
}

/// Sums up `tally`; an SRM p-value below `alpha` fails the report.
pub(crate) fn summarize(tally: &Tally, alpha: f64) -> Summary {
    let experiments: Vec<ExperimentSummary> = tally.experiments.iter().map(experiment).collect();
    let clean = tally.experiments.iter().all(|x| !x.audit.failed())
        && experiments
            .iter()
            .all(|x| !x.epochs.iter().any(|e| e.srm_failed(alpha)));
    Summary {
        lines: tally.lines,
        malformed_lines: tally.malformed,
        clean,
        experiments,
    }
}

fn experiment(x: &Experiment) -> ExperimentSummary {
    let mut epochs: Vec<EpochSummary> = Vec::new();
    for (&(epoch, v), cell) in &x.cells {
        if epochs.last().is_none_or(|e| e.epoch != epoch) {
            epochs.push(EpochSummary {
                epoch,
                srm_p_value: srm(x, epoch),
                variants: Vec::new(),
            });
        }
        let q = |q: f64| {
            (!cell.latency.is_empty()).then(|| cell.latency.value_at_quantile(q) as f64 / 1000.0)
        };
        epochs
            .last_mut()
            .expect("pushed")
            .variants
            .push(VariantSummary {
                name: x.variants[usize::from(v)].clone(),
                units: cell.units,
                first_exposures: cell.first_exposures,
                requests: cell.requests,
                error_rate: if cell.requests == 0 {
                    0.0
                } else {
                    cell.errors as f64 / cell.requests as f64
                },
                p50_ms: q(0.5),
                p95_ms: q(0.95),
                p99_ms: q(0.99),
            });
    }
    let a = &x.audit;
    ExperimentSummary {
        name: x.name.clone(),
        epochs,
        audit: AuditSummary {
            units_in_several_variants: a.units_in_several_variants,
            units_with_changed_epoch: a.units_with_changed_epoch,
            units_with_several_first_exposures: a.units_with_several_first_exposures,
            lines_without_stamps: a.lines_without_stamps,
            examples: a.examples.clone(),
        },
    }
}

/// The SRM test of one epoch from the first exposures and their logged
/// shares. A variant whose share is logged nowhere (it had no first
/// exposure) is the rest of the shares, with a count of 0.
fn srm(x: &Experiment, epoch: u32) -> Option<f64> {
    if epoch == 0 || x.missing_share.get(&epoch).is_some_and(|n| *n > 0) {
        return None;
    }
    let mut counts = Vec::new();
    let mut shares = Vec::new();
    for (&(e, v), cell) in x.cells.range((epoch, 0)..=(epoch, u16::MAX)) {
        debug_assert_eq!(e, epoch);
        if cell.first_exposures == 0 {
            continue;
        }
        let (sum, n) = x.shares.get(&(epoch, v)).copied()?;
        counts.push(cell.first_exposures);
        shares.push(sum / n as f64);
    }
    let rest = 1.0 - shares.iter().sum::<f64>();
    if rest > 1e-6 {
        counts.push(0);
        shares.push(rest);
    }
    srm_p_value(&counts, &shares)
}
