//! What applying a config would do to each experiment's epoch and stored
//! units: the reload decision table of DESIGN.md as one pure function.
//!
//! `plan(ledger, counts, previous config, new config)` either returns the
//! [`Plan`] (the ledger events to journal and a human summary) or every
//! reason the config must be rejected (for instance a removed variant that
//! still holds units). Epochs are judged against the ledger, not against the
//! previous file, so a restart with an edited file is held to exactly the
//! same rules; the previous config (its stored record) is only used to name
//! routing changes, through the typed `super::diff`.

use serde::Serialize;
use serde_json::Value;

use crate::assign::buckets::{BucketTable, Weight};
use crate::assign::epoch::{diff, Epoch, Rule, RuleChange};
use crate::assign::hash::{Bucket, BUCKETS};
use crate::assign::ledger::{units_by_variant, EpochRecord, Ledger, LedgerEvent, UnitCounts};
use crate::assign::schemes::new_unit_draw;
use crate::config::record::ConfigRecord;
use crate::config::{Config, ConfigError};
use crate::snapshot::rule;

/// What the new config does to one experiment's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// Never applied before: epoch 1.
    First,
    /// Rule unchanged: the epoch continues.
    Same,
    /// Rule changed, or an explicit reset: the next epoch.
    NewEpoch {
        /// Every way the new rule differs (empty for a reset alone).
        changes: Vec<RuleChange>,
        /// Whether `reset` was raised: every stored assignment is dropped.
        reset: bool,
    },
}

/// How much of the unit space gets a different assignment *as a new unit*.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ShareChanged {
    /// 0.0 ..= 1.0
    pub share: f64,
    /// Exact (same hash, ranges moved) or expected (the hash itself changed).
    pub exact: bool,
    /// When a vendor bucketing scheme is involved: the number of sample unit
    /// ids both rules drew, the share being the fraction drawn differently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled: Option<u32>,
}

/// Sample unit ids drawn under both rules when a vendor scheme is involved.
const SAMPLE_UNITS: u32 = 20_000;

/// What applying the config does to one of its experiments.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentPlan {
    /// The experiment's name.
    pub name: String,
    /// First epoch, same epoch or a new one (and why).
    pub decision: Decision,
    /// Its current epoch in the ledger; none if it was never applied.
    pub epoch_before: Option<Epoch>,
    /// The epoch new units are assigned under once it is applied.
    pub epoch_after: Epoch,
    /// The current rule's (variant, weight) list, in order; empty if new.
    pub weights_before: Vec<(String, Weight)>,
    /// The new rule's (variant, weight) list, in order.
    pub weights_after: Vec<(String, Weight)>,
    /// For a new epoch: the share of new units that now land elsewhere.
    pub new_unit_share_changed: Option<ShareChanged>,
    /// Stored units per variant name, before the change.
    pub units: Vec<(String, u64)>,
    /// Changes that move no assignment (upstreams, routes, pause, overrides).
    pub routing_changes: Vec<String>,
    /// What an operator should know before applying it (a salt or unit
    /// header change, re-ordered variants, a reset), one sentence each.
    pub warnings: Vec<String>,
}

/// What applying a config would do, as `cohort plan`, `POST /admin/reload`
/// and the reload log show it; applying it journals [`Plan::events`].
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The new config's version.
    pub config_version: String,
    /// The version of the config applied before, if any.
    pub previous_version: Option<String>,
    /// One entry per experiment of the new config, in file order.
    pub experiments: Vec<ExperimentPlan>,
    /// Experiments in the ledger that the new config no longer has.
    pub absent: Vec<String>,
    /// Upstreams added, removed or changed.
    pub upstream_changes: Vec<String>,
    /// Other config-wide settings changed live (default upstream, log unit,
    /// admin token).
    pub settings_changes: Vec<String>,
    /// The epochs to journal before the new config takes effect, one per
    /// experiment that is new or gets a new epoch.
    #[serde(skip)]
    pub events: Vec<LedgerEvent>,
}

impl Plan {
    /// Whether some experiment starts an epoch.
    pub fn changes_epochs(&self) -> bool {
        !self.events.is_empty()
    }

