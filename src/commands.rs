//! The offline and operator commands behind the CLI: `check`, `plan` and
//! `history`. Each returns its output and exit code; `main` only prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::admin::client::AdminClient;
use crate::admin::ConfigView;
use crate::assign::ledger::{ExperimentId, Ledger, UnitCounts, VariantId};
use crate::assign::store::StoreView;
use crate::config::{self, Config};
use crate::observe::time::{now_rfc3339, rfc3339_millis};
use crate::reload::plan::{plan, Previous};

/// What `cohort plan` compares the new config with.
pub enum PlanAgainst {
    /// Another config file, as if it were applied with no stored units.
    File(PathBuf),
    /// A store directory (the proxy may be running on it).
    Store(PathBuf),
    /// A running proxy's admin API.
    Admin { url: String, token: String },
}

/// `plan`'s output and exit code: 0 no change, 1 invalid or rejected,
/// 2 valid with changes.
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Outcome {
    fn fail(stderr: impl std::fmt::Display) -> Outcome {
        Outcome {
            stdout: String::new(),
            stderr: format!("{stderr}\n"),
            code: 1,
        }
    }
}

struct NoUnits;
impl UnitCounts for NoUnits {
    fn units(&self, _: ExperimentId, _: VariantId) -> u64 {
        0
    }
}

/// Unit counts as the admin API reports them, by name.
struct NamedCounts<'a> {
    ledger: &'a Ledger,
    units: &'a BTreeMap<String, BTreeMap<String, u64>>,
}

impl UnitCounts for NamedCounts<'_> {
    fn units(&self, e: ExperimentId, v: VariantId) -> u64 {
        let Some(x) = self.ledger.by_id(e) else {
            return 0;
        };
        let Some(name) = x.variants.get(usize::from(v)) else {
            return 0;
        };
        self.units
            .get(&x.name)
            .and_then(|m| m.get(name))
            .copied()
            .unwrap_or(0)
    }
}

pub async fn plan_command(new_path: &Path, against: PlanAgainst) -> Outcome {
    let new = match config::load_file(new_path) {
        Ok(c) => c,
        Err(e) => return Outcome::fail(e),
    };
    let now = now_rfc3339();
    let result = match &against {
        PlanAgainst::File(old_path) => {
            let old = match config::load_file(old_path) {
                Ok(c) => c,
                Err(e) => {
                    return Outcome::fail(format!("the config to compare against is invalid:\n{e}"))
                }
            };
            let mut ledger = Ledger::default();
            let first = match plan(&ledger, &NoUnits, None, &old, &now) {
                Ok(p) => p,
                Err(errors) => {
                    return Outcome::fail(config::ConfigErrors {
                        file: old_path.clone(),
                        errors,
                    })
                }
            };
            for ev in &first.events {
                ledger.apply(ev).expect("planned events apply");
            }
            let old_json = crate::reload::plan::canonical(&old);
            let version = old.version();
            plan(
                &ledger,
                &NoUnits,
                Some(Previous {
                    version: &version,
                    config: &old_json,
                }),
                &new,
                &now,
            )
        }
        PlanAgainst::Store(dir) => {
            let view = match StoreView::open(dir) {
                Ok(v) => v,
                Err(e) => return Outcome::fail(e),
            };
            let ledger = view.ledger();
            let previous = ledger.last_applied().map(|a| Previous {
                version: &a.config_version,
                config: &a.config,
            });
            plan(&ledger, &view, previous, &new, &now)
        }
        PlanAgainst::Admin { url, token } => {
            let client = AdminClient::new(url, token.clone());
            let view: ConfigView = match client
                .get("/admin/config")
                .await
                .map(serde_json::from_value)
            {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    return Outcome::fail(format!("unexpected /admin/config answer: {e}"))
                }
                Err(e) => return Outcome::fail(e),
            };
            let ledger = view.to_ledger();
            let counts = NamedCounts {
                ledger: &ledger,
                units: &view.units,
            };
            let previous = Some(Previous {
                version: &view.config_version,
                config: &view.config,
            });
            plan(&ledger, &counts, previous, &new, &now)
        }
    };
    match result {
        Err(errors) => Outcome::fail(format!(
            "the change would be rejected:\n{}",
            config::ConfigErrors {
                file: new_path.to_path_buf(),
                errors
            }
        )),
        Ok(p) => {
            let changed = p.changes_anything();
            let mut stdout = p.to_string();
            stdout.push_str(if changed {
                "plan: valid, with changes (exit 2)\n"
            } else {
                "plan: no change (exit 0)\n"
            });
            Outcome {
                stdout,
                stderr: String::new(),
                code: if changed { 2 } else { 0 },
            }
        }
    }
}

/// Where the admin API of `cfg` listens, and its token.
pub fn admin_of(cfg: &Config) -> Option<(String, String)> {
    cfg.admin
        .as_ref()
        .map(|a| (a.listen.to_string(), a.token.clone()))
}

/// `cohort history`: every applied config, or what one unit saw.
pub fn history_command(store: &Path, unit: Option<(&str, &str)>) -> Outcome {
    let view = match StoreView::open(store) {
        Ok(v) => v,
        Err(e) => return Outcome::fail(e),
    };
    let ledger = view.ledger();
    let mut out = String::new();
    match unit {
        None => {
            for h in &ledger.history {
                out.push_str(&format!(
                    "{}  config {}  ({})\n",
                    h.applied_at, h.config_version, h.trigger
                ));
                for line in h.summary.lines().skip(1) {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            if ledger.history.is_empty() {
                out.push_str("no config has been applied to this store yet\n");
            }
            for (experiment, paused, at) in &ledger.pause_log {
                let what = if *paused { "PAUSED" } else { "resumed" };
                out.push_str(&format!(
                    "{at}  {experiment} {what} through the admin API\n"
                ));
            }
        }
        Some((experiment, unit)) => {
            let Some(x) = ledger.get(experiment) else {
                return Outcome::fail(format!(
                    "no experiment {experiment:?} in {}",
                    store.display()
                ));
            };
            match view.get(experiment, unit.as_bytes()) {
                None => {
                    return Outcome {
                        stdout: format!("{unit:?} has no assignment in {experiment:?}\n"),
                        stderr: String::new(),
                        code: 1,
                    }
                }
                Some(a) => {
                    let seen =
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(a.first_seen.into());
                    let variant = x
                        .variants
                        .get(usize::from(a.variant))
                        .map_or("?", String::as_str);
                    out.push_str(&format!(
                        "{unit:?} in {experiment:?}: variant {variant}, epoch {}, first seen {}\n",
                        a.epoch.0,
                        rfc3339_millis(seen)
                    ));
                    if let Some(r) = x.epochs.iter().find(|e| e.epoch == a.epoch) {
                        let weights: Vec<String> = r
                            .rule
                            .variants
                            .iter()
                            .map(|v| format!("{}={}", v.name, v.weight))
                            .collect();
                        out.push_str(&format!(
                            "  epoch {} began {} (config {}): salt {:?}, unit_header {}, coverage {}%, weights {}\n",
                            r.epoch.0,
                            r.started_at,
                            r.config_version,
                            r.rule.salt,
                            r.rule.unit_header,
                            r.rule.coverage,
                            weights.join(" ")
                        ));
                    }
                    out.push_str(&format!("  current epoch: {}\n", x.current().epoch.0));
                }
            }
        }
    }
    Outcome {
        stdout: out,
        stderr: String::new(),
        code: 0,
    }
}
