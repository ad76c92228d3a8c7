//! The epoch ledger: for every experiment ever applied, each epoch's rule,
//! when it began and under which config version, plus the dictionary of
//! variant names that stored assignments refer to by index.
//!
//! The ledger changes only through [`LedgerEvent`]s, which are journaled
//! before they take effect; replaying the journal's events through
//! `Ledger::apply` rebuilds exactly the same ledger after a restart.

use serde::{Deserialize, Serialize};

use super::epoch::{Epoch, Rule};

/// Index of an experiment in the store (dense, assigned on first apply).
pub type ExperimentId = u16;
/// Index of a variant name in its experiment's dictionary.
pub type VariantId = u8;

/// One epoch of one experiment: the rule new units were assigned by from
/// `started_at` until the next epoch began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Its number: [`Epoch::FIRST`] for the experiment's first rule, then
    /// each epoch the previous one's successor.
    pub epoch: Epoch,
    /// The rule it assigns new units by.
    pub rule: Rule,
    /// When it was applied (RFC 3339, UTC).
    pub started_at: String,
    /// The version of the config that started it.
    pub config_version: String,
    /// The `reset` counter this epoch was started under.
    pub reset: u64,
    /// Whether this epoch dropped every stored assignment (an explicit reset).
    pub dropped_assignments: bool,
}

/// Everything the store remembers of one experiment, whether or not the
/// applied config still has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentLedger {
    /// Its index in [`Ledger::experiments`], which journal records use.
    pub id: ExperimentId,
    /// The experiment's configured name.
    pub name: String,
    /// Every variant name ever used; stored assignments hold an index into it.
    pub variants: Vec<String>,
    /// Its epochs, oldest first and numbered without gaps; never empty.
    pub epochs: Vec<EpochRecord>,
}

impl ExperimentLedger {
    /// The epoch new units are assigned under now: the last one.
    pub fn current(&self) -> &EpochRecord {
        self.epochs
            .last()
            .expect("a ledger entry has at least one epoch")
    }

    /// The dictionary index of variant `name`, if the experiment ever had it.
    pub fn variant_id(&self, name: &str) -> Option<VariantId> {
        self.variants
            .iter()
            .position(|v| v == name)
            .map(|i| i as VariantId)
    }
}

/// A change to the ledger, journaled before it takes effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LedgerEvent {
    /// An experiment starts an epoch (its first, a rule change, a reset).
    Epoch {
        /// The experiment's name (its id is assigned when first seen).
        experiment: String,
        /// The epoch it starts, which must follow its current one.
        record: EpochRecord,
    },
    /// The admin kill switch, kept across restarts until resumed.
    Pause {
        /// The experiment's name.
        experiment: String,
        /// `true` pauses it, `false` resumes it.
        paused: bool,
        /// When the operator asked (RFC 3339, UTC).
        at: String,
    },
    /// A config was applied: the history an operator reads back.
    Applied(AppliedConfig),
}

impl LedgerEvent {
    /// The event that starts `record` for `experiment`.
    pub fn epoch(experiment: &str, record: EpochRecord) -> LedgerEvent {
        LedgerEvent::Epoch {
            experiment: experiment.to_string(),
            record,
        }
    }
}

/// One applied config, as `cohort history` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedConfig {
    /// The config's version ([`crate::config::Config::version`]).
    pub config_version: String,
    /// When it was applied (RFC 3339, UTC).
    pub applied_at: String,
    /// What applied it: start-up, file change, SIGHUP, admin.
    pub trigger: String,
    /// The plan summary, as logged.
    pub summary: String,
    /// The applied config's record, for routing diffs against it later. Its
    /// schema is `config::record` (versioned); to the ledger it is opaque.
    pub config: serde_json::Value,
}

/// The whole ledger: what replaying every journaled [`LedgerEvent`] in order
/// produces, and what `cohort plan` and `cohort history` read back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Every experiment ever applied, indexed by [`ExperimentId`].
    pub experiments: Vec<ExperimentLedger>,
    /// Experiments paused through the admin API.
    #[serde(default)]
    pub admin_paused: std::collections::BTreeSet<String>,
    /// Every applied config, oldest first.
    #[serde(default)]
    pub history: Vec<AppliedConfig>,
    /// Every admin pause and resume: (experiment, paused, at).
    #[serde(default)]
    pub pause_log: Vec<(String, bool, String)>,
}

