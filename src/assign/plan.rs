//! What applying a config would do to each experiment's epoch and stored
//! units: the reload decision table of DESIGN.md as one pure function.
//!
//! `plan(ledger, counts, new config)` either returns the [`Plan`] (the
//! ledger events to journal and a human summary) or every reason the config
//! must be rejected (for instance a removed variant that still holds units).
//! It is judged against the ledger, not against the previous file, so a
//! restart with an edited file is held to exactly the same rules.

use serde::Serialize;

use super::buckets::Weight;
use super::epoch::{diff, Epoch, RuleChange};
use super::ledger::{EpochRecord, ExperimentId, Ledger, LedgerEvent, VariantId};
use crate::config::{Config, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Never applied before: epoch 1.
    First,
    /// Rule unchanged: the epoch continues.
    Same,
    /// Rule changed, or an explicit reset: the next epoch.
    NewEpoch {
        changes: Vec<RuleChange>,
        reset: bool,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ExperimentPlan {
    pub name: String,
    pub decision: Decision,
    pub epoch_before: Option<Epoch>,
    pub epoch_after: Epoch,
    pub weights_before: Vec<(String, Weight)>,
    pub weights_after: Vec<(String, Weight)>,
    /// Stored units per variant name, before the change.
    pub units: Vec<(String, u64)>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub config_version: String,
    pub experiments: Vec<ExperimentPlan>,
    /// Experiments in the ledger that the new config no longer has.
    pub absent: Vec<String>,
    #[serde(skip)]
    pub events: Vec<LedgerEvent>,
}

impl Plan {
    pub fn changes_epochs(&self) -> bool {
        !self.events.is_empty()
    }
}

/// Stored units of (experiment, variant); from the store, a fixture in tests.
pub trait UnitCounts {
    fn units(&self, experiment: ExperimentId, variant: VariantId) -> u64;
}

pub fn plan(
    ledger: &Ledger,
    counts: &dyn UnitCounts,
    new: &Config,
    now: &str,
) -> Result<Plan, Vec<ConfigError>> {
    let version = new.version();
    let mut errors = Vec::new();
    let mut experiments = Vec::new();
    let mut events = Vec::new();
    let mut scratch = ledger.clone();

    for (i, x) in new.experiments.iter().enumerate() {
        let path = format!("experiments[{i}]");
        let rule = x.rule();
        let weights_after = rule
            .variants
            .iter()
            .map(|v| (v.name.clone(), v.weight))
            .collect();
        let prior = ledger.get(&x.name);
        let units: Vec<(String, u64)> = prior
            .map(|l| {
                l.variants
                    .iter()
                    .enumerate()
                    .map(|(vid, n)| (n.clone(), counts.units(l.id, vid as VariantId)))
                    .collect()
            })
            .unwrap_or_default();
        let mut warnings = Vec::new();

        let (decision, epoch_before, weights_before) = match prior {
            None => (Decision::First, None, Vec::new()),
            Some(l) => {
                let cur = l.current();
                let before = cur
                    .rule
                    .variants
                    .iter()
                    .map(|v| (v.name.clone(), v.weight))
                    .collect();
                if x.reset < cur.reset {
                    errors.push(new.error_at(
                        &format!("{path}.reset"),
                        format!("reset lowered from {} to {}", cur.reset, x.reset),
                        Some(format!(
                            "reset only grows; set it to {} to drop all assignments again",
                            cur.reset + 1
                        )),
                    ));
                    continue;
                }
                let reset = x.reset > cur.reset;
                let changes = diff(&cur.rule, &rule);
                if !reset {
                    for (name, n) in units.iter().filter(|(_, n)| *n > 0) {
                        if !rule.variants.iter().any(|v| &v.name == name) {
                            errors.push(new.error_at(
                                &format!("{path}.variants"),
                                format!("removing variant {name:?} would orphan the {n} units assigned to it"),
                                Some(format!(
                                    "keep it with weight: 0 (it keeps its units and takes no new ones), or raise reset to {} to drop every assignment of {:?} and start a new epoch",
                                    cur.reset + 1,
                                    x.name
                                )),
                            ));
                        }
                    }
                }
                for c in &changes {
                    match c {
                        RuleChange::Salt { .. } => warnings.push("salt changed: new units are bucketed afresh; stored units keep their variant".into()),
                        RuleChange::UnitHeader { .. } => warnings.push("unit_header changed: the same person may now arrive as a different unit".into()),
                        RuleChange::Reordered => warnings.push("variants re-ordered: the bucket ranges of new units move".into()),
                        _ => {}
                    }
                }
                if reset {
                    let total: u64 = units.iter().map(|(_, n)| n).sum();
                    warnings.push(format!(
                        "RESET: all {total} stored assignments of {:?} are dropped",
                        x.name
                    ));
                }
                let decision = if changes.is_empty() && !reset {
                    Decision::Same
                } else {
                    Decision::NewEpoch { changes, reset }
                };
                (decision, Some(cur.epoch), before)
            }
        };
        let epoch_after = match (&decision, epoch_before) {
            (Decision::Same, Some(e)) => e,
            (_, Some(e)) => e.next(),
            (_, None) => Epoch::FIRST,
        };
        if decision != Decision::Same {
            let ev = LedgerEvent {
                experiment: x.name.clone(),
                record: EpochRecord {
                    epoch: epoch_after,
                    rule,
                    started_at: now.to_string(),
                    config_version: version.clone(),
                    reset: x.reset,
                    dropped_assignments: matches!(decision, Decision::NewEpoch { reset: true, .. }),
                },
            };
            if let Err(e) = scratch.apply(&ev) {
                errors.push(new.error_at(&format!("{path}.variants"), e.to_string(), None));
                continue;
            }
            events.push(ev);
        }
        experiments.push(ExperimentPlan {
            name: x.name.clone(),
            decision,
            epoch_before,
            epoch_after,
            weights_before,
            weights_after,
            units,
            warnings,
        });
    }

    let absent = ledger
        .experiments
        .iter()
        .filter(|l| new.experiment(&l.name).is_none())
        .map(|l| l.name.clone())
        .collect();

    if errors.is_empty() {
        Ok(Plan {
            config_version: version,
            experiments,
            absent,
            events,
        })
    } else {
        Err(errors)
    }
}

fn weights(ws: &[(String, Weight)]) -> String {
    ws.iter()
        .map(|(n, w)| format!("{n}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "config {}", self.config_version)?;
        for x in &self.experiments {
            match &x.decision {
                Decision::First => writeln!(
                    f,
                    "  {}: new experiment, epoch 1 ({})",
                    x.name,
                    weights(&x.weights_after)
                )?,
                Decision::Same => writeln!(
                    f,
                    "  {}: epoch {} continues ({})",
                    x.name,
                    x.epoch_after.0,
                    weights(&x.weights_after)
                )?,
                Decision::NewEpoch { changes, reset } => {
                    let why: Vec<String> = changes
                        .iter()
                        .map(|c| c.to_string())
                        .chain(reset.then(|| "reset raised".to_string()))
                        .collect();
                    writeln!(
                        f,
                        "  {}: NEW EPOCH {} -> {} because {}; weights {} -> {}",
                        x.name,
                        x.epoch_before.map_or(0, |e| e.0),
                        x.epoch_after.0,
                        why.join("; "),
                        weights(&x.weights_before),
                        weights(&x.weights_after)
                    )?;
                }
            }
            let held: Vec<String> = x.units.iter().map(|(n, c)| format!("{n}={c}")).collect();
            if !held.is_empty() {
                let kept = if matches!(x.decision, Decision::NewEpoch { reset: true, .. }) {
                    "dropped by reset"
                } else {
                    "each keeps its variant and epoch"
                };
                writeln!(f, "    stored units: {} ({kept})", held.join(" "))?;
            }
            for w in &x.warnings {
                writeln!(f, "    warning: {w}")?;
            }
        }
        for a in &self.absent {
            writeln!(
                f,
                "  {a}: not in this config; its stored units are kept and return if it is re-added"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::config::{parse, Env};

    struct Counts(HashMap<(ExperimentId, VariantId), u64>);
    impl UnitCounts for Counts {
        fn units(&self, e: ExperimentId, v: VariantId) -> u64 {
            self.0.get(&(e, v)).copied().unwrap_or(0)
        }
    }

    fn cfg(variants: &str, extra: &str) -> Config {
        let y = format!(
            "upstreams:\n  old: {{ url: http://127.0.0.1:1 }}\n  new: {{ url: http://127.0.0.1:2 }}\nexperiments:\n  - name: e\n    routes: [/p]\n{extra}    variants:\n{variants}"
        );
        parse(&y, Path::new("t.yaml"), Path::new("."), &Env::default()).unwrap()
    }

    const AB: &str = "      - { name: a, upstream: old, weight: 50 }\n      - { name: b, upstream: new, weight: 50 }\n";

    fn applied(c: &Config) -> Ledger {
        let mut l = Ledger::default();
        for ev in plan(&l.clone(), &Counts(HashMap::new()), c, "t0")
            .unwrap()
            .events
        {
            l.apply(&ev).unwrap();
        }
        l
    }

    fn none() -> Counts {
        Counts(HashMap::new())
    }

    #[test]
    fn first_apply_is_epoch_one() {
        let p = plan(&Ledger::default(), &none(), &cfg(AB, ""), "t").unwrap();
        assert_eq!(p.experiments[0].decision, Decision::First);
        assert_eq!(p.experiments[0].epoch_after, Epoch(1));
        assert_eq!(p.events.len(), 1);
    }

    #[test]
    fn routing_only_change_keeps_the_epoch() {
        let l = applied(&cfg(AB, ""));
        let routed = cfg(&AB.replace("upstream: new", "upstream: old"), "");
        let p = plan(&l, &none(), &routed, "t").unwrap();
        assert_eq!(p.experiments[0].decision, Decision::Same);
        assert!(p.events.is_empty());
    }

    #[test]
    fn weight_change_starts_next_epoch() {
        let l = applied(&cfg(AB, ""));
        let ramp = cfg("      - { name: a, upstream: old, weight: 20 }\n      - { name: b, upstream: new, weight: 80 }\n", "");
        let p = plan(&l, &none(), &ramp, "t").unwrap();
        assert_eq!(p.experiments[0].epoch_after, Epoch(2));
        assert!(
            matches!(&p.experiments[0].decision, Decision::NewEpoch { changes, reset: false } if changes == &vec![RuleChange::Weights])
        );
    }

    #[test]
    fn removing_a_variant_with_units_is_rejected_with_count_and_fix() {
        let l = applied(&cfg(AB, ""));
        let counts = Counts(HashMap::from([((0, 1), 7)]));
        let only_a = cfg("      - { name: a, upstream: old, weight: 100 }\n", "");
        let errs = plan(&l, &counts, &only_a, "t").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("orphan the 7 units"),
            "{}",
            errs[0].message
        );
        assert!(errs[0].hint.as_deref().unwrap().contains("weight: 0"));
        // Without units it is an ordinary new epoch.
        assert!(plan(&l, &none(), &only_a, "t").is_ok());
    }

    #[test]
    fn reset_drops_and_cannot_go_back() {
        let l = applied(&cfg(AB, ""));
        let p = plan(&l, &none(), &cfg(AB, "    reset: 1\n"), "t").unwrap();
        assert!(p.events[0].record.dropped_assignments);
        assert_eq!(p.events[0].record.epoch, Epoch(2));
        let mut l2 = l.clone();
        l2.apply(&p.events[0]).unwrap();
        let errs = plan(&l2, &none(), &cfg(AB, ""), "t").unwrap_err();
        assert!(errs[0].message.contains("reset lowered"));
        // Orphaning is allowed together with a reset.
        let counts = Counts(HashMap::from([((0, 1), 7)]));
        let only_a = cfg(
            "      - { name: a, upstream: old, weight: 100 }\n",
            "    reset: 1\n",
        );
        assert!(plan(&l, &counts, &only_a, "t").is_ok());
    }

    #[test]
    fn returning_to_an_earlier_rule_is_a_new_epoch() {
        let mut l = applied(&cfg(AB, ""));
        let ramp = cfg("      - { name: a, upstream: old, weight: 20 }\n      - { name: b, upstream: new, weight: 80 }\n", "");
        for ev in plan(&l.clone(), &none(), &ramp, "t").unwrap().events {
            l.apply(&ev).unwrap();
        }
        let back = plan(&l, &none(), &cfg(AB, ""), "t").unwrap();
        assert_eq!(back.experiments[0].epoch_after, Epoch(3));
    }

    #[test]
    fn salt_and_order_changes_warn() {
        let l = applied(&cfg(AB, ""));
        let p = plan(&l, &none(), &cfg(AB, "    salt: other\n"), "t").unwrap();
        assert!(p.experiments[0].warnings[0].contains("salt changed"));
        let swapped = "      - { name: b, upstream: new, weight: 50 }\n      - { name: a, upstream: old, weight: 50 }\n";
        let p = plan(&l, &none(), &cfg(swapped, ""), "t").unwrap();
        assert!(p.experiments[0].warnings[0].contains("re-ordered"));
        assert!(p.to_string().contains("NEW EPOCH 1 -> 2"), "{p}");
    }
}