    /// Whether applying it changes anything at all (for `plan`'s exit code).
    pub fn changes_anything(&self) -> bool {
        self.previous_version.as_deref() != Some(self.config_version.as_str())
            || self.changes_epochs()
    }
}

/// The previously applied config, as its stored record with its version.
pub struct Previous<'a> {
    /// Its config version.
    pub version: &'a str,
    /// Its stored record ([`crate::config::record::ConfigRecord::to_stored`]).
    pub config: &'a Value,
}

/// Judges `new` against `ledger`: each experiment's epoch decision, the
/// units it holds (`counts`) and the routing changes since `previous`.
/// `now` (RFC 3339) stamps the epochs it starts. Errs with every reason the
/// config must be rejected (a lowered `reset`, a removed variant that still
/// holds units, a ledger limit), each placed in `new`'s file.
pub fn plan(
    ledger: &Ledger,
    counts: &dyn UnitCounts,
    previous: Option<Previous<'_>>,
    new: &Config,
    now: &str,
) -> Result<Plan, Vec<ConfigError>> {
    let new_record = ConfigRecord::of(new);
    let version = new_record.version();
    // A record this cohort cannot read (a newer format) names no routing
    // changes; the epochs are judged against the ledger either way.
    let changed = previous
        .as_ref()
        .and_then(|p| ConfigRecord::from_stored(p.config).ok())
        .map(|old| super::diff::diff(&old, &new_record))
        .unwrap_or_default();
    let mut errors = Vec::new();
    let mut experiments = Vec::new();
    let mut events = Vec::new();
    let mut scratch = ledger.clone();

    for (i, x) in new.experiments.iter().enumerate() {
        let path = format!("experiments[{i}]");
        let rule = rule(x);
        let weights_after = rule
            .variants
            .iter()
            .map(|v| (v.name.clone(), v.weight))
            .collect();
        let prior = ledger.get(&x.name);
        let units = prior
            .map(|l| units_by_variant(l, counts))
            .unwrap_or_default();
        let mut warnings = Vec::new();
        let mut share = None;

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
                        RuleChange::Salt { .. } => warnings.push("SALT CHANGED: every new unit is bucketed afresh (the classic re-bucketing incident); stored units keep their variant".into()),
                        RuleChange::UnitHeader { .. } => warnings.push("UNIT HEADER CHANGED: the same person may now arrive as a different unit and be assigned again".into()),
                        RuleChange::Reordered => warnings.push("variants re-ordered: the bucket ranges of new units move".into()),
                        RuleChange::Bucketing { from, to } => warnings.push(format!("BUCKETING CHANGED ({from} -> {to}): new units are drawn by another algorithm (the share above is how many land elsewhere); stored units keep their variant")),
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
                    share = Some(share_changed(&cur.rule, &rule));
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
            let ev = LedgerEvent::epoch(
                &x.name,
                EpochRecord {
                    epoch: epoch_after,
                    rule,
                    started_at: now.to_string(),
                    config_version: version.clone(),
                    reset: x.reset,
                    dropped_assignments: matches!(decision, Decision::NewEpoch { reset: true, .. }),
                },
            );
            if let Err(e) = scratch.apply(&ev) {
                errors.push(new.error_at(&format!("{path}.variants"), e.to_string(), None));
                continue;
            }
            events.push(ev);
        }
        let routing_changes = changed
            .experiments
            .get(&x.name)
            .cloned()
            .unwrap_or_default();
        experiments.push(ExperimentPlan {
            name: x.name.clone(),
            decision,
            epoch_before,
            epoch_after,
            weights_before,
            weights_after,
            new_unit_share_changed: share,
            units,
            routing_changes,
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
            previous_version: previous.map(|p| p.version.to_string()),
            experiments,
            absent,
            upstream_changes: changed.upstreams,
            settings_changes: changed.settings,
            events,
        })
    } else {
        Err(errors)
    }
}

