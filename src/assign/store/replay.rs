//! Opening a journal: check its magic, replay every record into a
//! [`Shared`] (two passes: count, then fill pre-sized maps, on several cores
//! for large journals), and cut a torn tail left by a crash, never
//! acknowledged records further in. The zero-filled tail the writer
//! preallocates is not a torn one; a crash during a write into it leaves a
//! bad record followed by zeros, which is.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{mpsc, Arc};

use super::error::StoreError;
use super::shared::Shared;
use super::table::{Assignment, Table};
use crate::assign::hash::UnitKey;
use crate::assign::journal::{self, Record, Tail};
use crate::assign::ledger::ExperimentId;

/// The journal's file name inside the store directory.
pub(super) const JOURNAL_FILE: &str = "journal.cohort";
/// More than one batch can hold (8192 assignments of 36 bytes plus ledger
/// events): a torn write never leaves this much after its bad record.
const TORN_TAIL_LIMIT: u64 = 1 << 20;

/// A replayed journal, ready for the writer.
pub(super) struct OpenJournal {
    pub(super) file: File,
    /// Where its records end.
    pub(super) end: u64,
    /// Its size: zero-filled from `end` on.
    pub(super) allocated: u64,
}

pub(super) fn open_journal(path: &Path, shared: &Shared) -> Result<OpenJournal, StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size < journal::MAGIC.len() as u64 {
        // New (or cut before its magic was written: nothing was acknowledged).
        file.set_len(0).map_err(io_err)?;
        journal::init(&mut file).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        }
        let end = journal::MAGIC.len() as u64;
        return Ok(OpenJournal {
            file,
            end,
            allocated: end,
        });
    }
    let (good, tail) = replay_journal(&mut file, path, shared)?;
    if let Tail::Torn {
        offset,
        reason,
        runs_to_end,
    } = tail
    {
        // A crash can only cut the last batch written; a bad record further
        // from the end of the data than one batch is damage, not a torn
        // write, and truncating there would drop acknowledged assignments.
        // Zeros after the data are the preallocation, not records.
        let data_end = end_of_data(&file, good, size).map_err(io_err)?;
        let cut_short = runs_to_end || {
            let mut head = [0u8; 9];
            file.read_exact_at(&mut head, offset).is_ok()
                && journal::runs_past(&head, offset, data_end)
        };
        if !cut_short && data_end - good > TORN_TAIL_LIMIT {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                what: format!(
                    "{reason} at byte {offset}, {} bytes before the end of the data; refusing to truncate acknowledged records (move the journal aside to inspect it)",
                    data_end - good
                ),
            });
        }
        tracing::warn!(
            journal = %path.display(),
            offset,
            reason,
            dropped_bytes = size - good,
            "journal ends in a torn record (an unacknowledged write cut by a crash); truncating it"
        );
        file.set_len(good).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        return Ok(OpenJournal {
            file,
            end: good,
            allocated: good,
        });
    }
    Ok(OpenJournal {
        file,
        end: good,
        allocated: size,
    })
}

