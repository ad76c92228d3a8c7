//! Assignment: which variant serves a unit, and under which epoch.
//!
//! Serving order (DESIGN.md), first match wins:
//! 1. an invalid unit is unassigned (first variant, epoch 0, never stored);
//! 2. an override forces its variant (not stored);
//! 3. a paused experiment serves the first variant (nothing stored);
//! 4. a stored assignment is served whatever the weights are now (the first
//!    variant if its own is disabled);
//! 5. a unit outside `coverage` gets the first variant, epoch 0, not stored;
//! 6. otherwise the unit is bucketed by the current rule (the first variant,
//!    not stored, if that variant is disabled) and the assignment is made
//!    durable before the response goes out.
//!
//! Assignment never imports the config: [`Assigner`] takes its own
//! `ExperimentSpec` and the ledger records [`epoch::Rule`]s, both built
//! from the validated config by the layers above (`snapshot`, `reload`).
//! Applied configs reach the ledger as opaque JSON documents.

pub mod buckets;
pub mod epoch;
pub mod hash;
pub mod journal;
pub mod ledger;
pub mod schemes;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use buckets::{BucketTable, Weight};
use epoch::{Epoch, Rule};
use hash::Bucket;
use ledger::{ExperimentId, ExperimentLedger, VariantId};
use schemes::Chooser;
use store::{Store, StoreError, Table};

pub use crate::terms::{valid_unit, MAX_UNIT_LEN};

/// Why a request was served the variant it was: the access log's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The unit's stored assignment.
    Stored,
    /// First exposure: assigned by the current rule and stored.
    New,
    /// No valid unit id: first variant, epoch 0, not stored.
    NoUnit,
    /// Forced by an override: not stored.
    Forced,
    /// The experiment is paused (kill switch): first variant, nothing stored.
    Paused,
    /// Outside `coverage` (holdout): first variant, epoch 0, not stored.
    NotCovered,
    /// The unit's variant is disabled: first variant, assignment kept.
    Disabled,
    /// The stored variant is no longer configured (it was removed while a
    /// first request for it was in flight): first variant, assignment kept.
    Orphaned,
}

impl Reason {
    /// The access log's spelling of the reason (part of its schema).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Stored => "stored",
            Reason::New => "new",
            Reason::NoUnit => "no_unit",
            Reason::Forced => "forced",
            Reason::Paused => "paused",
            Reason::NotCovered => "not_covered",
            Reason::Disabled => "disabled",
            Reason::Orphaned => "orphaned",
        }
    }
}

/// The outcome of assignment for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Index into the experiment's configured variants.
    pub variant: usize,
    /// The unit's assignment epoch (0 when it has none).
    pub epoch: Epoch,
    /// Why this variant: the access log's `reason`.
    pub reason: Reason,
    /// Whether this request created the unit's assignment (it was stored
    /// before the response left).
    pub first_exposure: bool,
    /// Whether the unit holds an assignment (stored, or created now).
    pub in_experiment: bool,
    /// The unit's bucket under the current rule (under a vendor scheme,
    /// the vendor's own bucket value on its own scale).
    pub bucket: Option<Bucket>,
    /// The shared store was unreachable: assigned by the contract hash
    /// under the current epoch, to be written back (`serve_by_hash`).
    pub store_degraded: bool,
}

/// What assignment needs of one configured experiment. Assignment's own
/// input type: the snapshot builds it from the validated config, so this
/// module never depends on the config's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExperimentSpec {
    pub(crate) name: String,
    /// Salt, coverage and the ordered (variant, weight) list.
    pub(crate) rule: Rule,
    /// Per configured variant, in order: whether it is disabled.
    pub(crate) disabled: Vec<bool>,
    /// Forced units: unit id -> index of the configured variant.
    pub(crate) overrides: HashMap<Vec<u8>, usize>,
    /// The file's kill switch (an admin pause lives in the store).
    pub(crate) paused: bool,
}

/// One experiment's assignment logic under one applied config.
pub struct Assigner {
    /// The experiment's ledger id.
    pub id: ExperimentId,
    /// The epoch new units are assigned under: the ledger's current one when
    /// this config was applied.
    pub epoch: Epoch,
    name: String,
    salt: String,
    coverage: Weight,
    buckets: BucketTable,
    /// A vendor scheme's draw; `None` for cohort's own contract, whose path
    /// is exactly the one it always was.
    scheme: Option<Chooser>,
    /// Ledger id of each configured variant.
    ledger_ids: Vec<VariantId>,
    /// Configured index of each ledger id (None: not configured any more).
    by_ledger_id: Vec<Option<usize>>,
    disabled: Vec<bool>,
    overrides: HashMap<Vec<u8>, usize>,
    paused_in_file: bool,
    table: Arc<Table>,
}

