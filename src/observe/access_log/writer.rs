//! The log writer: per-thread buffers on the request path, one writer
//! thread that collects them into the sink (file or stdout).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::record::AccessRecord;
use crate::config::LogTarget;
use crate::observe::metrics::Metrics;

const FLUSH_EVERY: Duration = Duration::from_millis(500);
const NAP: Duration = Duration::from_millis(20);
const BUFFER: usize = 64 * 1024;
/// Per thread, what may wait for the writer: about 30 s of this thread's
/// lines at 50k requests/s, far more than a healthy disk ever lags by.
/// (The buffer grows by doubling, so its memory can reach twice this.)
pub(crate) const MAX_PENDING: usize = 64 * 1024 * 1024;

enum Msg {
    Reopen,
    Flush(mpsc::Sender<()>),
}

struct Counters {
    written: AtomicU64,
    failed: AtomicU64,
}

/// One thread's lines waiting for the writer.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
}

/// Every thread's buffer of one log, for the writer to collect.
#[derive(Default)]
struct Buffers {
    all: Mutex<Vec<Arc<Mutex<Pending>>>>,
}

/// Gives each log a key for the thread-local buffer table.
static NEXT_LOG_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's buffer for each log it has written to.
    static MINE: RefCell<Vec<(u64, Arc<Mutex<Pending>>)>> = const { RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a buffer leaves at worst a torn last line.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A handle to the log writer; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    id: u64,
    tx: mpsc::Sender<Msg>,
    buffers: Arc<Buffers>,
    counters: Arc<Counters>,
    /// The metrics every finished request is counted in: carried on the
    /// log's handle because both front ends already hold it where a
    /// request ends (`proxy::core::finish`).
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Opens `target` (creating parent directories) and starts the writer.
    pub fn open(target: &LogTarget) -> io::Result<AccessLog> {
        let sink = Sink::open(target)?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters {
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let buffers = Arc::new(Buffers::default());
        let (c, b) = (counters.clone(), buffers.clone());
        std::thread::Builder::new()
            .name("cohort-log".into())
            .spawn(move || write_loop(sink, rx, b, c))?;
        Ok(AccessLog {
            id: NEXT_LOG_ID.fetch_add(1, Ordering::Relaxed),
            tx,
            buffers,
            counters,
            metrics: Metrics::new(),
        })
    }

    /// The metrics of the requests this log records.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn record(&self, rec: &AccessRecord) {
        let appended = MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            let i = match mine.iter().position(|(id, _)| *id == self.id) {
                Some(i) => i,
                None => {
                    // This thread's first line: make and register its buffer.
                    let b = Arc::new(Mutex::new(Pending {
                        bytes: Vec::with_capacity(BUFFER),
                        lines: 0,
                    }));
                    lock(&self.buffers.all).push(b.clone());
                    mine.push((self.id, b));
                    mine.len() - 1
                }
            };
            let mut p = lock(&mine[i].1);
            if p.bytes.len() >= MAX_PENDING {
                return false;
            }
            rec.write_json(&mut p.bytes);
            p.bytes.push(b'\n');
            p.lines += 1;
            true
        });
        // Not appended: the backlog is full, or the thread is being torn
        // down (a line recorded from a destructor at exit).
        if appended != Ok(true) {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reopens the file at its path (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Blocks until every line recorded so far is written and flushed.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    pub fn written_lines(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    pub fn failed_lines(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }
}

enum Sink {
    Stdout(io::Stdout),
    File { path: PathBuf, out: BufWriter<File> },
}

impl Sink {
    fn open(target: &LogTarget) -> io::Result<Sink> {
        match target {
            LogTarget::Stdout => Ok(Sink::Stdout(io::stdout())),
            LogTarget::File(path) => Ok(Sink::File {
                path: path.clone(),
                out: BufWriter::with_capacity(BUFFER, open_append(path)?),
            }),
        }
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().write_all(line),
            Sink::File { out, .. } => out.write_all(line),
        }
    }

    /// Writes `bytes` a buffer's worth at a time, yielding the core after
    /// each: the writer shares it with the proxy's workers, and one long
    /// write of a whole collection (hundreds of KiB at full load) would
    /// hold them off for its whole duration and show in their p99.
    fn write_yielding(&mut self, bytes: &[u8]) -> io::Result<()> {
        for chunk in bytes.chunks(BUFFER) {
            self.write(chunk)?;
            std::thread::yield_now();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().flush(),
            Sink::File { out, .. } => out.flush(),
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File { path, out } = self {
            out.flush()?;
            *out = BufWriter::with_capacity(BUFFER, open_append(path)?);
        }
        Ok(())
    }
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Collects every thread's lines each nap. Napping rather than being woken
/// per line keeps the writer off the request path: no futex syscall or
/// context switch per line, one pass over whatever came meanwhile.
fn write_loop(mut sink: Sink, rx: mpsc::Receiver<Msg>, buffers: Arc<Buffers>, c: Arc<Counters>) {
    let mut last_flush = Instant::now();
    let mut pending: u64 = 0;
    let mut last_error_report = Instant::now() - Duration::from_secs(60);
    let mut report = |e: &io::Error, c: &Counters| {
        if last_error_report.elapsed() > Duration::from_secs(10) {
            last_error_report = Instant::now();
            tracing::error!(error = %e, failed_lines = c.failed.load(Ordering::Relaxed), "access log write failed");
        }
    };
    let mut acks = Vec::new();
    let mut taken = Pending::default();
    loop {
        std::thread::sleep(NAP);
        let mut disconnected = false;
        let mut reopen = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Reopen) => reopen = true,
                Ok(Msg::Flush(tx)) => acks.push(tx),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        // Collected after the messages: a flush asked for after a line was
        // recorded finds that line here.
        let threads: Vec<_> = lock(&buffers.all).clone();
        for b in &threads {
            std::mem::swap(&mut *lock(b), &mut taken);
            if taken.lines > 0 {
                match sink.write_yielding(&taken.bytes) {
                    Ok(()) => pending += taken.lines,
                    Err(e) => {
                        c.failed.fetch_add(taken.lines, Ordering::Relaxed);
                        report(&e, &c);
                    }
                }
            }
            taken.bytes.clear();
            taken.lines = 0;
            // After a backlog (a slow disk), give the memory back.
            taken.bytes.shrink_to(BUFFER * 16);
        }
        // A thread that ended left only the table's reference to its buffer.
        drop(threads);
        lock(&buffers.all).retain(|b| Arc::strong_count(b) > 1 || lock(b).lines > 0);
        if reopen {
            if let Err(e) = sink.reopen() {
                report(&e, &c);
            }
        }
        if !acks.is_empty() || disconnected || reopen || last_flush.elapsed() >= FLUSH_EVERY {
            match sink.flush() {
                Ok(()) => {
                    c.written.fetch_add(pending, Ordering::Relaxed);
                }
                Err(e) => {
                    c.failed.fetch_add(pending, Ordering::Relaxed);
                    report(&e, &c);
                }
            }
            pending = 0;
            last_flush = Instant::now();
        }
        for tx in acks.drain(..) {
            let _ = tx.send(());
        }
        if disconnected {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::access_log::sample_record as record;
    use serde_json::Value;

    #[test]
    fn every_threads_lines_reach_the_file_in_each_threads_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.jsonl");
        let log = AccessLog::open(&LogTarget::File(path.clone())).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let mut r = record();
                        r.bytes_in = t * 1000 + i;
                        log.record(&r);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut last = record();
        last.bytes_in = 999_999;
        log.record(&last);
        log.flush();
        assert_eq!(log.written_lines(), 2001);
        assert_eq!(log.failed_lines(), 0);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen: Vec<Vec<u64>> = vec![Vec::new(); 4];
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).expect("each line is one JSON object");
            let n = v["bytes_in"].as_u64().unwrap();
            if n != 999_999 {
                seen[(n / 1000) as usize].push(n % 1000);
            }
        }
        for s in seen {
            assert_eq!(s, (0..500).collect::<Vec<_>>());
        }
        // The ended threads' buffers left the writer's table.
        std::thread::sleep(NAP * 3);
        assert_eq!(lock(&log.buffers.all).len(), 1);
    }
}