/// The share of units whose assignment as a *new* unit differs between two
/// rules. Same salt and header: exact, from the bucket ranges and the nested
/// coverage thresholds. Otherwise the hash itself changed, and the expected
/// share is 1 - sum over outcomes of P_old * P_new.
pub(crate) fn share_changed(old: &Rule, new: &Rule) -> ShareChanged {
    if !(old.bucketing.is_cohort() && new.bucketing.is_cohort()) {
        return sampled_share(old, new);
    }
    let outcome_probs = |r: &Rule| -> Vec<(Option<String>, f64)> {
        let c = f64::from(r.coverage.0) / f64::from(BUCKETS);
        let mut v: Vec<(Option<String>, f64)> = r
            .variants
            .iter()
            .map(|x| {
                (
                    Some(x.name.clone()),
                    c * f64::from(x.weight.0) / f64::from(BUCKETS),
                )
            })
            .collect();
        v.push((None, 1.0 - c));
        v
    };
    if old.salt != new.salt || old.unit_header != new.unit_header {
        let (a, b) = (outcome_probs(old), outcome_probs(new));
        let same: f64 = a
            .iter()
            .map(|(n, p)| p * b.iter().find(|(m, _)| m == n).map_or(0.0, |(_, q)| *q))
            .sum();
        return ShareChanged {
            share: (1.0 - same).clamp(0.0, 1.0),
            exact: false,
            sampled: None,
        };
    }
    let table =
        |r: &Rule| BucketTable::new(&r.variants.iter().map(|v| v.weight).collect::<Vec<_>>());
    let (Some(ta), Some(tb)) = (table(old), table(new)) else {
        return ShareChanged {
            share: 1.0,
            exact: false,
            sampled: None,
        };
    };
    let moved = (0..BUCKETS)
        .filter(|&b| {
            let (i, j) = (ta.variant_for(Bucket(b)), tb.variant_for(Bucket(b)));
            old.variants[i].name != new.variants[j].name
        })
        .count();
    // Coverage thresholds on one hash are nested: units covered by both keep
    // the range move; units covered by one only flip in or out.
    let (ca, cb) = (
        f64::from(old.coverage.0) / 1e4,
        f64::from(new.coverage.0) / 1e4,
    );
    ShareChanged {
        share: ca.min(cb) * moved as f64 / f64::from(BUCKETS) + (ca - cb).abs(),
        exact: true,
        sampled: None,
    }
}

/// A vendor scheme on either side: both rules draw the same sample of unit
/// ids (`unit-0`, `unit-1`, ...), and the share is how many land elsewhere
/// (another variant name, or in/out of coverage). Independent hashes make
/// this close to `1 - sum P_old x P_new`; a parameter typo in a migration
/// shows as that, a faithful reproduction of the old draw as 0.
fn sampled_share(old: &Rule, new: &Rule) -> ShareChanged {
    let (Some(a), Some(b)) = (new_unit_draw(old), new_unit_draw(new)) else {
        return ShareChanged {
            share: 1.0,
            exact: false,
            sampled: None,
        };
    };
    let name = |r: &Rule, v: Option<usize>| v.map(|i| r.variants[i].name.clone());
    let moved = (0..SAMPLE_UNITS)
        .filter(|i| {
            let u = format!("unit-{i}");
            name(old, a(u.as_bytes())) != name(new, b(u.as_bytes()))
        })
        .count();
    ShareChanged {
        share: moved as f64 / f64::from(SAMPLE_UNITS),
        exact: false,
        sampled: Some(SAMPLE_UNITS),
    }
}

/// The record of `config` as the ledger stores it and `plan` reads it back
/// as the previous config ([`ConfigRecord::to_stored`]).
pub(crate) fn canonical(config: &Config) -> Value {
    ConfigRecord::of(config).to_stored()
}