impl Assigner {
    /// `ledger` must already hold the epoch this config applies.
    pub(crate) fn new(
        spec: ExperimentSpec,
        ledger: &ExperimentLedger,
        table: Arc<Table>,
    ) -> Assigner {
        let ExperimentSpec {
            name,
            rule,
            disabled,
            overrides,
            paused,
        } = spec;
        let ledger_ids: Vec<VariantId> = rule
            .variants
            .iter()
            .map(|v| {
                ledger
                    .variant_id(&v.name)
                    .expect("ledger knows every configured variant")
            })
            .collect();
        let mut by_ledger_id = vec![None; 256];
        for (i, id) in ledger_ids.iter().enumerate() {
            by_ledger_id[usize::from(*id)] = Some(i);
        }
        let weights: Vec<_> = rule.variants.iter().map(|v| v.weight).collect();
        let scheme = Chooser::new(&rule.bucketing, &weights, rule.coverage)
            .expect("validated bucketing compiles for its rule");
        Assigner {
            id: ledger.id,
            epoch: ledger.current().epoch,
            name,
            salt: rule.salt,
            coverage: rule.coverage,
            buckets: BucketTable::new(&weights).expect("validated weights sum to 100"),
            scheme,
            ledger_ids,
            by_ledger_id,
            disabled,
            overrides,
            paused_in_file: paused,
            table,
        }
    }

    /// Effective pause: the file's `paused: true` or an admin pause.
    pub fn paused(&self) -> bool {
        self.paused_in_file || self.table.admin_paused()
    }

    /// What a request without a valid unit id is served: the first
    /// variant, epoch 0, nothing stored.
    pub fn unassigned(&self) -> Served {
        Served {
            variant: 0,
            epoch: Epoch::UNASSIGNED,
            reason: Reason::NoUnit,
            first_exposure: false,
            in_experiment: false,
            bucket: None,
            store_degraded: false,
        }
    }

    /// The variant serving a valid `unit`, in DESIGN.md's order: override,
    /// pause, stored assignment, coverage, then a new durable assignment.
    pub async fn assign(&self, store: &Store, unit: &[u8]) -> Result<Served, StoreError> {
        let key = hash::unit_key(&self.name, unit);
        // Under a vendor scheme the draw (and its coverage) is the vendor's;
        // the bucket reported is on the vendor's own scale.
        let draw = self.scheme.as_ref().map(|c| c.draw(unit));
        let b = match draw {
            None => hash::bucket(&self.salt, unit),
            Some(d) => Bucket(d.bucket),
        };
        let bucket = Some(b);
        let mut stored = self.table.get(&key);
        // The variant a new unit would get now (None: outside coverage);
        // only worked out for a unit this process has not cached, so a
        // returning unit pays nothing for it.
        let fresh = match (stored, draw) {
            (Some(_), _) => None,
            (None, None) => (self.coverage.0 >= hash::BUCKETS
                || hash::coverage_bucket(&self.salt, unit).0 < self.coverage.0)
                .then(|| self.buckets.variant_for(b)),
            (None, Some(d)) => d.variant,
        };
        if stored.is_none() && !self.would_store(unit, fresh) {
            // A shared store may hold the unit though this process has not
            // seen it; a new unit's assignment asks the store anyway. If the
            // store cannot answer, the unit is served as if it had none.
            stored = store.lookup(self.id, key).await.unwrap_or(None);
        }
        let kept = |variant, reason| Served {
            variant,
            epoch: stored.map_or(Epoch::UNASSIGNED, |a| a.epoch),
            reason,
            first_exposure: false,
            in_experiment: stored.is_some(),
            bucket,
            store_degraded: false,
        };
        if !self.overrides.is_empty() {
            if let Some(&v) = self.overrides.get(unit) {
                return Ok(kept(v, Reason::Forced));
            }
        }
        if self.paused() {
            return Ok(kept(0, Reason::Paused));
        }
        if let Some(a) = stored {
            return Ok(self.stored(a.variant, a.epoch, bucket, false));
        }
        let Some(v) = fresh else {
            return Ok(kept(0, Reason::NotCovered));
        };
        if self.disabled[v] {
            return Ok(kept(0, Reason::Disabled));
        }
        let got = store
            .assign(self.id, key, self.ledger_ids[v], self.epoch)
            .await?;
        let mut served = self.stored(
            got.assignment.variant,
            got.assignment.epoch,
            bucket,
            got.created,
        );
        served.store_degraded = got.degraded;
        Ok(served)
    }

    /// Whether a unit without a stored assignment would get a new one now
    /// (no override, not paused, covered, its new variant `fresh` enabled).
    fn would_store(&self, unit: &[u8], fresh: Option<usize>) -> bool {
        (self.overrides.is_empty() || !self.overrides.contains_key(unit))
            && !self.paused()
            && fresh.is_some_and(|v| !self.disabled[v])
    }

    fn stored(&self, id: VariantId, epoch: Epoch, bucket: Option<Bucket>, created: bool) -> Served {
        let (variant, reason) = match self.by_ledger_id[usize::from(id)] {
            Some(v) if self.disabled[v] => (0, Reason::Disabled),
            Some(v) => (v, if created { Reason::New } else { Reason::Stored }),
            None => (0, Reason::Orphaned),
        };
        Served {
            variant,
            epoch,
            reason,
            first_exposure: created,
            in_experiment: true,
            bucket,
            store_degraded: false,
        }
    }
}