/// Why a ledger event cannot be applied. Checked before it is journaled, so
/// a refused change leaves both the ledger and the journal as they were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The experiment's variant dictionary (one byte per stored assignment)
    /// would pass 256 names.
    #[error("experiment {0:?} would exceed 256 variant names over its lifetime")]
    TooManyVariants(String),
    /// The experiment would pass [`Epoch::MAX`].
    #[error("experiment {0:?} has reached the largest epoch the store can hold")]
    EpochOverflow(String),
    /// The event's journal record, this many bytes long, is over
    /// [`super::journal::MAX_RECORD`].
    #[error(
        "a ledger record of {0} bytes is over the journal's 64 MiB limit (huge overrides lists?)"
    )]
    TooLarge(usize),
    /// A new experiment would not fit an [`ExperimentId`].
    #[error("more than 65536 experiments")]
    TooManyExperiments,
    /// An epoch that is not its experiment's next one.
    #[error("epoch {got} for {experiment:?} does not follow {want}")]
    OutOfOrder {
        /// The experiment's name.
        experiment: String,
        /// The epoch the event carries.
        got: u32,
        /// The epoch that would follow the experiment's current one.
        want: u32,
    },
}

impl Ledger {
    /// The experiment named `name`, if it was ever applied.
    pub fn get(&self, name: &str) -> Option<&ExperimentLedger> {
        self.experiments.iter().find(|e| e.name == name)
    }

    /// The experiment a journal record's `id` refers to.
    pub fn by_id(&self, id: ExperimentId) -> Option<&ExperimentLedger> {
        self.experiments.get(usize::from(id))
    }

    /// The last applied config, if any.
    pub fn last_applied(&self) -> Option<&AppliedConfig> {
        self.history.last()
    }

    /// Applies `ev` whole or not at all; returns the id of the experiment
    /// it concerns, if any.
    pub(crate) fn apply(&mut self, ev: &LedgerEvent) -> Result<Option<ExperimentId>, LedgerError> {
        match ev {
            LedgerEvent::Epoch { experiment, record } => {
                self.start_epoch(experiment, record).map(Some)
            }
            LedgerEvent::Pause {
                experiment,
                paused,
                at,
            } => {
                self.pause_log
                    .push((experiment.clone(), *paused, at.clone()));
                if *paused {
                    self.admin_paused.insert(experiment.clone());
                } else {
                    self.admin_paused.remove(experiment);
                }
                Ok(self.get(experiment).map(|x| x.id))
            }
            LedgerEvent::Applied(a) => {
                self.history.push(a.clone());
                Ok(None)
            }
        }
    }

    fn start_epoch(
        &mut self,
        experiment: &str,
        record: &EpochRecord,
    ) -> Result<ExperimentId, LedgerError> {
        let existing = self.experiments.iter().position(|e| e.name == experiment);
        let (mut variants, want) = match existing {
            Some(i) => {
                let x = &self.experiments[i];
                (x.variants.clone(), x.current().epoch.next())
            }
            None => (Vec::new(), Epoch::FIRST),
        };
        if record.epoch != want {
            return Err(LedgerError::OutOfOrder {
                experiment: experiment.to_string(),
                got: record.epoch.0,
                want: want.0,
            });
        }
        if record.epoch > Epoch::MAX {
            return Err(LedgerError::EpochOverflow(experiment.to_string()));
        }
        for v in &record.rule.variants {
            if !variants.contains(&v.name) {
                variants.push(v.name.clone());
            }
        }
        if variants.len() > 256 {
            return Err(LedgerError::TooManyVariants(experiment.to_string()));
        }
        let i = match existing {
            Some(i) => i,
            None => {
                let id = ExperimentId::try_from(self.experiments.len())
                    .map_err(|_| LedgerError::TooManyExperiments)?;
                self.experiments.push(ExperimentLedger {
                    id,
                    name: experiment.to_string(),
                    variants: Vec::new(),
                    epochs: Vec::new(),
                });
                self.experiments.len() - 1
            }
        };
        let x = &mut self.experiments[i];
        x.variants = variants;
        x.epochs.push(record.clone());
        Ok(x.id)
    }
}

/// Stored units of (experiment, variant); from the store, a fixture in tests.
pub trait UnitCounts {
    /// How many stored units `experiment` holds in the variant with
    /// dictionary index `variant`.
    fn units(&self, experiment: ExperimentId, variant: VariantId) -> u64;
}

/// Stored units of each variant name `l` has ever had, in dictionary order.
pub(crate) fn units_by_variant(
    l: &ExperimentLedger,
    counts: &dyn UnitCounts,
) -> Vec<(String, u64)> {
    l.variants
        .iter()
        .enumerate()
        .map(|(vid, n)| (n.clone(), counts.units(l.id, vid as VariantId)))
        .collect()
}
