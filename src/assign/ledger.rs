//! The epoch ledger: for every experiment ever applied, each epoch's rule,
//! when it began and under which config version, plus the dictionary of
//! variant names that stored assignments refer to by index.
//!
//! The ledger changes only through [`LedgerEvent`]s, which are journaled
//! before they take effect; replaying the journal's events through
//! [`Ledger::apply`] rebuilds exactly the same ledger after a restart.

use serde::{Deserialize, Serialize};

use super::epoch::{Epoch, Rule};

/// Index of an experiment in the store (dense, assigned on first apply).
pub type ExperimentId = u16;
/// Index of a variant name in its experiment's dictionary.
pub type VariantId = u8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: Epoch,
    pub rule: Rule,
    pub started_at: String,
    pub config_version: String,
    /// The `reset` counter this epoch was started under.
    pub reset: u64,
    /// Whether this epoch dropped every stored assignment (an explicit reset).
    pub dropped_assignments: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentLedger {
    pub id: ExperimentId,
    pub name: String,
    /// Every variant name ever used; stored assignments hold an index into it.
    pub variants: Vec<String>,
    pub epochs: Vec<EpochRecord>,
}

impl ExperimentLedger {
    pub fn current(&self) -> &EpochRecord {
        self.epochs
            .last()
            .expect("a ledger entry has at least one epoch")
    }

    pub fn variant_id(&self, name: &str) -> Option<VariantId> {
        self.variants
            .iter()
            .position(|v| v == name)
            .map(|i| i as VariantId)
    }
}

/// The one kind of ledger change: an experiment starts an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEvent {
    pub experiment: String,
    pub record: EpochRecord,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub experiments: Vec<ExperimentLedger>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("experiment {0:?} would exceed 256 variant names over its lifetime")]
    TooManyVariants(String),
    #[error("experiment {0:?} has reached the largest epoch the store can hold")]
    EpochOverflow(String),
    #[error("more than 65536 experiments")]
    TooManyExperiments,
    #[error("epoch {got} for {experiment:?} does not follow {want}")]
    OutOfOrder {
        experiment: String,
        got: u32,
        want: u32,
    },
}

impl Ledger {
    pub fn get(&self, name: &str) -> Option<&ExperimentLedger> {
        self.experiments.iter().find(|e| e.name == name)
    }

    pub fn by_id(&self, id: ExperimentId) -> Option<&ExperimentLedger> {
        self.experiments.get(usize::from(id))
    }

    /// Checks that `ev` can be applied, without applying it.
    pub fn check(&self, ev: &LedgerEvent) -> Result<(), LedgerError> {
        let mut copy = self.clone();
        copy.apply(ev).map(|_| ())
    }

    /// Applies `ev` whole or not at all; returns the experiment's id.
    pub fn apply(&mut self, ev: &LedgerEvent) -> Result<ExperimentId, LedgerError> {
        let existing = self
            .experiments
            .iter()
            .position(|e| e.name == ev.experiment);
        let (mut variants, want) = match existing {
            Some(i) => {
                let x = &self.experiments[i];
                (x.variants.clone(), x.current().epoch.next())
            }
            None => (Vec::new(), Epoch::FIRST),
        };
        if ev.record.epoch != want {
            return Err(LedgerError::OutOfOrder {
                experiment: ev.experiment.clone(),
                got: ev.record.epoch.0,
                want: want.0,
            });
        }
        if ev.record.epoch.0 > super::store::MAX_EPOCH {
            return Err(LedgerError::EpochOverflow(ev.experiment.clone()));
        }
        for v in &ev.record.rule.variants {
            if !variants.contains(&v.name) {
                variants.push(v.name.clone());
            }
        }
        if variants.len() > 256 {
            return Err(LedgerError::TooManyVariants(ev.experiment.clone()));
        }
        let i = match existing {
            Some(i) => i,
            None => {
                let id = ExperimentId::try_from(self.experiments.len())
                    .map_err(|_| LedgerError::TooManyExperiments)?;
                self.experiments.push(ExperimentLedger {
                    id,
                    name: ev.experiment.clone(),
                    variants: Vec::new(),
                    epochs: Vec::new(),
                });
                self.experiments.len() - 1
            }
        };
        let x = &mut self.experiments[i];
        x.variants = variants;
        x.epochs.push(ev.record.clone());
        Ok(x.id)
    }
}
