//! Rules and epochs, as pure values.
//!
//! An experiment's **rule** is everything that decides which variant a *new*
//! unit gets: the salt, the unit header, the coverage, the ordered list of
//! (variant, weight) and the bucketing scheme. Any difference between two rules starts a new epoch;
//! routing (upstreams, timeouts, routes, pause, overrides, disabled) never
//! does. `diff` says which parts of the
//! rule changed so that the reload log and `plan` can explain the new epoch.

use serde::{Deserialize, Serialize};

use super::buckets::Weight;
use crate::terms::Bucketing;

/// A positive integer numbering an experiment's rules in the order applied.
/// `Epoch(0)` means "unassigned" on the wire and is never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u32);

impl Epoch {
    /// Stamped on a response that no stored assignment backs (no unit, an
    /// override, a pause, a unit outside coverage); never stored.
    pub const UNASSIGNED: Epoch = Epoch(0);
    /// The epoch of an experiment's first applied rule.
    pub const FIRST: Epoch = Epoch(1);
    /// The largest epoch the store's packed assignment holds (24 bits).
    pub const MAX: Epoch = Epoch(0xff_ffff);

    /// The epoch a changed rule starts: this one plus one. The ledger
    /// refuses an epoch past [`Epoch::MAX`].
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

/// One arm of a rule: a variant and its share of new units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleVariant {
    /// The variant's configured name, as stamped on responses.
    pub name: String,
    /// Its share of new units, in basis points; a rule's weights sum to
    /// exactly 100 %.
    pub weight: Weight,
}

/// Everything that decides which variant a new unit gets. The ledger keeps
/// one per epoch (serialized in the journal, so its field names are a disk
/// format): two rules that differ in anything are two epochs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Mixed into the unit's bucket hash: a new salt reshuffles every new
    /// unit.
    pub salt: String,
    /// The request header the unit id is read from.
    pub unit_header: String,
    /// Basis points of units that enter the experiment (10000 = everyone).
    #[serde(default = "full_coverage")]
    pub coverage: Weight,
    /// The variants in configured order; the order decides which bucket
    /// ranges each one gets, so re-ordering is a rule change.
    pub variants: Vec<RuleVariant>,
    /// How new units are drawn (`cohort`'s SHA-256 contract by default, or
    /// a vendor's). Left out when default, so rules recorded before schemes
    /// existed read back equal and a default rule serializes as before.
    #[serde(default, skip_serializing_if = "Bucketing::is_cohort")]
    pub bucketing: Bucketing,
}

fn full_coverage() -> Weight {
    Weight(10_000)
}

/// One reason a rule differs from the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum RuleChange {
    /// The salt changed: every new unit is bucketed afresh.
    Salt {
        /// The previous rule's salt.
        from: String,
        /// The new rule's salt.
        to: String,
    },
    /// Units are read from another request header.
    UnitHeader {
        /// The previous header name.
        from: String,
        /// The new header name.
        to: String,
    },
    /// A different share of units enters the experiment.
    Coverage {
        /// The previous coverage, in basis points.
        from: Weight,
        /// The new coverage, in basis points.
        to: Weight,
    },
    /// Variants the new rule has and the old one did not.
    VariantsAdded {
        /// Their names, in the new rule's order.
        names: Vec<String>,
    },
    /// Variants the old rule had and the new one does not.
    VariantsRemoved {
        /// Their names, in the old rule's order.
        names: Vec<String>,
    },
    /// The variants both rules have are in another order (which moves
    /// their bucket ranges).
    Reordered,
    /// A variant both rules have has another weight.
    Weights,
    /// The bucketing scheme or its parameters changed: like a salt change,
    /// every new unit is drawn afresh.
    Bucketing {
        /// The previous scheme's name.
        from: String,
        /// The new scheme's name.
        to: String,
    },
}

impl std::fmt::Display for RuleChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleChange::Salt { from, to } => write!(f, "salt changed ({from:?} -> {to:?})"),
            RuleChange::UnitHeader { from, to } => {
                write!(f, "unit_header changed ({from} -> {to})")
            }
            RuleChange::Coverage { from, to } => write!(f, "coverage changed ({from}% -> {to}%)"),
            RuleChange::VariantsAdded { names } => {
                write!(f, "variants added: {}", names.join(", "))
            }
            RuleChange::VariantsRemoved { names } => {
                write!(f, "variants removed: {}", names.join(", "))
            }
            RuleChange::Reordered => write!(f, "variants re-ordered"),
            RuleChange::Weights => write!(f, "weights changed"),
            RuleChange::Bucketing { from, to } if from == to => {
                write!(f, "bucketing parameters changed ({to})")
            }
            RuleChange::Bucketing { from, to } => write!(f, "bucketing changed ({from} -> {to})"),
        }
    }
}

