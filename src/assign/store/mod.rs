//! Sticky assignments: an in-memory map per experiment in front of the
//! journal on local disk ([`super::journal`]).
//!
//! **Why a journal and not an embedded database.** Assignments are immutable
//! 28-byte facts that are only ever added (or dropped wholesale by a reset),
//! and every one is also held in memory. An append-only file with group
//! commit is the whole storage engine this needs: no compaction of updates,
//! no B-tree, one `fdatasync` shared by every new unit that arrived while the
//! previous one ran. An embedded B-tree store (redb, sled) would add a page
//! cache that duplicates the map and a commit path we would still batch by
//! hand.
//!
//! **fsync policy.** A new unit's response waits until its record is on disk:
//! the writer thread appends every queued record, calls `fdatasync` once,
//! then inserts the records into the map in journal order and answers each
//! waiter. Returning units read the map and touch no disk. So a unit that
//! received a stamped response is durable, and replay order equals the
//! order the map was filled in (first record of a key wins in both).
//!
//! **What a first exposure costs** (`benches/first-exposures.sh`, one
//! worker, 64 connections, 2-vCPU VM, the runtime and the writer on one
//! core): about 60 new units share each `fdatasync`, because the writer
//! yields the core once before it drains the queue, so the runtime queues
//! every first exposure it has in hand first. The journal is zero-filled
//! ahead of its records, so that sync writes data only (two block
//! requests, no filesystem-journal commit), and the answers reach each
//! runtime through one wake-up per batch (`reply`). A new unit then costs
//! 16.0 µs of CPU against a returning one's 14.3 (24.5 before these
//! changes), 4.2 syscalls against 4.0 (5.4 before) and 0.14 context
//! switches against 0.03 (0.63 before); the writer thread's share is 1.5
//! µs (6.2 before).
//!
//! The parts, one job each: `table` (the in-memory map of one experiment),
//! `shared` (the ledger and tables the writer, replay and views fill),
//! `replay` (opening a journal and rebuilding the state from it),
//! `writer` (the group-commit thread), `reply` (its answers, one wake-up
//! per batch and runtime), `embedded` (the journal backend)
//! and `view` (a read-only [`StoreView`]).
//!
//! **Backends.** [`Backend`] is what a process serves from; it has two
//! implementations: the embedded journal ([`Embedded`], the default, one
//! process) and Redis ([`RedisStore`], shared by every replica; see its
//! module for keys, first-writer-wins and degraded mode). [`Store`] is the
//! one a process opens, dispatching to either.

mod embedded;
mod error;
pub mod redis;
mod replay;
mod reply;
mod shared;
mod table;
mod view;
mod writer;

use crate::terms::Durability;
use std::future::Future;
use std::sync::Arc;

pub use self::redis::{RedisOptions, RedisStore, StoreHealth};
pub use crate::terms::HistogramRead as SyncHistogram;
pub use embedded::Embedded;
pub use error::StoreError;
pub use table::{Assigned, Assignment, Table};
pub use view::StoreView;

use crate::assign::epoch::Epoch;
use crate::assign::hash::UnitKey;
use crate::assign::ledger::{ExperimentId, Ledger, LedgerEvent, UnitCounts, VariantId};

