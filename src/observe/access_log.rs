//! The access log: one JSON object per line per request, the record the
//! warehouse groups cohorts by.
//!
//! A line is rendered on the request's own thread straight into that
//! thread's log buffer; a writer thread collects every thread's buffer each
//! 20 ms (swapping in an empty one) and writes, flushing at least every
//! 500 ms, so the request path makes no syscall, allocation or channel send
//! for logging. The buffer's mutex is the thread's own: the only other party
//! is the writer, once per collection, so it is never waited on in practice.
//! Lines of one thread keep their order; lines of different threads
//! interleave by collection (each line carries its `ts`).
//!
//! A thread's buffer holds at most [`MAX_PENDING`] bytes: past that (the
//! disk cannot keep up) lines are counted as failed instead of growing
//! memory without bound. On shutdown every buffer is collected and flushed;
//! SIGUSR1 reopens the file (logrotate). A line that cannot be written is
//! counted ([`AccessLog::failed_lines`]) and reported, never dropped silently.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri};

use super::time;

use crate::config::LogTarget;

/// Bumped when a field changes meaning or is removed (adding one is not).
pub const SCHEMA_VERSION: u32 = 1;
const FLUSH_EVERY: Duration = Duration::from_millis(500);
const NAP: Duration = Duration::from_millis(20);
const BUFFER: usize = 64 * 1024;
/// Per thread, what may wait for the writer: about 30 s of this thread's
/// lines at 50k requests/s, far more than a healthy disk ever lags by.
/// (The buffer grows by doubling, so its memory can reach twice this.)
pub const MAX_PENDING: usize = 64 * 1024 * 1024;

/// One request, as the warehouse sees it. Field meanings are documented in
/// README ("Access log"). The fields are cheap to fill on the request path
/// (shared strings, header values, no formatting); the line is rendered
/// once, when the response ends.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub at: SystemTime,
    pub request_id: HeaderValue,
    pub method: Method,
    pub path: Uri,
    pub status: u16,
    pub experiment: Option<Arc<str>>,
    pub unit: Option<LoggedUnit>,
    pub variant: Option<Arc<str>>,
    pub epoch: u32,
    pub current_epoch: u32,
    pub first_exposure: bool,
    /// Whether the unit holds an assignment in this experiment.
    pub in_experiment: bool,
    pub forced: bool,
    pub paused: bool,
    pub reason: Option<&'static str>,
    pub bucket: Option<u32>,
    pub upstream: Option<Arc<str>>,
    /// Logged as `upstream_ms`, in milliseconds with microsecond precision.
    pub upstream_time: Option<Duration>,
    /// Logged as `total_ms`.
    pub total_time: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub config_version: Arc<str>,
    pub error: Option<&'static str>,
}

/// The unit as logged: the raw header value, or its keyed hash.
#[derive(Debug, Clone)]
pub enum LoggedUnit {
    Raw(HeaderValue),
    Hashed(String),
}

impl AccessRecord {
    /// A record with only the request's own facts filled in.
    pub fn new(
        at: SystemTime,
        request_id: HeaderValue,
        method: Method,
        path: Uri,
        config_version: Arc<str>,
    ) -> AccessRecord {
        AccessRecord {
            at,
            request_id,
            method,
            path,
            status: 0,
            experiment: None,
            unit: None,
            variant: None,
            epoch: 0,
            current_epoch: 0,
            first_exposure: false,
            in_experiment: false,
            forced: false,
            paused: false,
            reason: None,
            bucket: None,
            upstream: None,
            upstream_time: None,
            total_time: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            config_version,
            error: None,
        }
    }
}

impl AccessRecord {
    /// Appends the record as one JSON object (no newline). Written by hand
    /// rather than through serde: the log renders a line per request, and
    /// the fields are few and fixed. Header values that are not UTF-8 are
    /// logged lossily (U+FFFD), like every other string here.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = JsonObject::start(out);
        o.key("ts");
        o.out.push(b'"');
        time::write_rfc3339_millis(self.at, o.out);
        o.out.push(b'"');
        o.uint("schema", u64::from(SCHEMA_VERSION));
        o.bytes("request_id", self.request_id.as_bytes());
        o.str("method", self.method.as_str());
        o.str("path", self.path.path());
        o.uint("status", u64::from(self.status));
        o.opt_str("experiment", self.experiment.as_deref());
        match &self.unit {
            Some(LoggedUnit::Raw(v)) => o.bytes("unit", v.as_bytes()),
            Some(LoggedUnit::Hashed(h)) => o.str("unit", h),
            None => o.null("unit"),
        }
        o.opt_str("variant", self.variant.as_deref());
        o.uint("epoch", u64::from(self.epoch));
        o.uint("current_epoch", u64::from(self.current_epoch));
        o.bool("first_exposure", self.first_exposure);
        o.bool("in_experiment", self.in_experiment);
        o.bool("forced", self.forced);
        o.bool("paused", self.paused);
        o.opt_str("reason", self.reason);
        match self.bucket {
            Some(b) => o.uint("bucket", u64::from(b)),
            None => o.null("bucket"),
        }
        o.opt_str("upstream", self.upstream.as_deref());
        match self.upstream_time {
            Some(d) => o.millis("upstream_ms", d),
            None => o.null("upstream_ms"),
        }
        o.millis("total_ms", self.total_time);
        o.uint("bytes_in", self.bytes_in);
        o.uint("bytes_out", self.bytes_out);
        o.str("config_version", &self.config_version);
        o.opt_str("error", self.error);
        o.end();
    }
}

