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

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::epoch::Epoch;
use super::hash::UnitKey;
use super::journal::{self, Record, Tail};
use super::ledger::{ExperimentId, Ledger, LedgerError, LedgerEvent, UnitCounts, VariantId};

const JOURNAL_FILE: &str = "journal.cohort";
const MAX_BATCH: usize = 8192;
/// More than one batch can hold (8192 assignments of 36 bytes plus ledger
/// events): a torn write never leaves this much after its bad record.
const TORN_TAIL_LIMIT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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

/// A unit's stored assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub variant: VariantId,
    pub epoch: Epoch,
    /// Unix seconds of the first exposure.
    pub first_seen: u32,
}

impl Assignment {
    fn pack(self) -> u64 {
        u64::from(self.variant)
            | (u64::from(self.epoch.0) << 8)
            | (u64::from(self.first_seen) << 32)
    }

    fn unpack(v: u64) -> Assignment {
        Assignment {
            variant: (v & 0xff) as u8,
            epoch: Epoch(((v >> 8) & 0xff_ffff) as u32),
            first_seen: (v >> 32) as u32,
        }
    }
}

/// The largest epoch the packed form holds.
pub const MAX_EPOCH: u32 = Epoch::MAX.0;

impl Hash for UnitKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a uniform digest: one word is all the hasher needs.
        state.write_u64(self.0[0] ^ self.0[1].rotate_left(32));
    }
}

/// Passes a digest word through: the key is already uniformly distributed.
#[derive(Default)]
pub struct DigestHasher(u64);

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

/// One experiment's assignments.
pub struct Table {
    map: DashMap<UnitKey, u64, BuildHasherDefault<DigestHasher>>,
    units: Vec<AtomicU64>,
    /// The admin kill switch; shared by every snapshot, so pausing needs no reload.
    admin_paused: AtomicBool,
}

impl Table {
    fn new() -> Table {
        Table::with_capacity(0)
    }

    fn with_capacity(units: usize) -> Table {
        Table {
            map: DashMap::with_capacity_and_hasher(units, BuildHasherDefault::default()),
            units: (0..256).map(|_| AtomicU64::new(0)).collect(),
            admin_paused: AtomicBool::new(false),
        }
    }

    pub fn get(&self, key: &UnitKey) -> Option<Assignment> {
        self.map.get(key).map(|v| Assignment::unpack(*v))
    }

