//! The store's tests: durability, first-writer-wins, torn tails, resets,
//! and parallel replay against sequential replay.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::replay::{replay_journal_with, JOURNAL_FILE};
use super::shared::Shared;
use super::*;
use crate::assign::buckets::Weight;
use crate::assign::epoch::Epoch;
use crate::assign::epoch::{Rule, RuleVariant};
use crate::assign::hash::unit_key;
use crate::assign::ledger::EpochRecord;
use crate::assign::ledger::{Ledger, LedgerEvent};

fn event(epoch: u32, dropped: bool) -> LedgerEvent {
    LedgerEvent::Epoch {
        experiment: "e".into(),
        record: EpochRecord {
            epoch: Epoch(epoch),
            rule: Rule {
                salt: "s".into(),
                unit_header: "x-user-id".into(),
                coverage: Weight(10_000),
                variants: vec![
                    RuleVariant {
                        name: "a".into(),
                        weight: Weight(5000),
                    },
                    RuleVariant {
                        name: "b".into(),
                        weight: Weight(5000),
                    },
                ],
                bucketing: Default::default(),
            },
            started_at: "t".into(),
            config_version: "v".into(),
            reset: u64::from(dropped),
            dropped_assignments: dropped,
        },
    }
}

/// A store with `n` units, written by 64 concurrent first requests.
async fn filled(dir: &Path, n: usize) {
    let store = Arc::new(Store::open(dir).unwrap());
    store.append_ledger(vec![event(1, false)]).await.unwrap();
    let mut tasks = Vec::new();
    for c in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(64) {
                let got = store
                    .assign(
                        0,
                        unit_key("e", format!("u{i}").as_bytes()),
                        (i % 2) as u8,
                        Epoch(1),
                    )
                    .await
                    .unwrap();
                assert!(got.created);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Where the journal's records end (the file runs on, zero-filled).
fn data_len(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let (len, tail) = crate::assign::journal::replay(&bytes[8..], |_| Ok(())).unwrap();
    assert_eq!(tail, crate::assign::journal::Tail::Clean);
    len
}

/// Zeroes `from..to` of the file: a write into the preallocated zeros
/// that a crash cut short before these bytes reached the disk.
fn unwrite(path: &Path, from: u64, to: u64) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; (to - from) as usize], from)
        .unwrap();
}

#[tokio::test]
async fn the_journal_is_preallocated_and_its_zeros_reopen_as_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 1000).await;
    let path = dir.path().join(JOURNAL_FILE);
    let size = std::fs::metadata(&path).unwrap().len();
    let data = data_len(&path);
    assert!(
        size >= data + crate::assign::journal::PREALLOCATE / 2,
        "zero-filled ahead: {size} bytes for {data} of records"
    );
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.table(0).len(), 1000);
        // The next record goes right after the last one, into the zeros.
        let k = unit_key("e", b"one more");
        assert!(store.assign(0, k, 1, Epoch(1)).await.unwrap().created);
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "no regrowth");
    assert_eq!(data_len(&path), data + 36);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.table(0).len(), 1001);
}

#[tokio::test]
async fn assignments_survive_reopen_and_the_first_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 10).await;
    let store = Store::open(dir.path()).unwrap();
    let t = store.table(0);
    assert_eq!(t.len(), 10);
    assert_eq!((t.units(0), t.units(1)), (5, 5));
    let k = unit_key("e", b"u3");
    assert_eq!(t.get(&k).unwrap().variant, 1);
    // A second assignment of a stored unit returns the first.
    let again = store.assign(0, k, 0, Epoch(1)).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.assignment.variant, 1);
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked(_))
    ));
}

