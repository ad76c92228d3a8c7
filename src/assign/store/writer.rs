//! The group-commit writer thread: every queued command of a batch goes to
//! the journal in one write and one `fdatasync`, then takes effect in the
//! tables and the ledger, and each waiter is answered, in journal order.
//!
//! The file is kept zero-filled ([`journal::PREALLOCATE`]) past the last
//! record, written and synced once per megabyte, so a batch's `fdatasync`
//! flushes its data blocks and the disk cache, and no file size or block
//! map: measured on ext4, two block requests per sync instead of three,
//! and no wait on the filesystem's journal thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::StoreError;
use super::replay::OpenJournal;
use super::reply::{Reply, Wakes};
use super::shared::Shared;
use super::table::{Assigned, Assignment};
use crate::assign::epoch::Epoch;
use crate::assign::hash::UnitKey;
use crate::assign::journal::{self, Record};
use crate::assign::ledger::{ExperimentId, Ledger, LedgerError, LedgerEvent};
use crate::terms::Durability;

const MAX_BATCH: usize = 8192;

pub(super) enum Cmd {
    Assign {
        experiment: ExperimentId,
        key: UnitKey,
        assignment: Assignment,
        reply: Reply<Result<Assigned, StoreError>>,
    },
    /// All of one config apply's events: journaled together or not at all.
    Ledger {
        events: Vec<LedgerEvent>,
        reply: Reply<Result<(), StoreError>>,
    },
    Sync {
        reply: Reply<Result<(), StoreError>>,
    },
    /// Sync, then stop writing for good (the journal goes to another
    /// process: a binary upgrade's new one).
    Release {
        reply: Reply<Result<(), StoreError>>,
    },
}

/// The most bytes a `durability: write` journal holds unsynced: a quarter
/// of [`journal::PREALLOCATE`], so what a power cut can tear stays well
/// inside the tail that replay truncates without calling it damage.
const SYNC_BYTES: u64 = journal::PREALLOCATE / 4;

/// How long a `durability: write` journal may hold written records before
/// it syncs them.
const SYNC_AFTER: Duration = Duration::from_secs(1);