fn weights(ws: &[(String, Weight)]) -> String {
    ws.iter()
        .map(|(n, w)| format!("{n}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.previous_version {
            Some(p) if *p == self.config_version => {
                writeln!(f, "config {} (unchanged)", self.config_version)?
            }
            Some(p) => writeln!(f, "config {p} -> {}", self.config_version)?,
            None => writeln!(f, "config {}", self.config_version)?,
        }
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
                    "  {}: epoch {} continues, no new epoch ({})",
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
            if let Some(s) = x.new_unit_share_changed {
                writeln!(
                    f,
                    "    new units: {:.2}% of the unit space is assigned differently from now on ({})",
                    s.share * 100.0,
                    match (s.exact, s.sampled) {
                        (true, _) => "exact".to_string(),
                        (false, Some(n)) => format!("measured: {n} sample unit ids drawn by both rules"),
                        (false, None) => "expected: the hash changed".to_string(),
                    }
                )?;
            }
            let held: Vec<String> = x.units.iter().map(|(n, c)| format!("{n}={c}")).collect();
            if !held.is_empty() {
                let kept = if matches!(x.decision, Decision::NewEpoch { reset: true, .. }) {
                    "ALL DROPPED by the reset"
                } else {
                    "every one keeps its variant and epoch"
                };
                writeln!(f, "    stored units: {} ({kept})", held.join(" "))?;
            }
            for r in &x.routing_changes {
                writeln!(f, "    routing (no new epoch): {r}")?;
            }
            for w in &x.warnings {
                writeln!(f, "    warning: {w}")?;
            }
        }
        for u in self.upstream_changes.iter().chain(&self.settings_changes) {
            writeln!(f, "  routing (no new epoch): {u}")?;
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
    use crate::assign::ledger::{ExperimentId, VariantId};
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
        for ev in plan(&l.clone(), &Counts(HashMap::new()), None, c, "t0")
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
        let p = plan(&Ledger::default(), &none(), None, &cfg(AB, ""), "t").unwrap();
        assert_eq!(p.experiments[0].decision, Decision::First);
        assert_eq!(p.experiments[0].epoch_after, Epoch(1));
        assert_eq!(p.events.len(), 1);
    }

    #[test]
    fn routing_only_change_keeps_the_epoch() {
        let l = applied(&cfg(AB, ""));
        let routed = cfg(&AB.replace("upstream: new", "upstream: old"), "");
        let p = plan(&l, &none(), None, &routed, "t").unwrap();
        assert_eq!(p.experiments[0].decision, Decision::Same);
        assert!(p.events.is_empty());
    }

    #[test]
    fn weight_change_starts_next_epoch() {
        let l = applied(&cfg(AB, ""));
        let ramp = cfg("      - { name: a, upstream: old, weight: 20 }\n      - { name: b, upstream: new, weight: 80 }\n", "");
        let p = plan(&l, &none(), None, &ramp, "t").unwrap();
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
        let errs = plan(&l, &counts, None, &only_a, "t").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("orphan the 7 units"),
            "{}",
            errs[0].message
        );
        assert!(errs[0].hint.as_deref().unwrap().contains("weight: 0"));
        // Without units it is an ordinary new epoch.
        assert!(plan(&l, &none(), None, &only_a, "t").is_ok());
    }

    #[test]
    fn reset_drops_and_cannot_go_back() {
        let l = applied(&cfg(AB, ""));
        let p = plan(&l, &none(), None, &cfg(AB, "    reset: 1\n"), "t").unwrap();
        let LedgerEvent::Epoch { record, .. } = &p.events[0] else {
            panic!("an epoch event")
        };
        assert!(record.dropped_assignments);
        assert_eq!(record.epoch, Epoch(2));
        let mut l2 = l.clone();
        l2.apply(&p.events[0]).unwrap();
        let errs = plan(&l2, &none(), None, &cfg(AB, ""), "t").unwrap_err();
        assert!(errs[0].message.contains("reset lowered"));
        // Orphaning is allowed together with a reset.
        let counts = Counts(HashMap::from([((0, 1), 7)]));
        let only_a = cfg(
            "      - { name: a, upstream: old, weight: 100 }\n",
            "    reset: 1\n",
        );
        assert!(plan(&l, &counts, None, &only_a, "t").is_ok());
    }

    #[test]
    fn returning_to_an_earlier_rule_is_a_new_epoch() {
        let mut l = applied(&cfg(AB, ""));
        let ramp = cfg("      - { name: a, upstream: old, weight: 20 }\n      - { name: b, upstream: new, weight: 80 }\n", "");
        for ev in plan(&l.clone(), &none(), None, &ramp, "t").unwrap().events {
            l.apply(&ev).unwrap();
        }
        let back = plan(&l, &none(), None, &cfg(AB, ""), "t").unwrap();
        assert_eq!(back.experiments[0].epoch_after, Epoch(3));
    }

    #[test]
    fn salt_and_order_changes_warn() {
        let l = applied(&cfg(AB, ""));
        let p = plan(&l, &none(), None, &cfg(AB, "    salt: other\n"), "t").unwrap();
        assert!(p.experiments[0].warnings[0].contains("SALT CHANGED"));
        let swapped = "      - { name: b, upstream: new, weight: 50 }\n      - { name: a, upstream: old, weight: 50 }\n";
        let p = plan(&l, &none(), None, &cfg(swapped, ""), "t").unwrap();
        assert!(p.experiments[0].warnings[0].contains("re-ordered"));
        assert!(p.to_string().contains("NEW EPOCH 1 -> 2"), "{p}");
    }

    fn share(from: &str, to: &str, extra_from: &str, extra_to: &str) -> ShareChanged {
        let l = applied(&cfg(from, extra_from));
        let p = plan(&l, &none(), None, &cfg(to, extra_to), "t").unwrap();
        p.experiments[0]
            .new_unit_share_changed
            .expect("a new epoch has a share")
    }

    #[test]
    fn share_of_new_units_reassigned_is_exact_for_range_moves() {
        let ramp = "      - { name: a, upstream: old, weight: 20 }\n      - { name: b, upstream: new, weight: 80 }\n";
        let s = share(AB, ramp, "", "");
        assert!(s.exact && (s.share - 0.30).abs() < 1e-9, "{s:?}");
        let swapped = "      - { name: b, upstream: new, weight: 50 }\n      - { name: a, upstream: old, weight: 50 }\n";
        assert!((share(AB, swapped, "", "").share - 1.0).abs() < 1e-9);
        // Coverage 100% -> 80%: the 20% now outside change, nobody else.
        let s = share(AB, AB, "", "    coverage: 0.8\n");
        assert!(s.exact && (s.share - 0.20).abs() < 1e-9, "{s:?}");
        // A new salt re-draws everyone: expected 1 - (0.5*0.5 + 0.5*0.5).
        let s = share(AB, AB, "", "    salt: fresh\n");
        assert!(!s.exact && (s.share - 0.5).abs() < 1e-9, "{s:?}");
    }

    /// Whatever validation accepts, the assigner compiles (it `expect`s it).
    #[test]
    fn every_valid_bucketing_compiles_for_its_rule() {
        use crate::assign::schemes::Chooser;
        let lines = [
            "    bucketing: { scheme: growthbook, hash_version: 2 }\n    coverage: 0.3\n",
            "    bucketing: { scheme: growthbook, vendor_weights: [0.5, 0.5] }\n",
            "    bucketing: { scheme: launchdarkly, flag_key: f, seed: -3 }\n",
            "    bucketing: { scheme: launchdarkly, flag_key: f, salt: s, vendor_weights: [50000, 50000] }\n",
            "    bucketing: { scheme: statsig, rule_salt: r }\n    coverage: 0.1234\n",
            "    bucketing: { scheme: statsig, vendor_weights: [500, 500] }\n",
            "    bucketing: { scheme: optimizely, experiment_id: '9' }\n    coverage: 0.5\n",
            "    bucketing: { scheme: optimizely, experiment_id: '9', vendor_weights: [2500, 2500] }\n",
            "    bucketing: { scheme: unleash }\n    coverage: 0.07\n",
            "    bucketing: { scheme: unleash, vendor_weights: [1, 1] }\n",
            "    bucketing: { scheme: nginx, key: 'x${unit}' }\n    coverage: 0.25\n",
            "    bucketing: { scheme: nginx, key: '${unit}', vendor_weights: [50, 50] }\n",
        ];
        for line in lines {
            let c = cfg(AB, line);
            let r = rule(&c.experiments[0]);
            let w: Vec<Weight> = r.variants.iter().map(|v| v.weight).collect();
            let got = Chooser::new(&r.bucketing, &w, r.coverage);
            assert!(matches!(got, Ok(Some(_))), "{line}: {got:?}");
        }
    }

    #[test]
    fn bucketing_change_is_a_new_epoch_with_a_measured_share() {
        let gb1 = "    bucketing: { scheme: growthbook, seed: e, hash_version: 1 }\n";
        let gb2 = "    bucketing: { scheme: growthbook, seed: e, hash_version: 2 }\n";
        let l = applied(&cfg(AB, ""));
        let p = plan(&l, &none(), None, &cfg(AB, gb1), "t").unwrap();
        let x = &p.experiments[0];
        assert!(
            matches!(&x.decision, Decision::NewEpoch { changes, reset: false } if matches!(&changes[..], [RuleChange::Bucketing { from, to }] if from == "cohort" && to == "growthbook"))
        );
        assert!(
            x.warnings.iter().any(|w| w.contains("BUCKETING CHANGED")),
            "{:?}",
            x.warnings
        );
        assert!(p.to_string().contains("sample unit ids"), "{p}");
        // Independent hashes: about half of a 50/50 split lands elsewhere.
        let s = share(AB, AB, "", gb1);
        assert_eq!(s.sampled, Some(SAMPLE_UNITS));
        assert!(!s.exact && (s.share - 0.5).abs() < 0.03, "{s:?}");
        let s = share(AB, AB, gb1, gb2);
        assert!((s.share - 0.5).abs() < 0.03, "{s:?}");
        // Same scheme and parameters, a ramp: only the moved range (30 %).
        let ramp = "      - { name: a, upstream: old, weight: 20 }\n      - { name: b, upstream: new, weight: 80 }\n";
        let nginx = "    bucketing: { scheme: nginx, key: \"${unit}AAA\" }\n";
        let s = share(AB, ramp, nginx, nginx);
        assert!((s.share - 0.3).abs() < 0.02, "{s:?}");
        // Re-declaring the same scheme is no change at all.
        let l = applied(&cfg(AB, gb1));
        let p = plan(&l, &none(), None, &cfg(AB, gb1), "t").unwrap();
        assert!(matches!(p.experiments[0].decision, Decision::Same));
    }

    #[test]
    fn coverage_change_is_a_new_epoch() {
        let l = applied(&cfg(AB, ""));
        let p = plan(&l, &none(), None, &cfg(AB, "    coverage: 0.5\n"), "t").unwrap();
        assert!(
            matches!(&p.experiments[0].decision, Decision::NewEpoch { changes, .. } if matches!(changes[..], [RuleChange::Coverage { .. }]))
        );
    }

    #[test]
    fn routing_changes_are_named_and_keep_the_epoch() {
        let old = cfg(AB, "");
        let l = applied(&old);
        let old_json = canonical(&old);
        let prev = || {
            Some(Previous {
                version: "x",
                config: &old_json,
            })
        };
        let routed = cfg(
            &AB.replace("upstream: new", "upstream: old"),
            "    paused: true\n    overrides: { b: [qa-1] }\n",
        );
        let p = plan(&l, &none(), prev(), &routed, "t").unwrap();
        let x = &p.experiments[0];
        assert_eq!(x.decision, Decision::Same);
        assert!(
            x.routing_changes
                .iter()
                .any(|r| r.starts_with("variants[b].upstream")),
            "{:?}",
            x.routing_changes
        );
        assert!(x
            .routing_changes
            .iter()
            .any(|r| r.starts_with("paused: false -> true")));
        assert!(x
            .routing_changes
            .iter()
            .any(|r| r.starts_with("overrides: 0 -> 1")));
        assert!(p.changes_anything() && !p.changes_epochs());
        let same = plan(
            &l,
            &none(),
            Some(Previous {
                version: &old.version(),
                config: &old_json,
            }),
            &old,
            "t",
        )
        .unwrap();
        assert!(!same.changes_anything());
    }

    // The rest of DESIGN.md's decision table, one test per row not covered
    // above.

    #[test]
    fn adding_a_variant_starts_the_next_epoch_and_keeps_units() {
        let l = applied(&cfg(AB, ""));
        let counts = Counts(HashMap::from([((0, 0), 3), ((0, 1), 4)]));
        let abc = "      - { name: a, upstream: old, weight: 40 }\n      - { name: b, upstream: new, weight: 40 }\n      - { name: c, upstream: new, weight: 20 }\n";
        let p = plan(&l, &counts, None, &cfg(abc, ""), "t").unwrap();
        let x = &p.experiments[0];
        assert_eq!(x.epoch_after, Epoch(2));
        assert!(
            matches!(&x.decision, Decision::NewEpoch { changes, reset: false } if changes.contains(&RuleChange::VariantsAdded { names: vec!["c".into()] })),
            "{:?}",
            x.decision
        );
        assert!(
            p.to_string()
                .contains("every one keeps its variant and epoch"),
            "{p}"
        );
    }

    #[test]
    fn a_weight_set_to_zero_is_a_new_epoch_that_keeps_the_variant() {
        let l = applied(&cfg(AB, ""));
        let counts = Counts(HashMap::from([((0, 1), 7)]));
        let closed = "      - { name: a, upstream: old, weight: 100 }\n      - { name: b, upstream: new, weight: 0 }\n";
        let p = plan(&l, &counts, None, &cfg(closed, ""), "t").unwrap();
        assert_eq!(p.experiments[0].epoch_after, Epoch(2));
        assert!(
            matches!(&p.experiments[0].decision, Decision::NewEpoch { changes, reset: false } if changes == &vec![RuleChange::Weights])
        );
    }

    #[test]
    fn a_unit_header_change_is_a_new_epoch_with_a_loud_warning() {
        let l = applied(&cfg(AB, ""));
        let p = plan(
            &l,
            &none(),
            None,
            &cfg(AB, "    unit_header: x-session\n"),
            "t",
        )
        .unwrap();
        let x = &p.experiments[0];
        assert_eq!(x.epoch_after, Epoch(2));
        assert!(
            x.warnings.iter().any(|w| w.contains("UNIT HEADER CHANGED")),
            "{:?}",
            x.warnings
        );
    }

    #[test]
    fn renaming_a_variant_that_holds_units_is_rejected() {
        let l = applied(&cfg(AB, ""));
        let counts = Counts(HashMap::from([((0, 1), 2)]));
        let renamed = AB.replace("name: b,", "name: bee,");
        let errs = plan(&l, &counts, None, &cfg(&renamed, ""), "t").unwrap_err();
        assert!(
            errs[0]
                .message
                .contains("removing variant \"b\" would orphan the 2 units"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn a_removed_experiment_is_kept_in_the_store_and_named() {
        let l = applied(&cfg(AB, ""));
        let y = "upstreams:\n  old: { url: http://127.0.0.1:1 }\nexperiments:\n  - name: other\n    routes: [/q]\n    variants:\n      - { name: a, upstream: old, weight: 100 }\n";
        let other = parse(y, Path::new("t.yaml"), Path::new("."), &Env::default()).unwrap();
        let p = plan(&l, &none(), None, &other, "t").unwrap();
        assert_eq!(p.absent, vec!["e".to_string()]);
        assert!(
            p.to_string()
                .contains("e: not in this config; its stored units are kept"),
            "{p}"
        );
        // Re-added under the same name, it continues its epoch.
        let back = plan(&l, &none(), None, &cfg(AB, ""), "t").unwrap();
        assert_eq!(back.experiments[0].decision, Decision::Same);
    }

    #[test]
    fn previous_records_of_either_format_name_the_same_routing_changes() {
        let old = cfg(AB, "");
        let l = applied(&old);
        let routed = cfg(&AB.replace("upstream: new", "upstream: old"), "");
        let versioned = canonical(&old);
        let mut legacy = versioned.clone();
        legacy.as_object_mut().unwrap().remove("version");
        for stored in [&versioned, &legacy] {
            let prev = Previous {
                version: "x",
                config: stored,
            };
            let p = plan(&l, &none(), Some(prev), &routed, "t").unwrap();
            assert_eq!(
                p.experiments[0].routing_changes,
                vec!["variants[b].upstream: \"new\" -> \"old\"".to_string()]
            );
        }
    }
}