/// A binary upgrade's hand-over: once released, the store opens in the
/// next process with everything assigned before, and the releasing one
/// can no longer assign (so no unit is ever assigned by both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_store_opens_elsewhere_and_assigns_no_more_here() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 10).await;
    let old = Store::open(dir.path()).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked(_))
    ));
    old.release().await.unwrap();
    let k = unit_key("e", b"late");
    assert!(matches!(
        old.assign(0, k, 1, Epoch(1)).await,
        Err(StoreError::Closed)
    ));
    // Stored units are still read from memory in the old one.
    assert_eq!(old.table(0).len(), 10);
    let new = Store::open(dir.path()).expect("released");
    assert_eq!(new.table(0).len(), 10);
    assert!(new.assign(0, k, 1, Epoch(1)).await.unwrap().created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_truncated_but_damage_further_in_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 40_000).await;
    let path = dir.path().join(JOURNAL_FILE);
    let len = data_len(&path);
    // The last record's end never reached the preallocated zeros, as
    // kill -9 during its write would leave it.
    unwrite(&path, len - 5, len);
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.table(0).len(), 39_999);
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len - 36);
    // A journal cut inside its last record (as an older build, writing
    // without preallocation, leaves it) is torn too.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 36 - 5).unwrap();
    drop(f);
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.table(0).len(), 39_998);
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len - 72);
    // Flip a byte in the middle: that is damage, not a torn write.
    let pristine = std::fs::read(&path).unwrap();
    // A damaged length field running past the end of the file is damage
    // too, not a torn tail: acknowledged records follow it.
    let mut damaged = pristine.clone();
    let ledger_len = u32::from_le_bytes(damaged[8..12].try_into().unwrap()) as usize;
    let at = 8 + 8 + ledger_len + 36 * 1000;
    assert_eq!(damaged[at + 8], 1, "an assignment record starts here");
    damaged[at..at + 4].copy_from_slice(&(60u32 << 20).to_le_bytes());
    std::fs::write(&path, &damaged).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Corrupt { .. })
    ));
    let mut bytes = pristine;
    bytes[200] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn a_reset_event_drops_the_experiments_assignments_durably() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 10).await;
    {
        let store = Store::open(dir.path()).unwrap();
        store.append_ledger(vec![event(2, true)]).await.unwrap();
        assert_eq!(store.table(0).len(), 0);
        assert_eq!(store.table(0).units(1), 0);
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.table(0).len(), 0);
    assert_eq!(store.ledger().get("e").unwrap().current().epoch, Epoch(2));
}

#[test]
fn packing_keeps_every_field() {
    let a = Assignment {
        variant: 255,
        epoch: Epoch::MAX,
        first_seen: u32::MAX,
    };
    assert_eq!(Assignment::unpack(a.pack()), a);
    let b = Assignment {
        variant: 3,
        epoch: Epoch(7),
        first_seen: 1_796_000_000,
    };
    assert_eq!(Assignment::unpack(b.pack()), b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_replay_equals_sequential_replay_and_the_first_record_wins() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 20_000).await;
    {
        // Duplicates of stored keys with another variant, and a reset
        // followed by fresh units: the order of records matters.
        let store = Store::open(dir.path()).unwrap();
        for i in 0..100 {
            let k = unit_key("e", format!("u{i}").as_bytes());
            assert!(
                !store
                    .assign(0, k, ((i + 1) % 2) as u8, Epoch(1))
                    .await
                    .unwrap()
                    .created
            );
        }
    }
    let load = |parallel_from| {
        let path = dir.path().join(JOURNAL_FILE);
        let shared = Shared {
            path: path.clone(),
            ledger: Mutex::new(Ledger::default()),
            ledger_events: Default::default(),
            tables: Mutex::new(Vec::new()),
        };
        let mut f = File::open(&path).unwrap();
        replay_journal_with(&mut f, &path, &shared, parallel_from).unwrap();
        shared
    };
    let (seq, par) = (load(usize::MAX), load(0));
    let (a, b) = (seq.table(0), par.table(0));
    assert_eq!(a.len(), 20_000);
    assert_eq!(b.len(), 20_000);
    assert_eq!((a.units(0), a.units(1)), (b.units(0), b.units(1)));
    for i in 0..20_000 {
        let k = unit_key("e", format!("u{i}").as_bytes());
        assert_eq!(a.get(&k), b.get(&k), "u{i}");
        assert_eq!(
            b.get(&k).unwrap().variant,
            (i % 2) as u8,
            "the first record of u{i} wins"
        );
    }
}

