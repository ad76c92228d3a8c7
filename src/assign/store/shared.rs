//! The state the writer thread, replay and read-only views all fill: the
//! epoch ledger and one [`Table`] per experiment id.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::table::Table;
use crate::assign::ledger::{ExperimentId, Ledger, LedgerError, LedgerEvent};

pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) ledger: Mutex<Ledger>,
    /// Ledger events applied so far: the ledger's version.
    pub(super) ledger_events: std::sync::atomic::AtomicU64,
    pub(super) tables: Mutex<Vec<Arc<Table>>>,
}

impl Shared {
    pub(super) fn table(&self, id: ExperimentId) -> Arc<Table> {
        self.table_sized(id, 0)
    }

    /// Creates `id`'s table sized for `units`, unless it exists: replay
    /// sizes each map once instead of growing it (and the garbage of every
    /// smaller map it grew out of) record by record.
    pub(super) fn reserve(&self, id: ExperimentId, units: usize) {
        self.table_sized(id, units);
    }

    /// `id`'s table, created (sized for `units`) if it does not exist yet.
    pub(super) fn table_sized(&self, id: ExperimentId, units: usize) -> Arc<Table> {
        let mut t = self.tables.lock().expect("tables lock");
        while t.len() < usize::from(id) {
            t.push(Arc::new(Table::new()));
        }
        if t.len() == usize::from(id) {
            t.push(Arc::new(Table::with_capacity(units)));
        }
        t[usize::from(id)].clone()
    }

    pub(super) fn apply_ledger(&self, ev: &LedgerEvent) -> Result<(), LedgerError> {
        let id = self.ledger.lock().expect("ledger lock").apply(ev)?;
        self.ledger_events.fetch_add(1, Ordering::Relaxed);
        match (ev, id) {
            (LedgerEvent::Epoch { record, .. }, Some(id)) => {
                let table = self.table(id);
                if record.dropped_assignments {
                    table.clear();
                }
            }
            (LedgerEvent::Pause { paused, .. }, Some(id)) => {
                self.table(id)
                    .admin_paused
                    .store(*paused, Ordering::Relaxed);
            }
            _ => {}
        }
        Ok(())
    }
}
