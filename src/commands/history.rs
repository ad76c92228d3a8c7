//! `cohort history`: every config applied to a store and every admin pause,
//! in time order; or, for one unit, what it was assigned, when, and under
//! which rule. Read-only, safe while cohort runs on the store.

use std::path::Path;

use super::Outcome;
use crate::assign::ledger::Ledger;
use crate::assign::store::{Assignment, RedisOptions, RedisStore, StoreView};
use crate::observe::time::rfc3339_millis;

/// `cohort history`: every applied config, or what one unit saw.
pub fn history_command(store: &Path, unit: Option<(&str, &str)>) -> Outcome {
    let view = match StoreView::open(store) {
        Ok(v) => v,
        Err(e) => return Outcome::fail(e),
    };
    let found = unit.and_then(|(x, u)| view.get(x, u.as_bytes()));
    render(&view.ledger(), &store.display().to_string(), unit, found)
}

/// `cohort history` on the shared store of a `kind: redis` config: the
/// ledger as Redis holds it, and a unit's assignment read from Redis.
pub async fn history_redis(opts: RedisOptions, unit: Option<(&str, &str)>) -> Outcome {
    let store = match RedisStore::open(opts).await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(format!("cannot read the Redis store: {e}")),
    };
    let ledger = store.ledger();
    let mut found = None;
    if let Some((x, u)) = unit {
        if let Some(l) = ledger.get(x) {
            match store
                .lookup(l.id, crate::assign::hash::unit_key(x, u.as_bytes()))
                .await
            {
                Ok(a) => found = a,
                Err(e) => return Outcome::fail(e),
            }
        }
    }
    render(&ledger, "the Redis store", unit, found)
}

fn render(
    ledger: &Ledger,
    store: &str,
    unit: Option<(&str, &str)>,
    found: Option<Assignment>,
) -> Outcome {
    let mut out = String::new();
    match unit {
        None => {
            // Applied configs and admin pauses are journaled as they happen
            // but kept in two lists: merge them by time (RFC 3339 UTC with
            // milliseconds sorts as text; the sort is stable, so a config
            // and a pause in the same millisecond keep the journal's order
            // within each list, configs first).
            let mut entries: Vec<(&str, String)> = Vec::new();
            for h in &ledger.history {
                let mut text = format!(
                    "{}  config {}  ({})\n",
                    h.applied_at, h.config_version, h.trigger
                );
                for line in h.summary.lines().skip(1) {
                    text.push_str(&format!("    {line}\n"));
                }
                entries.push((&h.applied_at, text));
            }
            for (experiment, paused, at) in &ledger.pause_log {
                let what = if *paused { "PAUSED" } else { "resumed" };
                entries.push((
                    at,
                    format!("{at}  {experiment} {what} through the admin API\n"),
                ));
            }
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (_, text) in entries {
                out.push_str(&text);
            }
            if ledger.history.is_empty() {
                out.push_str("no config has been applied to this store yet\n");
            }
        }
        Some((experiment, unit)) => {
            let Some(x) = ledger.get(experiment) else {
                return Outcome::fail(format!("no experiment {experiment:?} in {store}"));
            };
            match found {
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
                            "  epoch {} began {} (config {}): salt {:?}, unit_header {}, coverage {}%, weights {}{}\n",
                            r.epoch.0,
                            r.started_at,
                            r.config_version,
                            r.rule.salt,
                            r.rule.unit_header,
                            r.rule.coverage,
                            weights.join(" "),
                            // Only a vendor scheme is named: a default rule
                            // reads as it always did.
                            if r.rule.bucketing.is_cohort() {
                                String::new()
                            } else {
                                format!(
                                    ", bucketing {}",
                                    serde_json::to_string(&r.rule.bucketing)
                                        .expect("a rule serializes")
                                )
                            }
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
