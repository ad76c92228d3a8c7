//! `cohort report LOG...`: reads access logs (plain or gzip, streamed) and
//! prints, per experiment × epoch × variant, units, first exposures,
//! requests, error rate and latency quantiles; the sample-ratio test of
//! each epoch; and the cohort-integrity audit (docs/report.md). It lives
//! apart from the proxy: it only reads the log's documented lines, as a
//! warehouse would, so it checks the log's contract as much as the proxy.
//!
//! Memory is bounded by units and cells, not lines ([`tally`]); lines are
//! read one at a time into one reused buffer and scanned in place
//! ([`scan`]).

mod render;
mod scan;
mod srm;
mod summary;
mod tally;

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Outcome;
pub use render::Format;
use tally::Tally;

/// Exit status when the audit or an SRM test fails.
pub const EXIT_FAILED: u8 = 3;
/// The SRM test's default significance level (the proxy's live alarm's).
pub const DEFAULT_ALPHA: f64 = 0.001;

/// What `cohort report` was asked.
pub struct ReportOptions {
    /// The access logs, read in order (plain or gzip).
    pub logs: Vec<PathBuf>,
    /// How to print the result.
    pub format: Format,
    /// An SRM p-value below this fails the report.
    pub alpha: f64,
    /// Show progress on stderr (when it is a terminal).
    pub progress: bool,
    /// A store whose ledger gives the weights of epochs whose first
    /// exposures were logged without `share` (lines older than the field).
    pub store: Option<PathBuf>,
}

/// Runs the report: exit 0 clean, 3 when the audit or an SRM test
/// fails, 1 when a log cannot be read or the options make no sense (clap's
/// own usage errors are mapped to 1 in `main`).
pub fn report_command(opts: &ReportOptions) -> Outcome {
    if !(opts.alpha > 0.0 && opts.alpha < 1.0) {
        return Outcome::fail(format!(
            "cohort report: --alpha {} is not a significance level (0 < alpha < 1)",
            opts.alpha
        ));
    }
    let mut tally = Tally::default();
    let total: u64 = opts
        .logs
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let mut progress = Progress::new(opts.progress && std::io::stderr().is_terminal(), total);
    for path in &opts.logs {
        if let Err(e) = read_log(path, &mut tally, &mut progress) {
            progress.clear();
            return Outcome::fail(format!("cohort report: {}: {e}", path.display()));
        }
    }
    progress.clear();
    if let Some(dir) = &opts.store {
        match crate::assign::store::StoreView::open(dir) {
            Ok(view) => tally.shares_from_ledger(&view.ledger()),
            Err(e) => return Outcome::fail(format!("cohort report: store {}: {e}", dir.display())),
        }
    }
    let summary = summary::summarize(&tally, opts.alpha);
    let mut stderr = String::new();
    if tally.malformed > 0 {
        stderr = format!(
            "cohort report: {} of {} lines are not access-log JSON and were skipped\n",
            tally.malformed, tally.lines
        );
    }
    Outcome {
        stdout: render::render(opts.format, &summary, &tally, opts.alpha),
        stderr,
        code: if summary.clean { 0 } else { EXIT_FAILED },
    }
}

/// Reads one log into `tally`: gzip when it starts with gzip's magic.
fn read_log(path: &Path, tally: &mut Tally, progress: &mut Progress) -> std::io::Result<()> {
    let counted = Counted {
        inner: File::open(path)?,
        read: progress.read.clone(),
    };
    let mut raw = BufReader::with_capacity(1 << 20, counted);
    let gzip = raw.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn BufRead> = if gzip {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(raw),
        ))
    } else {
        Box::new(raw)
    };
    read_lines(&mut reader, path, tally, progress)
}

fn read_lines(
    reader: &mut dyn BufRead,
    path: &Path,
    tally: &mut Tally,
    progress: &mut Progress,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut n: u64 = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        n += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match scan::scan(line) {
            Ok(l) => tally.add(&l, &|| format!("{}:{n}", path.display())),
            Err(scan::Malformed) => {
                tally.lines += 1;
                tally.malformed += 1;
            }
        }
        if n & 0xffff == 0 {
            progress.tick(tally.lines);
        }
    }
}

/// A reader that counts the bytes read from the file (compressed bytes
/// for gzip), for the progress bar.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A one-line progress bar on stderr, redrawn at most five times a second;
/// off when stderr is not a terminal (then nothing is written).
struct Progress {
    on: bool,
    total: u64,
    read: Arc<AtomicU64>,
    last: Instant,
}

impl Progress {
    fn new(on: bool, total: u64) -> Progress {
        Progress {
            on,
            total,
            read: Arc::new(AtomicU64::new(0)),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, lines: u64) {
        if !self.on || self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        let read = self.read.load(Ordering::Relaxed);
        let frac = if self.total == 0 {
            1.0
        } else {
            (read as f64 / self.total as f64).min(1.0)
        };
        const WIDTH: usize = 30;
        let done = (frac * WIDTH as f64) as usize;
        let _ = write!(
            std::io::stderr(),
            "\r[{}{}] {:>3.0}% {} MiB, {lines} lines",
            "#".repeat(done),
            " ".repeat(WIDTH - done),
            frac * 100.0,
            read >> 20,
        );
    }

    fn clear(&mut self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}
