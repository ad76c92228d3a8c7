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
//! **Memory.** The map keys a 128-bit digest of (experiment, unit) and packs
//! (variant id, epoch, first-seen second) in one u64: 24 bytes an entry, plus
//! hashbrown's control byte and load-factor slack (see BENCHMARKS.md).
//!
//! The parts, one job each: `table` (the in-memory map of one experiment),
//! `shared` (the ledger and tables the writer, replay and views fill),
//! `replay` (opening a journal and rebuilding the state from it),
//! `writer` (the group-commit thread), `embedded` (the [`Store`] a
//! process serves from) and `view` (a read-only [`StoreView`]).

mod embedded;
mod error;
mod replay;
mod shared;
mod table;
mod view;
mod writer;

pub use embedded::Store;
pub use error::StoreError;
pub use table::{Assigned, Assignment, Table};
pub use view::StoreView;

#[cfg(test)]
mod tests;