/// Where the file's last non-zero byte ends, looking no lower than `from`.
fn end_of_data(file: &File, from: u64, size: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut end = size;
    while end > from {
        let start = end.saturating_sub(buf.len() as u64).max(from);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(from)
}

/// Replays the journal in `file` into `shared`; returns the length of its
/// good prefix and how it ended.
pub(super) fn replay_journal(
    file: &mut File,
    path: &Path,
    shared: &Shared,
) -> Result<(u64, Tail), StoreError> {
    replay_journal_with(file, path, shared, PARALLEL_REPLAY_FROM)
}

pub(super) fn replay_journal_with(
    file: &mut File,
    path: &Path,
    shared: &Shared,
    parallel_from: usize,
) -> Result<(u64, Tail), StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    io::Read::read_exact(&mut reader, &mut magic).map_err(io_err)?;
    if &magic != journal::MAGIC {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            what: "not a cohort journal (bad magic)".into(),
        });
    }
    // Pass 1 counts each experiment's assignments, so pass 2 fills maps
    // that are already the right size.
    let mut counts: std::collections::BTreeMap<ExperimentId, usize> = Default::default();
    journal::replay(&mut reader, |rec| {
        if let Record::Assign { experiment, .. } = rec {
            *counts.entry(experiment).or_default() += 1;
        }
        Ok(())
    })
    .map_err(io_err)?;
    let total: usize = counts.values().sum();
    for (id, n) in counts {
        shared.reserve(id, n);
    }
    reader
        .seek(SeekFrom::Start(journal::MAGIC.len() as u64))
        .map_err(io_err)?;
    // Pass 2 fills the maps on every core: this thread decodes, and each
    // key goes to the worker that owns its partition, so the records of one
    // key are inserted in journal order and the first still wins. A ledger
    // event waits until every insert before it is done.
    // Below a few million records one thread replays in well under a
    // second, without the worker threads' allocator heaps staying resident.
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let workers = if total < parallel_from { 0 } else { cores };
    std::thread::scope(|scope| {
        let mut lanes = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Lane>(2);
            scope.spawn(move || {
                for msg in rx {
                    match msg {
                        Lane::Insert(table, batch) => {
                            for (key, a) in batch {
                                table.insert_first(key, a);
                            }
                        }
                        Lane::Barrier(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
            lanes.push(tx);
        }
        let mut replayer = Replayer {
            shared,
            lanes,
            pending: (0..workers).map(|_| Vec::new()).collect(),
            known: Vec::new(),
        };
        let result = journal::replay(reader, |rec| replayer.record(rec));
        replayer.barrier();
        result
    })
    .map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => StoreError::Corrupt {
            path: path.to_path_buf(),
            what: e.to_string(),
        },
        _ => io_err(e),
    })
}

/// Work for one replay worker.
enum Lane {
    Insert(Arc<Table>, Vec<(UnitKey, Assignment)>),
    Barrier(mpsc::Sender<()>),
}

const REPLAY_BATCH: usize = 4096;
/// Journals with fewer assignments are replayed on one thread.
const PARALLEL_REPLAY_FROM: usize = 2_000_000;

/// Pass 2 of replay: dispatches assignments to the workers by key.
struct Replayer<'a> {
    shared: &'a Shared,
    lanes: Vec<mpsc::SyncSender<Lane>>,
    /// Per worker: (experiment, buffered inserts).
    pending: Vec<Vec<(ExperimentId, UnitKey, Assignment)>>,
    /// Tables of the experiments the ledger knows so far.
    known: Vec<Option<Arc<Table>>>,
}

impl Replayer<'_> {
    fn record(&mut self, rec: Record) -> io::Result<()> {
        match rec {
            Record::Ledger(ev) => {
                self.barrier();
                self.shared
                    .apply_ledger(&ev)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                self.known.clear();
            }
            Record::Assign {
                experiment,
                key,
                variant,
                epoch,
                first_seen,
            } => {
                let i = usize::from(experiment);
                if self.known.get(i).is_none_or(Option::is_none) {
                    let exists = self
                        .shared
                        .ledger
                        .lock()
                        .expect("ledger lock")
                        .by_id(experiment)
                        .is_some();
                    if !exists {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("assignment for unknown experiment id {experiment}"),
                        ));
                    }
                    self.known.resize(self.known.len().max(i + 1), None);
                    self.known[i] = Some(self.shared.table(experiment));
                }
                let a = Assignment {
                    variant,
                    epoch,
                    first_seen,
                };
                if self.lanes.is_empty() {
                    self.known[i]
                        .as_ref()
                        .expect("filled above")
                        .insert_first(key, a);
                    return Ok(());
                }
                let lane = (key.0[1] % self.lanes.len() as u64) as usize;
                self.pending[lane].push((experiment, key, a));
                if self.pending[lane].len() >= REPLAY_BATCH {
                    self.flush(lane);
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self, lane: usize) {
        let batch = std::mem::take(&mut self.pending[lane]);
        // A batch is almost always one experiment; split it where it is not.
        let mut start = 0;
        while start < batch.len() {
            let id = batch[start].0;
            let end = batch[start..]
                .iter()
                .position(|r| r.0 != id)
                .map_or(batch.len(), |n| start + n);
            let table = self.known[usize::from(id)]
                .clone()
                .expect("checked when buffered");
            let part = batch[start..end].iter().map(|r| (r.1, r.2)).collect();
            let _ = self.lanes[lane].send(Lane::Insert(table, part));
            start = end;
        }
    }

    /// Returns once every buffered insert is in its map.
    fn barrier(&mut self) {
        for lane in 0..self.lanes.len() {
            self.flush(lane);
        }
        let (tx, rx) = mpsc::channel();
        for l in &self.lanes {
            let _ = l.send(Lane::Barrier(tx.clone()));
        }
        drop(tx);
        while rx.recv().is_ok() {}
    }
}