/// Every way `new` differs from `old`; empty means the same epoch continues.
pub(crate) fn diff(old: &Rule, new: &Rule) -> Vec<RuleChange> {
    let mut changes = Vec::new();
    if old.salt != new.salt {
        changes.push(RuleChange::Salt {
            from: old.salt.clone(),
            to: new.salt.clone(),
        });
    }
    if old.unit_header != new.unit_header {
        changes.push(RuleChange::UnitHeader {
            from: old.unit_header.clone(),
            to: new.unit_header.clone(),
        });
    }
    if old.coverage != new.coverage {
        changes.push(RuleChange::Coverage {
            from: old.coverage,
            to: new.coverage,
        });
    }
    let names = |r: &Rule| {
        r.variants
            .iter()
            .map(|v| v.name.clone())
            .collect::<Vec<_>>()
    };
    let (old_names, new_names) = (names(old), names(new));
    let added: Vec<String> = new_names
        .iter()
        .filter(|n| !old_names.contains(n))
        .cloned()
        .collect();
    let removed: Vec<String> = old_names
        .iter()
        .filter(|n| !new_names.contains(n))
        .cloned()
        .collect();
    if !added.is_empty() {
        changes.push(RuleChange::VariantsAdded { names: added });
    }
    if !removed.is_empty() {
        changes.push(RuleChange::VariantsRemoved { names: removed });
    }
    let kept_old: Vec<&String> = old_names.iter().filter(|n| new_names.contains(n)).collect();
    let kept_new: Vec<&String> = new_names.iter().filter(|n| old_names.contains(n)).collect();
    if kept_old != kept_new {
        changes.push(RuleChange::Reordered);
    }
    let weight_of = |r: &Rule, n: &str| r.variants.iter().find(|v| v.name == n).map(|v| v.weight);
    if kept_old
        .iter()
        .any(|n| weight_of(old, n) != weight_of(new, n))
    {
        changes.push(RuleChange::Weights);
    }
    if old.bucketing != new.bucketing {
        changes.push(RuleChange::Bucketing {
            from: old.bucketing.scheme().into(),
            to: new.bucketing.scheme().into(),
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(salt: &str, vs: &[(&str, u32)]) -> Rule {
        Rule {
            salt: salt.into(),
            unit_header: "x-user-id".into(),
            coverage: Weight(10_000),
            variants: vs
                .iter()
                .map(|(n, w)| RuleVariant {
                    name: n.to_string(),
                    weight: Weight(*w),
                })
                .collect(),
            bucketing: Bucketing::Cohort,
        }
    }

    #[test]
    fn same_rule_is_same_epoch() {
        let r = rule("s", &[("a", 5000), ("b", 5000)]);
        assert!(diff(&r, &r.clone()).is_empty());
    }

    #[test]
    fn each_rule_field_is_a_change() {
        let base = rule("s", &[("a", 5000), ("b", 5000)]);
        assert_eq!(
            diff(&base, &rule("s", &[("a", 2000), ("b", 8000)])),
            vec![RuleChange::Weights]
        );
        assert_eq!(
            diff(&base, &rule("s", &[("b", 5000), ("a", 5000)])),
            vec![RuleChange::Reordered]
        );
        assert_eq!(
            diff(&base, &rule("t", &[("a", 5000), ("b", 5000)])),
            vec![RuleChange::Salt {
                from: "s".into(),
                to: "t".into()
            }]
        );
        assert_eq!(
            diff(&base, &rule("s", &[("a", 5000), ("b", 5000), ("c", 0)])),
            vec![RuleChange::VariantsAdded {
                names: vec!["c".into()]
            }]
        );
        assert_eq!(
            diff(&base, &rule("s", &[("a", 10000)])),
            vec![
                RuleChange::VariantsRemoved {
                    names: vec!["b".into()]
                },
                RuleChange::Weights
            ]
        );
        let mut header = base.clone();
        header.unit_header = "x-session".into();
        assert!(matches!(
            diff(&base, &header)[..],
            [RuleChange::UnitHeader { .. }]
        ));
        let mut vendor = base.clone();
        vendor.bucketing = Bucketing::Unleash {
            group_id: "t".into(),
            vendor_weights: None,
        };
        assert_eq!(
            diff(&base, &vendor),
            vec![RuleChange::Bucketing {
                from: "cohort".into(),
                to: "unleash".into()
            }]
        );
    }

    /// A rule without a scheme serializes exactly as before schemes existed
    /// (the journal and the ledger read it), and reads back as `cohort`.
    #[test]
    fn default_bucketing_is_not_serialized() {
        let r = rule("s", &[("a", 10000)]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"salt":"s","unit_header":"x-user-id","coverage":10000,"variants":[{"name":"a","weight":10000}]}"#
        );
        let back: Rule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let mut v = r.clone();
        v.bucketing = Bucketing::Nginx {
            key: "${unit}".into(),
            vendor_weights: None,
        };
        let json = serde_json::to_string(&v).unwrap();
        assert!(
            json.contains(r#""bucketing":{"scheme":"nginx","key":"${unit}"}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), v);
    }

    /// A rule read back from the journal must equal the one written, or
    /// every restart would see a rule change: vendor weights (GrowthBook's
    /// fractions) round-trip bit for bit.
    #[test]
    fn vendor_weights_round_trip_exactly() {
        use crate::terms::VendorWeight;
        let mut r = rule("s", &[("a", 3333), ("b", 3333), ("c", 3334)]);
        let mut x = 0.1f64;
        let mut ws = vec![1.0 / 3.0, 0.1, 0.7, 2.0 / 3.0, 0.123_456_789_012_345_68];
        for _ in 0..2000 {
            x = (x * 997.0 + 0.123).fract();
            ws.push(x);
        }
        for w in ws {
            r.bucketing = Bucketing::Growthbook {
                seed: "s".into(),
                hash_version: 2,
                vendor_weights: Some(vec![VendorWeight(w); 3]),
            };
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(
                serde_json::from_str::<Rule>(&json).unwrap(),
                r,
                "{w:?}: {json}"
            );
        }
    }
}