/// Writes one flat JSON object's members in order.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonObject<'a> {
    fn start(out: &'a mut Vec<u8>) -> JsonObject<'a> {
        out.push(b'{');
        JsonObject { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        escaped(self.out, v);
    }

    fn bytes(&mut self, k: &str, v: &[u8]) {
        self.key(k);
        escaped(self.out, &String::from_utf8_lossy(v));
    }

    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    fn null(&mut self, k: &str) {
        self.key(k);
        self.out.extend_from_slice(b"null");
    }

    fn uint(&mut self, k: &str, v: u64) {
        self.key(k);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
    }

    /// `d` in milliseconds with microsecond precision, as the shortest
    /// decimal with at least one fraction digit (`0.075`, `2.0`): what
    /// serde_json prints for the f64 `micros / 1000.0`.
    fn millis(&mut self, k: &str, d: Duration) {
        self.key(k);
        let micros = d.as_micros();
        let mut int = itoa::Buffer::new();
        self.out
            .extend_from_slice(int.format(micros / 1000).as_bytes());
        let frac = (micros % 1000) as u32;
        let keep = match frac {
            f if f % 100 == 0 => 1,
            f if f % 10 == 0 => 2,
            _ => 3,
        };
        self.out.push(b'.');
        self.out
            .extend_from_slice(&time::three_digits(frac)[..keep]);
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

/// `s` as a JSON string: quotes, backslashes and control characters
/// escaped, everything else (non-ASCII included) copied as is.
fn escaped(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        clean = i + 1;
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
}

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
        })
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
    use serde_json::{json, Value};

    fn record() -> AccessRecord {
        let mut r = AccessRecord::new(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_131_999_075),
            HeaderValue::from_static("req-1"),
            Method::POST,
            Uri::from_static("/predict?x=1"),
            Arc::from("abc123"),
        );
        r.status = 200;
        r.experiment = Some(Arc::from("ranker"));
        r.variant = Some(Arc::from("new"));
        r.epoch = 2;
        r.current_epoch = 3;
        r.first_exposure = true;
        r.in_experiment = true;
        r.reason = Some("sticky");
        r.bucket = Some(4321);
        r.upstream = Some(Arc::from("127.0.0.1:9002"));
        r.upstream_time = Some(Duration::from_micros(75));
        r.total_time = Duration::from_millis(2);
        r.bytes_in = 64;
        r.bytes_out = 1024;
        r
    }

    fn line(r: &AccessRecord) -> String {
        let mut out = Vec::new();
        r.write_json(&mut out);
        String::from_utf8(out).expect("the line is UTF-8")
    }

    #[test]
    fn a_record_is_one_json_object_with_every_field_in_order() {
        let mut r = record();
        r.unit = Some(LoggedUnit::Raw(HeaderValue::from_static("user-7")));
        let text = line(&r);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            v,
            json!({
                "ts": "2026-12-01T13:33:19.075Z", "schema": 1, "request_id": "req-1",
                "method": "POST", "path": "/predict", "status": 200,
                "experiment": "ranker", "unit": "user-7", "variant": "new",
                "epoch": 2, "current_epoch": 3, "first_exposure": true,
                "in_experiment": true, "forced": false, "paused": false,
                "reason": "sticky", "bucket": 4321, "upstream": "127.0.0.1:9002",
                "upstream_ms": 0.075, "total_ms": 2.0, "bytes_in": 64,
                "bytes_out": 1024, "config_version": "abc123", "error": null
            })
        );
        let keys: Vec<&str> = text
            .split("\":")
            .map(|k| k.rsplit('"').next().unwrap())
            .collect();
        assert_eq!(&keys[..3], ["ts", "schema", "request_id"]);
        assert!(text.ends_with("\"error\":null}"), "{text}");
    }

    #[test]
    fn absent_fields_are_null() {
        let r = AccessRecord::new(
            SystemTime::UNIX_EPOCH,
            HeaderValue::from_static("r"),
            Method::GET,
            Uri::from_static("/"),
            Arc::from("v"),
        );
        let v: Value = serde_json::from_str(&line(&r)).expect("valid JSON");
        for k in [
            "experiment",
            "unit",
            "variant",
            "reason",
            "bucket",
            "upstream",
            "upstream_ms",
            "error",
        ] {
            assert_eq!(v[k], Value::Null, "{k}");
        }
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn strings_are_escaped_and_bytes_that_are_not_utf8_are_replaced() {
        let mut r = record();
        let unit = HeaderValue::from_bytes(b"a\"b\\c\td\xffz").expect("obs-text is allowed");
        r.unit = Some(LoggedUnit::Raw(unit));
        r.experiment = Some(Arc::from("line\nbreak\r\u{1}\u{8}\u{c}é"));
        let text = line(&r);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["unit"], "a\"b\\c\td\u{fffd}z");
        assert_eq!(v["experiment"], "line\nbreak\r\u{1}\u{8}\u{c}é");
        assert!(
            text.contains(r#""experiment":"line\nbreak\r\u0001\b\fé""#),
            "{text}"
        );
    }

    #[test]
    fn milliseconds_print_as_serde_json_prints_the_same_f64() {
        for micros in [
            0u64,
            1,
            10,
            75,
            100,
            1500,
            2000,
            12_340,
            999_999,
            123_456_789,
        ] {
            let ms = micros as f64 / 1000.0;
            let mut out = Vec::new();
            JsonObject::start(&mut out).millis("m", Duration::from_micros(micros));
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                text,
                format!("{{\"m\":{}", serde_json::to_string(&ms).unwrap()),
                "{micros} µs"
            );
        }
    }

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