/// The group-commit loop: drain the queue, one write and one fdatasync for
/// the whole batch, then apply and answer in journal order. With
/// `durability: write` a batch of new units only is answered after its
/// write, and synced within [`SYNC_AFTER`] (at the next batch past it, or
/// when the queue has been quiet that long).
pub(super) fn write_loop(
    journal: OpenJournal,
    rx: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    durability: Durability,
    times: Arc<SyncTimes>,
) {
    let OpenJournal {
        file,
        end,
        allocated,
    } = journal;
    let mut journal = Journal {
        file,
        end,
        allocated,
        unsynced: None,
        times,
    };
    let mut wakes = Wakes::default();
    let mut batch: Vec<Cmd> = Vec::with_capacity(MAX_BATCH);
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_BATCH * 36);
    let mut broken: Option<String> = None;
    let mut released = None;
    loop {
        let next = match journal.unsynced {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some((since, _)) => rx.recv_timeout(SYNC_AFTER.saturating_sub(since.elapsed())),
        };
        let first = match next {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = journal.sync_pending() {
                    broken = Some(journal.sync_failed(&shared, &e));
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        batch.push(first);
        // Let a runtime that shares this core finish what it is doing (it
        // may be about to queue more first exposures) before the sync
        // starts: one sync for all of them. On an idle core this returns
        // at once.
        std::thread::yield_now();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        buf.clear();
        let verdicts = encode_batch(&batch, &shared, &mut buf);
        // Config changes, syncs and hand-overs always wait for the disk;
        // so does a batch that would leave more than SYNC_BYTES unsynced.
        let sync = durability == Durability::Sync
            || batch.iter().any(|c| !matches!(c, Cmd::Assign { .. }))
            || journal
                .unsynced
                .is_some_and(|(since, _)| since.elapsed() >= SYNC_AFTER)
            || journal.unsynced.map_or(0, |(_, bytes)| bytes) + buf.len() as u64 >= SYNC_BYTES;
        let written = match &broken {
            Some(why) => Err(why.clone()),
            None => match journal.append(&buf, sync) {
                Ok(()) => Ok(()),
                // Records already answered may not be on the disk: no
                // more answers from this journal.
                Err(Failed::Sync(e)) if journal.unsynced.is_some() => {
                    let why = journal.sync_failed(&shared, &e);
                    broken = Some(why.clone());
                    Err(why)
                }
                Err(f) => {
                    let why = f.to_string();
                    tracing::error!(journal = %shared.path.display(), error = %why, "journal write failed; new units cannot be stored");
                    // Records answered before it (`durability: write`)
                    // must reach the disk before the file is cut back.
                    let synced = match journal.sync_pending() {
                        Ok(()) => true,
                        Err(e) => {
                            broken = Some(journal.sync_failed(&shared, &e));
                            false
                        }
                    };
                    // A partial write would hide every later record from
                    // replay: cut back to the last good record, or stop
                    // writing at all.
                    if synced && journal.cut_back().is_err() {
                        broken = Some(why.clone());
                    }
                    Err(why)
                }
            },
        };
        for (c, verdict) in batch.drain(..).zip(verdicts) {
            let ok = verdict.and_then(|()| written.clone().map_err(StoreError::Write));
            match c {
                Cmd::Assign {
                    experiment,
                    key,
                    assignment,
                    reply,
                } => {
                    let r = ok.map(|()| {
                        let (assignment, created) =
                            shared.table(experiment).insert_first(key, assignment);
                        Assigned {
                            assignment,
                            created,
                            degraded: false,
                        }
                    });
                    reply.send(r, &mut wakes);
                }
                Cmd::Ledger { events, reply } => {
                    let r = ok.and_then(|()| {
                        events
                            .iter()
                            .try_for_each(|ev| shared.apply_ledger(ev))
                            .map_err(StoreError::Ledger)
                    });
                    reply.send(r, &mut wakes);
                }
                Cmd::Sync { reply } => reply.send(ok, &mut wakes),
                Cmd::Release { reply } => released = Some((reply, ok)),
            }
        }
        wakes.finish();
        if let Some((reply, ok)) = released.take() {
            // Later commands find the channel closed: StoreError::Closed.
            let synced = journal.sync().map_err(|e| StoreError::Write(e.to_string()));
            drop(journal);
            reply.send(ok.and(synced), &mut wakes);
            wakes.finish();
            return;
        }
    }
    if let Err(e) = journal.sync() {
        tracing::error!(journal = %shared.path.display(), error = %e, "journal sync at shutdown failed");
    }
}

/// Encodes the batch's records into `buf`, in order, and says for each
/// command whether it goes in. Ledger events are checked against the ledger
/// first, so a bad one cannot poison the journal; an assignment under an
/// epoch its experiment has left is refused as stale, so no unit is stored
/// under a rule that is no longer applied (in particular across a reset).
fn encode_batch(batch: &[Cmd], shared: &Shared, buf: &mut Vec<u8>) -> Vec<Result<(), StoreError>> {
    // Current epochs, read once; the ledger itself is copied only for a
    // batch that carries ledger events (its history can be large).
    let base: Vec<Epoch> = shared
        .ledger
        .lock()
        .expect("ledger lock")
        .experiments
        .iter()
        .map(|x| x.current().epoch)
        .collect();
    let mut scratch: Option<Ledger> = None;
    let mut verdicts = Vec::with_capacity(batch.len());
    for c in batch {
        let v = match c {
            Cmd::Assign {
                experiment,
                key,
                assignment,
                ..
            } => {
                let current = match &scratch {
                    Some(l) => l.by_id(*experiment).map(|x| x.current().epoch),
                    None => base.get(usize::from(*experiment)).copied(),
                }
                .unwrap_or(Epoch::UNASSIGNED);
                if assignment.epoch < current {
                    Err(StoreError::Stale {
                        experiment: *experiment,
                        got: assignment.epoch.0,
                        current: current.0,
                    })
                } else {
                    journal::encode(
                        &Record::Assign {
                            experiment: *experiment,
                            key: *key,
                            variant: assignment.variant,
                            epoch: assignment.epoch,
                            first_seen: assignment.first_seen,
                        },
                        buf,
                    );
                    Ok(())
                }
            }
            Cmd::Ledger { events, .. } => {
                let mut trial = scratch
                    .clone()
                    .unwrap_or_else(|| shared.ledger.lock().expect("ledger lock").clone());
                let mut records = Vec::new();
                let check = events.iter().try_for_each(|ev| {
                    let start = records.len();
                    journal::encode(&Record::Ledger(ev.clone()), &mut records);
                    if records.len() - start - 8 > journal::MAX_RECORD {
                        return Err(LedgerError::TooLarge(records.len() - start));
                    }
                    trial.apply(ev).map(|_| ())
                });
                match check {
                    Ok(()) => {
                        scratch = Some(trial);
                        buf.extend_from_slice(&records);
                        Ok(())
                    }
                    Err(e) => Err(StoreError::Ledger(e)),
                }
            }
            Cmd::Sync { .. } | Cmd::Release { .. } => Ok(()),
        };
        verdicts.push(v);
    }
    verdicts
}

/// Upper bounds of [`SyncTimes`]' buckets, in seconds (+Inf implied): a
/// disk's `fdatasync`, from a cached NVMe write to a stalled spindle.
pub(super) static SYNC_BOUNDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// How long the journal's `fdatasync` calls took: what a new unit waits
/// for under `durability: sync` (`cohort_store_sync_duration_seconds`).
pub(super) type SyncTimes = crate::latency::Histogram<{ SYNC_BOUNDS.len() }>;

/// Which step of an append failed: after a failed sync, records answered
/// unsynced may be lost (and the next sync would not say so); after a
/// failed write, they can still be synced.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("{0}")]
    Write(io::Error),
    #[error("{0}")]
    Sync(io::Error),
}

