//! Why a store operation failed.

use std::io;
use std::path::PathBuf;

use crate::assign::ledger::{ExperimentId, LedgerError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("store {}: cannot be a store directory: {why}", path.display())]
    NotAStoreDir { path: PathBuf, why: String },
    #[error("store {0} is in use by another cohort process")]
    Locked(PathBuf),
    #[error("store {path}: corrupt journal: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("the store writer has stopped")]
    Closed,
    #[error("journal write failed: {0}")]
    Write(String),
    /// The assignment was made under an epoch the experiment has left (a
    /// reload landed while the request was in flight); assign again under
    /// the current snapshot.
    #[error("experiment {experiment} moved on to epoch {current} while this request was assigned under {got}")]
    Stale {
        experiment: ExperimentId,
        got: u32,
        current: u32,
    },
}
