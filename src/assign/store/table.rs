//! One experiment's assignments in memory: a concurrent map from the
//! 128-bit unit key to the packed (variant, epoch, first-seen) value, and
//! per-variant unit counts. Filled only by the writer and by replay, in
//! journal order, so the first record of a key wins in both.

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;

use crate::assign::epoch::Epoch;
use crate::assign::hash::UnitKey;
use crate::assign::ledger::VariantId;

/// A unit's stored assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// The variant's index in its experiment's ledger dictionary.
    pub variant: VariantId,
    /// The epoch whose rule assigned it (never [`Epoch::UNASSIGNED`]).
    pub epoch: Epoch,
    /// Unix seconds of the first exposure.
    pub first_seen: u32,
}

impl Assignment {
    pub(super) fn pack(self) -> u64 {
        u64::from(self.variant)
            | (u64::from(self.epoch.0) << 8)
            | (u64::from(self.first_seen) << 32)
    }

    pub(super) fn unpack(v: u64) -> Assignment {
        Assignment {
            variant: (v & 0xff) as u8,
            epoch: Epoch(((v >> 8) & 0xff_ffff) as u32),
            first_seen: (v >> 32) as u32,
        }
    }
}

impl Hash for UnitKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a uniform digest: one word is all the hasher needs.
        state.write_u64(self.0[0] ^ self.0[1].rotate_left(32));
    }
}

/// Passes a digest word through: the key is already uniformly distributed.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Shards of the map, each under its own lock and grown on its own. A
/// shard doubles (rehashes every entry) when it is 7/8 full, holding its
/// lock and the store's writer thread meanwhile: with DashMap's default
/// (4 × cores: 8 on 2 cores) one such pause at a million units took
/// 3.6 ms of the writer's time and every first exposure of its batch
/// waited for it; with 64 shards 0.47 ms, with 256 0.12 ms (insert 1M
/// units, longest single insert; release build, 2-vCPU VM). 64, because
/// every experiment id ever used keeps a table and each shard costs 128
/// bytes: 8 KiB an experiment.
const SHARDS: usize = 64;

/// One experiment's assignments.
pub struct Table {
    map: DashMap<UnitKey, u64, BuildHasherDefault<DigestHasher>>,
    units: Vec<AtomicU64>,
    /// The admin kill switch; shared by every snapshot, so pausing needs no reload.
    pub(super) admin_paused: AtomicBool,
}

impl Table {
    pub(super) fn new() -> Table {
        Table::with_capacity(0)
    }

    pub(super) fn with_capacity(units: usize) -> Table {
        Table {
            map: DashMap::with_capacity_and_hasher_and_shard_amount(
                units,
                BuildHasherDefault::default(),
                SHARDS,
            ),
            units: (0..256).map(|_| AtomicU64::new(0)).collect(),
            admin_paused: AtomicBool::new(false),
        }
    }

    /// The unit's stored assignment, if it has one.
    pub fn get(&self, key: &UnitKey) -> Option<Assignment> {
        self.map.get(key).map(|v| Assignment::unpack(*v))
    }

    /// Units stored for `variant`.
    pub fn units(&self, variant: VariantId) -> u64 {
        self.units[usize::from(variant)].load(Ordering::Relaxed)
    }

    /// Units stored, all variants together.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether an admin paused this experiment.
    pub fn admin_paused(&self) -> bool {
        self.admin_paused.load(Ordering::Relaxed)
    }

    /// Whether no unit is stored (a new experiment, or just reset).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts unless present; returns the stored value and whether it is new.
    pub(super) fn insert_first(&self, key: UnitKey, a: Assignment) -> (Assignment, bool) {
        let mut created = false;
        let v = *self.map.entry(key).or_insert_with(|| {
            created = true;
            a.pack()
        });
        if created {
            self.units[usize::from(a.variant)].fetch_add(1, Ordering::Relaxed);
        }
        (Assignment::unpack(v), created)
    }

    /// Every stored (unit key, assignment), in no order.
    pub(super) fn entries(&self) -> Vec<(UnitKey, Assignment)> {
        self.map
            .iter()
            .map(|e| (*e.key(), Assignment::unpack(*e.value())))
            .collect()
    }

    pub(super) fn clear(&self) {
        self.map.clear();
        self.map.shrink_to_fit();
        for u in &self.units {
            u.store(0, Ordering::Relaxed);
        }
    }
}

/// The result of asking for a new unit's assignment.
#[derive(Debug, Clone, Copy)]
pub struct Assigned {
    /// The unit's assignment as stored: the one asked for, or the winner's.
    pub assignment: Assignment,
    /// False when a concurrent first request of the same unit won the race.
    pub created: bool,
    /// The shared store could not be reached: the assignment was made by
    /// the contract hash and will be written back later (`serve_by_hash`).
    pub degraded: bool,
}