    /// Units stored for `variant`.
    pub fn units(&self, variant: VariantId) -> u64 {
        self.units[usize::from(variant)].load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether an admin paused this experiment.
    pub fn admin_paused(&self) -> bool {
        self.admin_paused.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts unless present; returns the stored value and whether it is new.
    fn insert_first(&self, key: UnitKey, a: Assignment) -> (Assignment, bool) {
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

    fn clear(&self) {
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
    pub assignment: Assignment,
    /// False when a concurrent first request of the same unit won the race.
    pub created: bool,
}

enum Cmd {
    Assign {
        experiment: ExperimentId,
        key: UnitKey,
        assignment: Assignment,
        reply: oneshot::Sender<Result<Assigned, StoreError>>,
    },
    /// All of one config apply's events: journaled together or not at all.
    Ledger {
        events: Vec<LedgerEvent>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Sync {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

struct Shared {
    path: PathBuf,
    ledger: Mutex<Ledger>,
    tables: Mutex<Vec<Arc<Table>>>,
}

impl Shared {
    fn table(&self, id: ExperimentId) -> Arc<Table> {
        self.table_sized(id, 0)
    }

    /// Creates `id`'s table sized for `units`, unless it exists: replay
    /// sizes each map once instead of growing it (and the garbage of every
    /// smaller map it grew out of) record by record.
    fn reserve(&self, id: ExperimentId, units: usize) {
        self.table_sized(id, units);
    }

    /// `id`'s table, created (sized for `units`) if it does not exist yet.
    fn table_sized(&self, id: ExperimentId, units: usize) -> Arc<Table> {
        let mut t = self.tables.lock().expect("tables lock");
        while t.len() < usize::from(id) {
            t.push(Arc::new(Table::new()));
        }
        if t.len() == usize::from(id) {
            t.push(Arc::new(Table::with_capacity(units)));
        }
        t[usize::from(id)].clone()
    }

    fn apply_ledger(&self, ev: &LedgerEvent) -> Result<(), LedgerError> {
        let id = self.ledger.lock().expect("ledger lock").apply(ev)?;
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

/// The assignment store: open once per process.
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Cmd>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Held for the lifetime of the store: one process per store directory.
    _lock: File,
}

impl Store {
    /// Opens (or creates) the store in `dir` and replays its journal.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
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
            .map_err(io_err)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(dir.to_path_buf()));
        }
        let path = dir.join(JOURNAL_FILE);
        let shared = Arc::new(Shared {
            path: path.clone(),
            ledger: Mutex::new(Ledger::default()),
            tables: Mutex::new(Vec::new()),
        });
        let file = open_journal(&path, &shared)?;
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("cohort-store".into())
            .spawn(move || write_loop(file, rx, writer_shared))
            .map_err(io_err)?;
        Ok(Store {
            shared,
            tx,
            writer: Mutex::new(Some(writer)),
            _lock: lock,
        })
    }

    /// A copy of the epoch ledger.
    pub fn ledger(&self) -> Ledger {
        self.shared.ledger.lock().expect("ledger lock").clone()
    }

    pub fn table(&self, id: ExperimentId) -> Arc<Table> {
        self.shared.table(id)
    }

    /// Journals `events` durably and atomically (one write, one fsync, all
    /// or none), then applies them in order.
    pub async fn append_ledger(&self, events: Vec<LedgerEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Ledger { events, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Records `variant` at `epoch` for a new unit and returns once it is on
    /// disk. If the unit was stored meanwhile, returns that assignment instead.
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
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Assign {
                experiment,
                key,
                assignment,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until everything queued so far is on disk.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Sync { reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Replace our sender so the writer's channel closes, then join it.
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, dead));
        if let Some(h) = self.writer.lock().expect("writer lock").take() {
            let _ = h.join();
        }
    }
}

/// A read-only look at a store that another process may be running:
/// replays the journal without taking the lock or writing anything (a
/// torn tail is left as it is). For `cohort plan --store` and `history`.
pub struct StoreView {
    shared: Shared,
}

impl StoreView {
    pub fn open(dir: &Path) -> Result<StoreView, StoreError> {
        let path = dir.join(JOURNAL_FILE);
        let shared = Shared {
            path: path.clone(),
            ledger: Mutex::new(Ledger::default()),
            tables: Mutex::new(Vec::new()),
        };
        let mut file = File::open(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        replay_journal(&mut file, &path, &shared)?;
        Ok(StoreView { shared })
    }

    pub fn ledger(&self) -> Ledger {
        self.shared.ledger.lock().expect("ledger lock").clone()
    }

    /// The stored assignment of `unit` in `experiment`.
    pub fn get(&self, experiment: &str, unit: &[u8]) -> Option<Assignment> {
        let id = self
            .shared
            .ledger
            .lock()
            .expect("ledger lock")
            .get(experiment)?
            .id;
        self.shared
            .table(id)
            .get(&super::hash::unit_key(experiment, unit))
    }
}

impl UnitCounts for StoreView {
    fn units(&self, experiment: ExperimentId, variant: VariantId) -> u64 {
        self.shared.table(experiment).units(variant)
    }
}

impl UnitCounts for Store {
    fn units(&self, experiment: ExperimentId, variant: VariantId) -> u64 {
        self.table(experiment).units(variant)
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
}

fn open_journal(path: &Path, shared: &Shared) -> Result<File, StoreError> {
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
        return Ok(file);
    }
    let (good, tail) = replay_journal(&mut file, path, shared)?;
    if let Tail::Torn {
        offset,
        reason,
        runs_to_end,
    } = tail
    {
        // A crash can only cut the last batch written; a bad record further
        // from the end than one batch is damage, not a torn write, and
        // truncating there would drop acknowledged assignments.
        if !runs_to_end && size - good > TORN_TAIL_LIMIT {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                what: format!(
                    "{reason} at byte {offset}, {} bytes before the end; refusing to truncate acknowledged records (move the journal aside to inspect it)",
                    size - good
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
    }
    file.seek(SeekFrom::Start(good)).map_err(io_err)?;
    Ok(file)
}

/// Replays the journal in `file` into `shared`; returns the length of its
/// good prefix and how it ended.
fn replay_journal(
    file: &mut File,
    path: &Path,
    shared: &Shared,
) -> Result<(u64, Tail), StoreError> {
    replay_journal_with(file, path, shared, PARALLEL_REPLAY_FROM)
}

fn replay_journal_with(
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

/// The group-commit loop: drain the queue, one write and one fdatasync for
/// the whole batch, then apply and answer in journal order.
fn write_loop(mut file: File, rx: mpsc::Receiver<Cmd>, shared: Arc<Shared>) {
    let mut good_len = file.stream_position().unwrap_or(0);
    let mut batch: Vec<Cmd> = Vec::with_capacity(MAX_BATCH);
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_BATCH * 36);
    let mut broken: Option<String> = None;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        buf.clear();
        let verdicts = encode_batch(&batch, &shared, &mut buf);
        let written = match &broken {
            Some(why) => Err(why.clone()),
            None => write_batch(&mut file, &buf, &mut good_len).map_err(|e| {
                let why = e.to_string();
                tracing::error!(journal = %shared.path.display(), error = %why, "journal write failed; new units cannot be stored");
                // A partial write would hide every later record from replay:
                // cut back to the last good record, or stop writing at all.
                if file.set_len(good_len).and_then(|_| file.seek(SeekFrom::Start(good_len))).is_err() {
                    broken = Some(why.clone());
                }
                why
            }),
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
                        }
                    });
                    let _ = reply.send(r);
                }
                Cmd::Ledger { events, reply } => {
                    let r = ok.and_then(|()| {
                        events
                            .iter()
                            .try_for_each(|ev| shared.apply_ledger(ev))
                            .map_err(StoreError::Ledger)
                    });
                    let _ = reply.send(r);
                }
                Cmd::Sync { reply } => {
                    let _ = reply.send(ok);
                }
            }
        }
    }
    let _ = file.sync_data();
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
            Cmd::Sync { .. } => Ok(()),
        };
        verdicts.push(v);
    }
    verdicts
}

fn write_batch(file: &mut File, buf: &[u8], good_len: &mut u64) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    file.write_all(buf)?;
    file.sync_data()?;
    *good_len += buf.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assign::buckets::Weight;
    use crate::assign::epoch::{Rule, RuleVariant};
    use crate::assign::hash::unit_key;
    use crate::assign::ledger::EpochRecord;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_tail_is_truncated_but_damage_further_in_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path(), 40_000).await;
        let path = dir.path().join(JOURNAL_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        // Cut into the last record, as kill -9 during a write would.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.table(0).len(), 39_999);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len - 36);
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
            epoch: Epoch(MAX_EPOCH),
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
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            len > 3 << 20,
            "the record is over the old 1 MiB limit: {len}"
        );
        assert_eq!(Store::open(dir.path()).unwrap().ledger().history.len(), 1);
        // Cut it in the middle, as a crash during that write would.
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
}
