//! The access log: one JSON object per line per request, the record the
//! warehouse groups cohorts by.
//!
//! Lines are serialized on the request's own task and handed to a writer
//! thread over a channel; the thread buffers them (64 KiB) and writes when
//! the buffer fills and every 500 ms, so the request path makes no
//! syscall for logging. On shutdown the channel is drained and flushed;
//! SIGUSR1 reopens the file (logrotate). A line that cannot be written is
//! counted ([`AccessLog::failed_lines`]) and reported, never dropped silently.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri};
use serde::ser::SerializeStruct;
use serde::Serialize;

use super::time;

use crate::config::LogTarget;

/// Bumped when a field changes meaning or is removed (adding one is not).
pub const SCHEMA_VERSION: u32 = 1;
const FLUSH_EVERY: Duration = Duration::from_millis(500);
const NAP: Duration = Duration::from_millis(20);
const BUFFER: usize = 64 * 1024;

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
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
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
            upstream_ms: None,
            total_ms: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            config_version,
            error: None,
        }
    }
}

fn lossy(v: &HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

impl Serialize for AccessRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("AccessRecord", 24)?;
        m.serialize_field("ts", &*time::cached_rfc3339_millis(self.at))?;
        m.serialize_field("schema", &SCHEMA_VERSION)?;
        m.serialize_field("request_id", &lossy(&self.request_id))?;
        m.serialize_field("method", self.method.as_str())?;
        m.serialize_field("path", self.path.path())?;
        m.serialize_field("status", &self.status)?;
        m.serialize_field("experiment", &self.experiment.as_deref())?;
        let unit = self.unit.as_ref().map(|u| match u {
            LoggedUnit::Raw(v) => lossy(v),
            LoggedUnit::Hashed(h) => std::borrow::Cow::Borrowed(h.as_str()),
        });
        m.serialize_field("unit", &unit)?;
        m.serialize_field("variant", &self.variant.as_deref())?;
        m.serialize_field("epoch", &self.epoch)?;
        m.serialize_field("current_epoch", &self.current_epoch)?;
        m.serialize_field("first_exposure", &self.first_exposure)?;
        m.serialize_field("in_experiment", &self.in_experiment)?;
        m.serialize_field("forced", &self.forced)?;
        m.serialize_field("paused", &self.paused)?;
        m.serialize_field("reason", &self.reason)?;
        m.serialize_field("bucket", &self.bucket)?;
        m.serialize_field("upstream", &self.upstream.as_deref())?;
        m.serialize_field("upstream_ms", &self.upstream_ms)?;
        m.serialize_field("total_ms", &self.total_ms)?;
        m.serialize_field("bytes_in", &self.bytes_in)?;
        m.serialize_field("bytes_out", &self.bytes_out)?;
        m.serialize_field("config_version", &*self.config_version)?;
        m.serialize_field("error", &self.error)?;
        m.end()
    }
}

enum Msg {
    Line(Vec<u8>),
    Reopen,
    Flush(mpsc::Sender<()>),
}

struct Counters {
    written: AtomicU64,
    failed: AtomicU64,
}

/// A handle to the log writer; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
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
        let c = counters.clone();
        std::thread::Builder::new()
            .name("cohort-log".into())
            .spawn(move || write_loop(sink, rx, c))?;
        Ok(AccessLog { tx, counters })
    }

    pub fn record(&self, rec: &AccessRecord) {
        let mut line = Vec::with_capacity(512);
        serde_json::to_writer(&mut line, rec).expect("record serializes");
        line.push(b'\n');
        if self.tx.send(Msg::Line(line)).is_err() {
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

/// Naps instead of blocking on the channel: a blocked receiver would be
/// woken (a futex syscall and a context switch) by every line; a napping
/// one is not, and picks up everything queued meanwhile in one pass.
fn write_loop(mut sink: Sink, rx: mpsc::Receiver<Msg>, c: Arc<Counters>) {
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
    loop {
        std::thread::sleep(NAP);
        let mut disconnected = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Line(l)) => match sink.write(&l) {
                    Ok(()) => pending += 1,
                    Err(e) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        report(&e, &c);
                    }
                },
                Ok(Msg::Reopen) => {
                    if let Err(e) = sink.reopen() {
                        report(&e, &c);
                    }
                }
                Ok(Msg::Flush(tx)) => acks.push(tx),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if !acks.is_empty() || disconnected || last_flush.elapsed() >= FLUSH_EVERY {
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
