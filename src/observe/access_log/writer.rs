//! The log writer: per-thread buffers on the request path, one writer
//! thread that collects them into the sink (file or stdout).

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::file::LogFile;
use super::record::AccessRecord;
use crate::config::{AccessLogConfig, LogTarget};
use crate::observe::metrics::Metrics;

const NAP: Duration = Duration::from_millis(20);
const BUFFER: usize = 64 * 1024;
/// At most one error line per this much time, however many lines fail.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// What may wait for the writer, all threads' buffers together (counted in
/// [`Buffers::pending`]): far more than a healthy disk ever lags by. The
/// buffers grow by doubling, so their memory can reach about twice this,
/// however many threads record.
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
struct Buffers {
    all: Mutex<Vec<Arc<Mutex<Pending>>>>,
    /// Bytes in all the buffers: a line is recorded only while this is
    /// under `cap`.
    pending: AtomicUsize,
    cap: usize,
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
    /// Opens the log's file (creating parent directories) or stdout, and
    /// starts the writer (and, with `compress: gzip`, the compressor).
    pub fn open(config: &AccessLogConfig) -> io::Result<AccessLog> {
        Self::open_capped(config, MAX_PENDING)
    }

    /// [`AccessLog::open`] with `cap` bytes instead of [`MAX_PENDING`].
    fn open_capped(config: &AccessLogConfig, cap: usize) -> io::Result<AccessLog> {
        let sink = Sink::open(config)?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters {
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let buffers = Arc::new(Buffers {
            all: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
            cap,
        });
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
            if self.buffers.pending.load(Ordering::Relaxed) >= self.buffers.cap {
                return false;
            }
            let mut p = lock(&mine[i].1);
            let before = p.bytes.len();
            rec.write_json(&mut p.bytes);
            p.bytes.push(b'\n');
            p.lines += 1;
            let added = p.bytes.len() - before;
            self.buffers.pending.fetch_add(added, Ordering::Relaxed);
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
    File(LogFile),
}

impl Sink {
    fn open(config: &AccessLogConfig) -> io::Result<Sink> {
        match &config.target {
            LogTarget::Stdout => Ok(Sink::Stdout(io::stdout())),
            LogTarget::File(path) => {
                Ok(Sink::File(LogFile::open(path, config.rotate, config.gzip)?))
            }
        }
    }

    /// Writes `lines` whole lines; returns how many made it, and the first
    /// error.
    fn write(&mut self, bytes: &[u8], lines: u64) -> (u64, Option<io::Error>) {
        match self {
            Sink::File(f) => f.write_lines(bytes, lines),
            Sink::Stdout(s) => write_stream(&mut s.lock(), bytes, lines),
        }
    }

    /// The work due on each collection even without lines: `max_age`, and
    /// opening a new file a rotation could not open.
    fn tick(&mut self) -> io::Result<()> {
        match self {
            Sink::File(f) => f.rotate_if_old(),
            Sink::Stdout(_) => Ok(()),
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        match self {
            Sink::File(f) => f.reopen(),
            Sink::Stdout(_) => Ok(()),
        }
    }
}

/// Writes `bytes` (`lines` whole lines) to a stream (stdout) in pieces of
/// at most [`BUFFER`] cut at line ends (a longer line goes whole), flushing
/// each and yielding the core between them, so a reader of the stream gets
/// whole lines per write; returns how many lines went out whole, and the
/// error that stopped the rest. A stream cannot take back a line torn by a
/// failing write: that line counts as not written.
fn write_stream(out: &mut impl Write, bytes: &[u8], lines: u64) -> (u64, Option<io::Error>) {
    let whole = |n: usize| bytes[..n].iter().filter(|b| **b == b'\n').count() as u64;
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        let cut = if rest.len() <= BUFFER {
            rest.len()
        } else {
            match rest[..BUFFER].iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => rest
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(rest.len(), |i| i + 1),
            }
        };
        let mut done = 0;
        while done < cut {
            match out.write(&rest[done..cut]) {
                Ok(0) => return (whole(sent + done), Some(io::ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (whole(sent + done), Some(e)),
            }
        }
        if let Err(e) = out.flush() {
            // What the flush left buffered may not have gone out.
            return (whole(sent), Some(e));
        }
        sent += cut;
        std::thread::yield_now();
    }
    (lines, None)
}

/// The writer's error reporting: at most one error line a second, each
/// saying how many lines were dropped since the last one, so a full disk
/// cannot flood stderr (itself maybe on that disk).
struct Alarm {
    last: Option<Instant>,
    /// `failed` as of the last report.
    reported: u64,
}

impl Alarm {
    fn raise(&mut self, error: Option<&io::Error>, c: &Counters) {
        let failed = c.failed.load(Ordering::Relaxed);
        if error.is_none() && failed == self.reported {
            return;
        }
        if self.last.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let dropped = failed - self.reported;
        self.reported = failed;
        match error {
            Some(e) => tracing::error!(
                error = %e,
                dropped_lines = dropped,
                total_dropped = failed,
                "access log write failed; the proxy keeps serving"
            ),
            None => tracing::error!(
                dropped_lines = dropped,
                total_dropped = failed,
                "access log lines dropped: the writer cannot keep up; the proxy keeps serving"
            ),
        }
    }
}

/// Collects every thread's lines each nap. Napping rather than being woken
/// per line keeps the writer off the request path: no futex syscall or
/// context switch per line, one pass over whatever came meanwhile.
fn write_loop(mut sink: Sink, rx: mpsc::Receiver<Msg>, buffers: Arc<Buffers>, c: Arc<Counters>) {
    let mut alarm = Alarm {
        last: None,
        reported: 0,
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
        let mut error = sink.tick().err();
        // Collected after the messages: a flush asked for after a line was
        // recorded finds that line here.
        let threads: Vec<_> = lock(&buffers.all).clone();
        for b in &threads {
            std::mem::swap(&mut *lock(b), &mut taken);
            buffers
                .pending
                .fetch_sub(taken.bytes.len(), Ordering::Relaxed);
            if taken.lines > 0 {
                let (written, e) = sink.write(&taken.bytes, taken.lines);
                c.written.fetch_add(written, Ordering::Relaxed);
                c.failed.fetch_add(taken.lines - written, Ordering::Relaxed);
                if let Some(e) = e {
                    error.get_or_insert(e);
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
                error.get_or_insert(e);
            }
        }
        alarm.raise(error.as_ref(), &c);
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
    use crate::config::{LogUnit, RotateConfig};
    use crate::observe::access_log::sample_record as record;
    use serde_json::Value;

    fn file_config(
        path: &std::path::Path,
        rotate: Option<RotateConfig>,
        gzip: bool,
    ) -> AccessLogConfig {
        AccessLogConfig {
            target: LogTarget::File(path.to_path_buf()),
            unit: LogUnit::Raw,
            rotate,
            gzip,
        }
    }

    #[test]
    fn every_threads_lines_reach_the_file_in_each_threads_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.jsonl");
        let log = AccessLog::open(&file_config(&path, None, false)).unwrap();
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

    /// Every line of the log at `path` and its closed files (a closed file
    /// beside its `.gz` is read from the `.gz`), file by file in name order.
    fn all_files(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        use std::io::Read;
        let dir = path.parent().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".partial"))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in &names {
            if !n.ends_with(".gz") && names.contains(&format!("{n}.gz")) {
                continue;
            }
            let raw = std::fs::read(dir.join(n)).unwrap();
            let text = if n.ends_with(".gz") {
                let mut t = Vec::new();
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_end(&mut t)
                    .unwrap();
                t
            } else {
                raw
            };
            out.push((n.clone(), text));
        }
        out
    }

    #[test]
    fn rotation_by_size_keeps_every_line_whole_and_gzips_closed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.jsonl");
        // A leftover of a stopped run: a closed file not yet compressed and
        // a half-written archive of it.
        let old = dir.path().join("access.jsonl.20261201T000000.000001Z");
        let mut line = Vec::new();
        record().write_json(&mut line);
        line.push(b'\n');
        std::fs::write(&old, &line).unwrap();
        std::fs::write(
            dir.path()
                .join("access.jsonl.20261201T000000.000001Z.gz.partial"),
            b"x",
        )
        .unwrap();
        let max = 2048;
        let rotate = RotateConfig {
            max_bytes: Some(max),
            max_age: None,
        };
        let log = AccessLog::open(&file_config(&path, Some(rotate), true)).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..300 {
                        let mut r = record();
                        r.bytes_in = t * 1000 + i;
                        log.record(&r);
                        if i % 50 == 0 {
                            std::thread::sleep(NAP);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.flush();
        assert_eq!((log.written_lines(), log.failed_lines()), (1200, 0));
        // The compressor works in the background: wait for it to catch up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_dir(dir.path()).unwrap().any(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.ends_with(".partial") || (n.contains(".jsonl.") && !n.ends_with(".gz"))
        }) {
            assert!(Instant::now() < deadline, "closed files left uncompressed");
            std::thread::sleep(NAP);
        }
        let files = all_files(&path);
        assert!(files.len() > 20, "{} files", files.len());
        assert_eq!(files[0].0, "access.jsonl", "the live file sorts first");
        assert_eq!(files[1].0, "access.jsonl.20261201T000000.000001Z.gz");
        let mut seen = std::collections::BTreeSet::new();
        for (name, text) in &files[2..] {
            assert!(name.ends_with("Z.gz"), "{name}");
            assert!(
                !text.is_empty() && text.len() as u64 <= max,
                "{name}: {} bytes",
                text.len()
            );
            assert!(text.ends_with(b"\n"));
        }
        for (name, text) in &files[1..] {
            for l in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let v: Value =
                    serde_json::from_slice(l).unwrap_or_else(|e| panic!("{name}: torn line {e}"));
                if name.contains("20261201") {
                    continue;
                }
                assert!(
                    seen.insert(v["bytes_in"].as_u64().unwrap()),
                    "duplicate line"
                );
            }
        }
        let live = &files[0].1;
        for l in live.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(l).unwrap();
            assert!(
                seen.insert(v["bytes_in"].as_u64().unwrap()),
                "duplicate line"
            );
        }
        assert_eq!(seen.len(), 1200, "every line in exactly one file");
    }

