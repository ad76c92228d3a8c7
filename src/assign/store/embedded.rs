//! The store a serving process owns: the journal in one directory, locked
//! against a second process, replayed at open, then written by the group
//! commit thread ([`super::writer`]) while requests read the tables.

use crate::terms::Durability;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::StoreError;
use super::replay::{open_journal, JOURNAL_FILE};
use super::reply;
use super::shared::Shared;
use super::table::{Assigned, Assignment, Table};
use super::writer::{write_loop, Cmd, SyncTimes, SYNC_BOUNDS};
use crate::assign::epoch::Epoch;
use crate::assign::hash::UnitKey;
use crate::assign::ledger::{ExperimentId, Ledger, LedgerEvent, UnitCounts, VariantId};

/// The embedded journal store: open once per process.
pub struct Embedded {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Cmd>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Held for the lifetime of the store (or until [`Embedded::release`]):
    /// one process per store directory.
    lock: File,
    /// How long the writer's syncs took.
    times: Arc<SyncTimes>,
}

impl Embedded {
    /// Opens (or creates) the store in `dir` and replays its journal.
    pub fn open(dir: &Path, durability: Durability) -> Result<Embedded, StoreError> {
        let io_err = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
            // The new directory's entry must be durable too, or a crash
            // could lose the whole store with the assignments in it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err)?;
            }
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|source| no_lock_file(dir, source))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(dir.to_path_buf()));
        }
        let path = dir.join(JOURNAL_FILE);
        let shared = Arc::new(Shared {
            path: path.clone(),
            ledger: Mutex::new(Ledger::default()),
            ledger_events: Default::default(),
            tables: Mutex::new(Vec::new()),
        });
        let journal = open_journal(&path, &shared)?;
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let times = Arc::new(SyncTimes::new(&SYNC_BOUNDS));
        let writer_times = times.clone();
        let writer = std::thread::Builder::new()
            .name("cohort-store".into())
            .spawn(move || write_loop(journal, rx, writer_shared, durability, writer_times))
            .map_err(io_err)?;
        Ok(Embedded {
            shared,
            tx,
            writer: Mutex::new(Some(writer)),
            lock,
            times,
        })
    }

    /// A copy of the epoch ledger.
    pub fn ledger(&self) -> Ledger {
        self.shared.ledger.lock().expect("ledger lock").clone()
    }

    /// The assignments of experiment `id`, created empty if it has none
    /// yet; the same table for the life of the store (a reset clears it).
    pub fn table(&self, id: ExperimentId) -> Arc<Table> {
        self.shared.table(id)
    }

    /// Journals `events` durably and atomically (one write, one fsync, all
    /// or none), then applies them in order.
    pub async fn append_ledger(&self, events: Vec<LedgerEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let (reply, rx) = reply::channel();
        self.tx
            .send(Cmd::Ledger { events, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await?
    }

    /// Records `variant` at `epoch` for a new unit and returns once it is on
    /// disk (written only, with `durability: write`). If the unit was
    /// stored meanwhile, returns that assignment instead.
    pub async fn assign(
        &self,
        experiment: ExperimentId,
        key: UnitKey,
        variant: VariantId,
        epoch: Epoch,
    ) -> Result<Assigned, StoreError> {
        let assignment = Assignment {
            variant,
            epoch,
            first_seen: unix_now(),
        };
        let (reply, rx) = reply::channel();
        self.tx
            .send(Cmd::Assign {
                experiment,
                key,
                assignment,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await?
    }

    /// The number of ledger events journaled so far: the ledger's version.
    pub(super) fn ledger_version(&self) -> u64 {
        self.shared
            .ledger_events
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long the journal's syncs took: (sum in seconds, count,
    /// per-bucket counts, not cumulative).
    pub fn sync_times(&self) -> super::SyncHistogram {
        SyncTimes::read(std::iter::once(&*self.times))
    }

    /// Waits until everything queued so far is on disk.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (reply, rx) = reply::channel();
        self.tx
            .send(Cmd::Sync { reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await?
    }
}

impl Embedded {
    /// Syncs the journal, stops writing it and unlocks the directory, so
    /// another process (a binary upgrade's new one) may open it while this
    /// one still serves what needs no new assignment: stored units are
    /// read from memory, a new unit's assignment fails (`StoreError::Closed`).
    pub async fn release(&self) -> Result<(), StoreError> {
        let (reply, rx) = reply::channel();
        self.tx
            .send(Cmd::Release { reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await??;
        self.lock.unlock().map_err(|source| StoreError::Io {
            path: self.shared.path.clone(),
            source,
        })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // Replace our sender so the writer's channel closes, then join it.
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, dead));
        if let Some(h) = self.writer.lock().expect("writer lock").take() {
            let _ = h.join();
        }
    }
}

impl UnitCounts for Embedded {
    fn units(&self, experiment: ExperimentId, variant: VariantId) -> u64 {
        self.table(experiment).units(variant)
    }
}

pub(super) fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
}

/// Why the lock file could not be made in `dir`. A directory that exists
/// yet answers "no such file" to a new file in it is a pseudo filesystem
/// (`/proc/self`, `/sys`): say so rather than the OS's misleading words.
fn no_lock_file(dir: &Path, source: std::io::Error) -> StoreError {
    if source.kind() == std::io::ErrorKind::NotFound && dir.is_dir() {
        return StoreError::NotAStoreDir {
            path: dir.to_path_buf(),
            why: format!(
                "it does not accept new files (creating {} failed: {source}); it looks like a pseudo filesystem such as /proc or /sys. Give store.path a directory on persistent local disk",
                dir.join("lock").display()
            ),
        };
    }
    StoreError::Io {
        path: dir.to_path_buf(),
        source,
    }
}