/// What serving needs of an assignment store, whichever engine keeps it.
pub trait Backend: UnitCounts + Send + Sync {
    /// The epoch ledger as this process knows it.
    fn ledger(&self) -> Ledger;
    /// The ledger read afresh for planning a change, and its version.
    fn fresh_ledger(&self) -> impl Future<Output = Result<(Ledger, u64), StoreError>> + Send;
    /// Appends `events` if the ledger is still at `version`, else
    /// [`StoreError::LedgerMoved`].
    fn append_ledger_at(
        &self,
        events: Vec<LedgerEvent>,
        version: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The assignments of experiment `id` held in memory.
    fn table(&self, id: ExperimentId) -> Arc<Table>;
    /// Stores a new unit's assignment unless one is stored (first writer
    /// wins); returns what is stored.
    fn assign(
        &self,
        id: ExperimentId,
        key: UnitKey,
        variant: VariantId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<Assigned, StoreError>> + Send;
}

impl Backend for Embedded {
    fn ledger(&self) -> Ledger {
        Embedded::ledger(self)
    }
    async fn fresh_ledger(&self) -> Result<(Ledger, u64), StoreError> {
        // One process owns the journal: what it holds is the newest.
        Ok((Embedded::ledger(self), self.ledger_version()))
    }
    async fn append_ledger_at(
        &self,
        events: Vec<LedgerEvent>,
        _version: u64,
    ) -> Result<(), StoreError> {
        self.append_ledger(events).await
    }
    fn table(&self, id: ExperimentId) -> Arc<Table> {
        Embedded::table(self, id)
    }
    async fn assign(
        &self,
        id: ExperimentId,
        key: UnitKey,
        variant: VariantId,
        epoch: Epoch,
    ) -> Result<Assigned, StoreError> {
        Embedded::assign(self, id, key, variant, epoch).await
    }
}

impl Backend for RedisStore {
    fn ledger(&self) -> Ledger {
        RedisStore::ledger(self)
    }
    async fn fresh_ledger(&self) -> Result<(Ledger, u64), StoreError> {
        RedisStore::fresh_ledger(self).await
    }
    async fn append_ledger_at(
        &self,
        events: Vec<LedgerEvent>,
        version: u64,
    ) -> Result<(), StoreError> {
        RedisStore::append_ledger_at(self, events, version).await
    }
    fn table(&self, id: ExperimentId) -> Arc<Table> {
        RedisStore::table(self, id)
    }
    async fn assign(
        &self,
        id: ExperimentId,
        key: UnitKey,
        variant: VariantId,
        epoch: Epoch,
    ) -> Result<Assigned, StoreError> {
        RedisStore::assign(self, id, key, variant, epoch).await
    }
}

/// The store a serving process opened: the embedded journal or Redis.
pub enum Store {
    /// The journal in one local directory (one process).
    Embedded(Embedded),
    /// Redis, shared by every replica.
    Redis(Arc<RedisStore>),
}

impl Store {
    /// Opens the embedded journal in `dir`, answering new units once
    /// their assignment is synced.
    pub fn open(dir: &std::path::Path) -> Result<Store, StoreError> {
        Store::open_with(dir, Durability::Sync)
    }

    /// Opens the embedded journal in `dir` with the given durability.
    pub fn open_with(dir: &std::path::Path, durability: Durability) -> Result<Store, StoreError> {
        Embedded::open(dir, durability).map(Store::Embedded)
    }

    /// Connects to Redis and reads the shared ledger.
    pub async fn open_redis(opts: RedisOptions) -> Result<Store, StoreError> {
        RedisStore::open(opts).await.map(Store::Redis)
    }

    /// How long the embedded journal's syncs took (`None` for Redis):
    /// (sum in seconds, count, per-bucket counts, not cumulative).
    pub fn sync_times(&self) -> Option<SyncHistogram> {
        match self {
            Store::Embedded(s) => Some(s.sync_times()),
            Store::Redis(_) => None,
        }
    }

    /// The Redis backend, if this is one.
    pub fn shared(&self) -> Option<&Arc<RedisStore>> {
        match self {
            Store::Redis(r) => Some(r),
            Store::Embedded(_) => None,
        }
    }

    /// The epoch ledger as this process knows it.
    pub fn ledger(&self) -> Ledger {
        match self {
            Store::Embedded(s) => s.ledger(),
            Store::Redis(s) => s.ledger(),
        }
    }

    /// The ledger read afresh (from Redis for the shared store), with its
    /// version for [`Store::append_ledger_at`].
    pub async fn fresh_ledger(&self) -> Result<(Ledger, u64), StoreError> {
        match self {
            Store::Embedded(s) => Backend::fresh_ledger(s).await,
            Store::Redis(s) => s.fresh_ledger().await,
        }
    }

    /// Appends `events` if the ledger is still at `version`.
    pub async fn append_ledger_at(
        &self,
        events: Vec<LedgerEvent>,
        version: u64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.append_ledger(events).await,
            Store::Redis(s) => s.append_ledger_at(events, version).await,
        }
    }

    /// Appends `events` whatever the ledger's version (they apply to any:
    /// an admin pause).
    pub async fn append_ledger(&self, events: Vec<LedgerEvent>) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.append_ledger(events).await,
            Store::Redis(s) => s.append_ledger(events).await,
        }
    }

    /// The assignments of experiment `id` held in memory.
    pub fn table(&self, id: ExperimentId) -> Arc<Table> {
        match self {
            Store::Embedded(s) => s.table(id),
            Store::Redis(s) => s.table(id),
        }
    }

    /// A unit's stored assignment when this process has not cached it: only
    /// the shared store can hold one this process has not seen.
    pub async fn lookup(
        &self,
        id: ExperimentId,
        key: UnitKey,
    ) -> Result<Option<Assignment>, StoreError> {
        match self {
            Store::Embedded(_) => Ok(None),
            Store::Redis(s) => s.lookup(id, key).await,
        }
    }

    /// Stores a new unit's assignment unless one is stored (first writer
    /// wins); returns what is stored.
    pub async fn assign(
        &self,
        id: ExperimentId,
        key: UnitKey,
        variant: VariantId,
        epoch: Epoch,
    ) -> Result<Assigned, StoreError> {
        match self {
            Store::Embedded(s) => s.assign(id, key, variant, epoch).await,
            Store::Redis(s) => s.assign(id, key, variant, epoch).await,
        }
    }

    /// Waits until everything acknowledged is durable (embedded: on disk;
    /// Redis acknowledges each write itself).
    pub async fn sync(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.sync().await,
            Store::Redis(_) => Ok(()),
        }
    }

    /// Syncs and lets another process open the store: the embedded
    /// journal's lock is released and this process assigns no new unit
    /// after it ([`Embedded::release`]); Redis is shared anyway.
    pub async fn release(&self) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.release().await,
            Store::Redis(r) => {
                r.settle(std::time::Duration::from_secs(2)).await;
                Ok(())
            }
        }
    }
}

impl UnitCounts for Store {
    fn units(&self, experiment: ExperimentId, variant: VariantId) -> u64 {
        match self {
            Store::Embedded(s) => s.units(experiment, variant),
            Store::Redis(s) => s.units(experiment, variant),
        }
    }
}

#[cfg(test)]
mod tests;