    #[test]
    fn rotation_by_age_closes_a_file_with_lines_and_never_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.jsonl");
        let rotate = RotateConfig {
            max_bytes: None,
            max_age: Some(Duration::from_millis(300)),
        };
        let log = AccessLog::open(&file_config(&path, Some(rotate), false)).unwrap();
        log.record(&record());
        log.flush();
        let closed = || {
            let mut v: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p != &path)
                .collect();
            v.sort();
            v
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while closed().is_empty() {
            assert!(Instant::now() < deadline, "no rotation by age");
            std::thread::sleep(NAP);
        }
        // Idle: the empty live file is not rotated again and again.
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(closed().len(), 1);
        assert_eq!(
            std::fs::read(&closed()[0])
                .unwrap()
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
            1
        );
        log.record(&record());
        log.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn a_full_disk_drops_lines_counted_and_a_device_is_never_rotated() {
        let log =
            AccessLog::open(&file_config(std::path::Path::new("/dev/full"), None, false)).unwrap();
        for _ in 0..10 {
            log.record(&record());
        }
        log.flush();
        assert_eq!((log.written_lines(), log.failed_lines()), (0, 10));
        let rotate = Some(RotateConfig {
            max_bytes: Some(1 << 20),
            max_age: None,
        });
        let err = AccessLog::open(&file_config(
            std::path::Path::new("/dev/full"),
            rotate,
            false,
        ))
        .err()
        .expect("a device is never rotated");
        assert!(err.to_string().contains("regular file"), "{err}");
    }

