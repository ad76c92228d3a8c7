//! Reporting a reload's outcome to the operator's log: the plan when it
//! was applied (with loud lines for resets and restart-only settings),
//! every error when it was not. Every trigger reports through here.

use super::apply::{ReloadError, Reloaded};
use super::plan::Decision;

/// Logs a reload's outcome: the plan when applied, every error when not.
pub(crate) fn report(trigger: &str, outcome: Result<Reloaded, ReloadError>) {
    match outcome {
        Ok(Reloaded::Unchanged) => tracing::info!(
            trigger,
            "config unchanged (same parsed content); nothing to apply"
        ),
        Ok(Reloaded::Applied {
            plan,
            restart_needed,
        }) => {
            tracing::info!(trigger, config_version = %plan.config_version, "config reloaded\n{plan}");
            if !restart_needed.is_empty() {
                tracing::warn!(fields = ?restart_needed, "these settings changed but take effect only after a restart");
            }
            for x in &plan.experiments {
                if matches!(x.decision, Decision::NewEpoch { reset: true, .. }) {
                    let dropped: u64 = x.units.iter().map(|(_, n)| n).sum();
                    tracing::warn!(experiment = %x.name, dropped, epoch = x.epoch_after.0, "EXPERIMENT RESET: every stored assignment was dropped; units are assigned afresh in the new epoch");
                }
            }
        }
        Err(e) => tracing::error!(trigger, "{e}"),
    }
}
