//! `cohort plan NEW`: a dry run of a config change against another file,
//! a store, or the running proxy's admin API (exit 0 no change, 1 invalid or
//! rejected, 2 valid with changes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Outcome;
use crate::admin::client::{AdminClient, ClientError};
use crate::admin::ConfigView;
use crate::assign::ledger::{ExperimentId, Ledger, UnitCounts, VariantId};
use crate::assign::store::StoreView;
use crate::config::{self, Config};
use crate::observe::time::now_rfc3339;
use crate::reload::plan::{plan, Previous};

/// What `cohort plan` compares the new config with.
pub enum PlanAgainst {
    /// Another config file, as if it were applied with no stored units.
    File(PathBuf),
    /// A store directory (the proxy may be running on it).
    Store(PathBuf),
    /// A running proxy's admin API.
    Admin {
        /// `host:port` or `http://host:port`.
        url: String,
        /// The bearer token.
        token: String,
    },
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

/// What to plan against, from the command line: `--against`, `--store`,
/// or else the admin API (`--admin`, default NEW's `admin.listen`) with
/// the token from `--token-file`, NEW's token, or `COHORT_ADMIN_TOKEN`.
pub fn plan_source(
    new: &Path,
    against: Option<PathBuf>,
    store: Option<PathBuf>,
    admin: Option<String>,
    token_file: Option<PathBuf>,
) -> Result<PlanAgainst, Outcome> {
    if let Some(f) = against {
        return Ok(PlanAgainst::File(f));
    }
    if let Some(s) = store {
        return Ok(PlanAgainst::Store(s));
    }
    let from_new = config::load_file(new).ok().as_ref().and_then(admin_of);
    let token = match token_file {
        Some(f) => match std::fs::read_to_string(&f) {
            Ok(t) => Some(t.trim_end().to_string()),
            Err(e) => return Err(Outcome::fail(format!("cannot read {}: {e}", f.display()))),
        },
        None => from_new
            .as_ref()
            .map(|a| a.1.clone())
            .or_else(|| std::env::var("COHORT_ADMIN_TOKEN").ok()),
    };
    match (admin.or_else(|| from_new.map(|a| a.0)), token) {
        (Some(url), Some(token)) => Ok(PlanAgainst::Admin { url, token }),
        _ => Err(Outcome::fail(
            "cohort plan: no admin API to ask (give --admin and --token-file, or --against OLD.yaml, or --store DIR)",
        )),
    }
}

/// Plans `new_path` against `against`.
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
                Err(e @ ClientError::Unreachable { .. }) => {
                    return Outcome::fail(format!(
                        "{e}\n(hint: to plan without a running proxy, use --store DIR or --against OLD.yaml)"
                    ))
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