#[tokio::test]
async fn a_large_history_record_survives_restart_and_a_torn_one_is_cut() {
    use crate::assign::ledger::AppliedConfig;
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 10).await;
    let big = serde_json::json!({ "overrides": (0..250_000).map(|i| format!("qa-user-{i}")).collect::<Vec<_>>() });
    {
        let store = Store::open(dir.path()).unwrap();
        let ev = LedgerEvent::Applied(AppliedConfig {
            config_version: "v2".into(),
            applied_at: "t".into(),
            trigger: "test".into(),
            summary: "s".into(),
            config: big,
        });
        store.append_ledger(vec![ev]).await.unwrap();
    }
    let path = dir.path().join(JOURNAL_FILE);
    let len = data_len(&path);
    assert!(
        len > 3 << 20,
        "the record is over the old 1 MiB limit: {len}"
    );
    assert_eq!(Store::open(dir.path()).unwrap().ledger().history.len(), 1);
    // Its last megabyte never reached the preallocated zeros, as a crash
    // during that write would leave it: more than a batch of assignments
    // before the end of the data, yet a write cut short, not damage.
    let pristine = std::fs::read(&path).unwrap();
    unwrite(&path, len - (1 << 20), len);
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.ledger().history.is_empty());
        assert_eq!(store.table(0).len(), 10);
    }
    // Cut in the middle, as a crash during that write without
    // preallocation (an older build) would leave it.
    std::fs::write(&path, &pristine).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - (1 << 20))
        .unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.ledger().history.is_empty());
    assert_eq!(store.table(0).len(), 10);
}

#[tokio::test]
async fn with_durability_write_new_units_are_answered_before_the_sync_which_follows_within_a_second(
) {
    use std::time::{Duration, Instant};
    let dirty = crate::test_support::dirty_pages;
    let units = |store: Arc<Store>, from: usize, n: usize| async move {
        for i in from..from + n {
            let key = unit_key("e", format!("u{i}").as_bytes());
            assert!(store.assign(0, key, 0, Epoch(1)).await.unwrap().created);
        }
    };
    let Some(dir) = crate::test_support::writeback_dir() else {
        return;
    };
    // Today's default: answered once on the disk, so nothing is dirty.
    let sync_dir = dir.path().join("sync");
    let store = Arc::new(Store::open_with(&sync_dir, Durability::Sync).unwrap());
    store.append_ledger(vec![event(1, false)]).await.unwrap();
    units(store.clone(), 0, 20).await;
    assert_eq!(
        dirty(&sync_dir.join(JOURNAL_FILE)),
        Some(0),
        "durability: sync answered before its sync"
    );
    drop(store);

    // `write`: answered from the page cache, synced within the second.
    let write_dir = dir.path().join("write");
    let path = write_dir.join(JOURNAL_FILE);
    let store = Arc::new(Store::open_with(&write_dir, Durability::Write).unwrap());
    store.append_ledger(vec![event(1, false)]).await.unwrap();
    assert_eq!(dirty(&path), Some(0), "a ledger event is always synced");
    let first = Instant::now();
    units(store.clone(), 0, 20).await;
    let seen = dirty(&path).unwrap();
    // (Only if that took well under the second: a loaded machine may have
    // reached the timed sync already.)
    if first.elapsed() < Duration::from_millis(500) {
        assert!(seen > 0, "durability: write waited for the disk");
    }
    while dirty(&path).unwrap() > 0 {
        assert!(
            first.elapsed() < Duration::from_secs(5),
            "not synced within the second (nor in 5 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An explicit sync (readiness, hand-over) syncs what is pending.
    units(store.clone(), 20, 5).await;
    store.sync().await.unwrap();
    assert_eq!(dirty(&path), Some(0), "sync() left answered units unsynced");
    // Every unit is in the journal: a restart finds them.
    drop(store);
    let store = Arc::new(Store::open_with(&write_dir, Durability::Write).unwrap());
    for i in 0..25 {
        let key = unit_key("e", format!("u{i}").as_bytes());
        assert!(!store.assign(0, key, 1, Epoch(1)).await.unwrap().created);
    }
}
