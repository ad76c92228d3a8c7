//! A read-only look at a store, for the offline commands.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use super::error::StoreError;
use super::replay::{replay_journal, JOURNAL_FILE};
use super::shared::Shared;
use super::table::Assignment;
use crate::assign::hash::UnitKey;
use crate::assign::ledger::{ExperimentId, Ledger, UnitCounts, VariantId};

/// A read-only look at a store that another process may be running:
/// replays the journal without taking the lock or writing anything (a
/// torn tail is left as it is). For `cohort plan --store` and `history`.
pub struct StoreView {
    shared: Shared,
}

impl StoreView {
    /// Replays the journal in the store directory `dir` as it is now; later
    /// writes by its owner are not seen.
    pub fn open(dir: &Path) -> Result<StoreView, StoreError> {
        let path = dir.join(JOURNAL_FILE);
        let shared = Shared {
            path: path.clone(),
            ledger: Mutex::new(Ledger::default()),
            ledger_events: Default::default(),
            tables: Mutex::new(Vec::new()),
        };
        let mut file = File::open(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        replay_journal(&mut file, &path, &shared)?;
        Ok(StoreView { shared })
    }

    /// Every stored assignment: (experiment id, unit key, assignment).
    pub fn assignments(&self) -> Vec<(ExperimentId, UnitKey, Assignment)> {
        let tables = self.shared.tables.lock().expect("tables lock").clone();
        let mut out = Vec::new();
        for (id, t) in tables.iter().enumerate() {
            for (k, a) in t.entries() {
                out.push((id as ExperimentId, k, a));
            }
        }
        out
    }

    /// A copy of the replayed epoch ledger.
    pub fn ledger(&self) -> Ledger {
        self.shared.ledger.lock().expect("ledger lock").clone()
    }

    /// The stored assignment of `unit` in `experiment`.
    pub fn get(&self, experiment: &str, unit: &[u8]) -> Option<Assignment> {
        let id = self
            .shared
            .ledger
            .lock()
            .expect("ledger lock")
            .get(experiment)?
            .id;
        self.shared
            .table(id)
            .get(&crate::assign::hash::unit_key(experiment, unit))
    }
}

impl UnitCounts for StoreView {
    fn units(&self, experiment: ExperimentId, variant: VariantId) -> u64 {
        self.shared.table(experiment).units(variant)
    }
}
