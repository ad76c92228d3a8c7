//! Why a store operation failed.

use std::io;
use std::path::PathBuf;

use crate::assign::ledger::{ExperimentId, LedgerError};

/// Why opening, reading or writing the store failed. Every variant leaves
/// what is on disk consistent: nothing acknowledged is lost.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The OS refused an operation on a store file or directory.
    #[error("store {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The directory exists but cannot hold the store's files (a pseudo
    /// filesystem such as `/proc`).
    #[error("store {}: cannot be a store directory: {why}", path.display())]
    NotAStoreDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it, and what to give instead.
        why: String,
    },
    /// Another process holds the store directory's lock file.
    #[error("store {0} is in use by another cohort process")]
    Locked(PathBuf),
    /// The journal is damaged in a way replay must not repair by truncating
    /// (a bad magic, or a bad record well before the end).
    #[error("store {path}: corrupt journal: {what}")]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// What is wrong and where, with what to do about it.
        what: String,
    },
    /// A ledger event was refused; nothing was journaled.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The writer thread is gone (the process is shutting down).
    #[error("the store writer has stopped")]
    Closed,
    /// Writing or syncing a batch failed (or an earlier failure left the
    /// journal unwritable): every waiter of the batch gets this, and none of
    /// its records counts as stored.
    #[error("journal write failed: {0}")]
    Write(String),
    /// The assignment was made under an epoch the experiment has left (a
    /// reload landed while the request was in flight); assign again under
    /// the current snapshot.
    #[error("experiment {experiment} moved on to epoch {current} while this request was assigned under {got}")]
    Stale {
        /// The experiment's ledger id.
        experiment: ExperimentId,
        /// The epoch the request was assigned under.
        got: u32,
        /// The experiment's epoch now.
        current: u32,
    },
    /// The shared store did not answer (down, slow past `store.timeout`,
    /// or refusing): with `on_store_error: reject` the request gets 503.
    #[error("shared store unavailable: {0}")]
    Unavailable(String),
    /// Another replica appended to the shared ledger after this one read
    /// it: the change must be planned again against the new ledger.
    #[error("another replica changed the shared ledger meanwhile")]
    LedgerMoved,
}