    #[test]
    fn the_backlog_of_all_threads_together_stays_under_one_cap() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("access.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // A reader that never reads: once the pipe's 64 KiB are full, the
        // writer is stuck in its write, as on a stalled disk.
        let _stalled = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let cap = 1 << 20;
        let log = AccessLog::open_capped(&file_config(&fifo, None, false), cap).unwrap();
        let mut one = Vec::new();
        record().write_json(&mut one);
        let line = one.len() + 1;
        let (threads, per_thread) = (4, 2 * cap / line);
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        log.record(&record());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let held = || -> usize {
            lock(&log.buffers.all)
                .iter()
                .map(|b| lock(b).bytes.len())
                .sum()
        };
        // The count matches the buffers once the writer is stuck (it may
        // still be between taking a buffer and counting it out).
        let deadline = Instant::now() + Duration::from_secs(10);
        while held() != log.buffers.pending.load(Ordering::Relaxed) {
            assert!(
                Instant::now() < deadline,
                "the count of pending bytes is off"
            );
            std::thread::sleep(NAP);
        }
        let held = held();
        assert!(
            held <= cap + threads * line,
            "{held} bytes wait for the writer, over the cap of {cap}"
        );
        // What did not fit was counted as dropped, not lost silently.
        let recorded = (threads * per_thread) as u64;
        assert!(log.failed_lines() >= recorded - (3 * cap / line) as u64);
    }

    /// A stream that takes at most `budget` bytes, then fails; keeps each
    /// write it was given.
    struct Stream {
        budget: usize,
        writes: Vec<Vec<u8>>,
    }

    impl Write for Stream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            self.writes.push(buf[..n].to_vec());
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn stdout_gets_whole_lines_per_write_and_counts_only_the_lines_it_lost() {
        let mut bytes = Vec::new();
        let mut lines = 0;
        while bytes.len() < 3 * BUFFER {
            record().write_json(&mut bytes);
            bytes.push(b'\n');
            lines += 1;
        }
        let line = bytes.len() / lines as usize;
        let mut out = Stream {
            budget: usize::MAX,
            writes: Vec::new(),
        };
        let (written, e) = write_stream(&mut out, &bytes, lines);
        assert!(e.is_none());
        assert_eq!(written, lines);
        assert!(out.writes.len() > 3);
        for w in &out.writes {
            assert!(
                w.len() <= BUFFER && w.ends_with(b"\n"),
                "a line split across writes"
            );
        }
        assert_eq!(out.writes.concat(), bytes);
        // The stream breaks in the middle of the second piece: the lines
        // before the break were written, only the rest failed.
        let budget = BUFFER + BUFFER / 2;
        let mut out = Stream {
            budget,
            writes: Vec::new(),
        };
        let (written, e) = write_stream(&mut out, &bytes, lines);
        assert!(e.is_some());
        let whole = bytes[..budget].iter().filter(|b| **b == b'\n').count() as u64;
        assert_eq!(written, whole);
        assert!(written > (BUFFER / line) as u64 && written < lines);
    }
}