/// The journal file as the writer appends to it.
struct Journal {
    file: File,
    /// Where the records end: the next batch goes here.
    end: u64,
    /// How far the file is zero-filled (and synced): its size.
    allocated: u64,
    /// Records written and answered but not yet synced (`durability:
    /// write`): since when, and how many bytes.
    unsynced: Option<(Instant, u64)>,
    times: Arc<SyncTimes>,
}

/// Zeros written to extend the preallocation.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl Journal {
    /// `fdatasync`, timed.
    fn sync(&self) -> io::Result<()> {
        let t = Instant::now();
        let r = self.file.sync_data();
        self.times.observe(t.elapsed());
        r
    }

    /// Syncs records answered unsynced (`durability: write`), if any.
    fn sync_pending(&mut self) -> Result<(), Failed> {
        if self.unsynced.is_some() {
            self.sync().map_err(Failed::Sync)?;
            self.unsynced = None;
        }
        Ok(())
    }

    /// After a failed write or sync with answered records unsynced
    /// (`durability: write`): they may never reach the disk, and a later
    /// sync would not say so (the kernel reports a lost write-back once).
    /// Says why the journal takes no more records.
    fn sync_failed(&mut self, shared: &Shared, e: &dyn std::fmt::Display) -> String {
        tracing::error!(journal = %shared.path.display(), error = %e, "journal write or sync failed with new units answered but not synced: they may be lost on a power cut; the store takes no new units until restarted");
        self.unsynced = None;
        format!("journal write or sync failed: {e}")
    }

    /// Writes `buf` after the last record and syncs it (unless `sync` is
    /// false: `durability: write`). When the batch
    /// does not fit in the zero-filled part, the file first grows by
    /// [`journal::PREALLOCATE`] of written zeros past it, synced with the
    /// batch: the only syncs that change the file's size.
    fn append(&mut self, buf: &[u8], sync: bool) -> Result<(), Failed> {
        if buf.is_empty() {
            return if sync { self.sync_pending() } else { Ok(()) };
        }
        let need = self.end + buf.len() as u64;
        if need > self.allocated {
            // Only a saving: where the zeros cannot be had (a full disk, a
            // file-size limit) the batch is appended as it always was.
            // The zeros reach PREALLOCATE past the last record, not past
            // this batch: a crash before the batch lands leaves at most
            // that much after the last record, which a build without the
            // zero tail still truncates as a torn tail (its limit).
            let to = need.max(self.end + journal::PREALLOCATE);
            match self.zero_fill(need, to) {
                Ok(()) => self.allocated = to,
                Err(_) => {
                    let _ = self.file.set_len(self.allocated);
                }
            }
        }
        self.file
            .write_all_at(buf, self.end)
            .map_err(Failed::Write)?;
        if sync {
            self.sync().map_err(Failed::Sync)?;
            self.unsynced = None;
        } else {
            let (_, bytes) = self.unsynced.get_or_insert((Instant::now(), 0));
            *bytes += buf.len() as u64;
        }
        self.end = need;
        self.allocated = self.allocated.max(need);
        Ok(())
    }

    fn zero_fill(&self, mut at: u64, to: u64) -> io::Result<()> {
        while at < to {
            let n = (to - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// After a failed append: drops everything past the last good record
    /// (the preallocation too; the next append writes it again).
    fn cut_back(&mut self) -> io::Result<()> {
        self.allocated = self.end;
        self.file.set_len(self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A growth zero-fills up to PREALLOCATE past the last record, never
    /// past the batch: a crash before the batch lands leaves no more than
    /// that after the last record, which a build without the zero tail
    /// still truncates as a torn tail.
    #[test]
    fn zeros_reach_preallocate_past_the_last_record_not_past_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("j"))
            .unwrap();
        file.write_all_at(&[7; 100], 0).unwrap();
        let mut j = Journal {
            file,
            end: 100,
            allocated: 100,
            unsynced: None,
            times: Arc::new(SyncTimes::new(&SYNC_BOUNDS)),
        };
        j.append(&[1; 36], true).unwrap();
        assert_eq!((j.end, j.allocated), (136, 100 + journal::PREALLOCATE));
        assert_eq!(j.file.metadata().unwrap().len(), j.allocated);
        // A batch bigger than the preallocation is written as it is.
        let big = vec![2; journal::PREALLOCATE as usize + 10];
        j.append(&big, true).unwrap();
        assert_eq!(j.end, 136 + big.len() as u64);
        assert_eq!(j.allocated, j.end);
    }
}
