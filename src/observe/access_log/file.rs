//! The log file on disk: appends whole lines, rotates by rename and reopen
//! (`access_log.rotate`), and hands closed files to a background thread
//! that gzips them (`access_log.compress: gzip`).
//!
//! Only the writer thread calls [`LogFile`], so a line is never split: a
//! batch handed to [`LogFile::write_lines`] is whole lines, a rotation
//! happens only between lines, and a write that fails halfway (disk full)
//! is cut back to its last whole line. A closed file is fsynced before its
//! rename and the directory after it, so after a crash the closed files are
//! complete and named. A rotation is done once the rename is: the closed
//! file goes to the compressor right away, and if the new file cannot be
//! opened (no descriptors, no inodes) the lines wait for it, dropped and
//! counted, while each batch tries again; none goes on into the closed file.
//!
//! Each MiB written is synced at once by a thread of its own
//! (`cohort-log-sync`), the way RocksDB's `bytes_per_sync` spreads its
//! writeback. Left to the kernel, a busy log's dirty pages are written back
//! together when they are 30 s old (`dirty_expire_centisecs`): hundreds of
//! MiB at once, and the store's `fdatasync` on the same disk queues behind
//! them (a 20–80 ms p99 spike every 30 s under heavy load,
//! `benches/mixed.sh`). The writer never waits for it: while a sync runs,
//! the next one is asked for at each later chunk until it is taken. An
//! error the sync thread meets is the writer's next batch's error (logged
//! and counted), and fails a rotation due then. The pages stay cached,
//! clean, for a log shipper to read; a power cut loses about the last MiB
//! of lines (more if the disk is slower than the log). Files only: stdout
//! and pipes are not synced. (`sync_file_range`, which only starts the
//! writeback, would spare the metadata commit; it needs `unsafe`, which
//! this crate forbids.)
//!
//! Closed files are named `<file>.<UTC close time>` with microseconds,
//! `access.jsonl.20261204T181500.123456Z`: fixed width, so the names sort by
//! time, and strictly increasing within a process (a second close in the
//! same microsecond takes the next one). Gzip appends `.gz`; the compressor
//! writes `<name>.gz.partial`, fsyncs it, renames it to `<name>.gz` and then
//! removes `<name>`. A `<name>` next to its `<name>.gz` is a copy about to go
//! (read the `.gz`), and at start-up the compressor finishes what a stopped
//! process left: stale `.partial` files go, closed files not yet compressed
//! are queued.

#[cfg(test)]
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::RotateConfig;
use crate::observe::time::rfc3339_millis;

/// Bytes handed to one `write` call: the writer yields the core between
/// them (see [`LogFile::write_lines`]).
const CHUNK: usize = 64 * 1024;

/// Bytes written between two syncs of the log's data.
const SYNC_EVERY: u64 = 1 << 20;

/// The open log file and its rotation state.
pub(super) struct LogFile {
    path: PathBuf,
    /// `None` after a rotation renamed the file away and the new one could
    /// not be opened yet: the next write opens it.
    file: Option<File>,
    /// A regular file: rotation and cutting back a torn write apply
    /// (`/dev/stderr` or a FIFO take neither).
    regular: bool,
    /// Bytes in the current file.
    size: u64,
    /// `size` when the last sync was asked for: the bytes after it are
    /// dirty in the page cache.
    written_back: u64,
    /// The sync thread (started with the first MiB written to a regular
    /// file): its queue takes a handle on the current file for each MiB
    /// written, one at a time (a MiB written while a sync runs waits for
    /// the next chunk's try).
    syncer: Option<Syncer>,
    /// When the current file got its first line: `max_age` counts from here.
    since: Option<SystemTime>,
    rotate: Option<RotateConfig>,
    /// The compressor's queue, with `compress: gzip`.
    gzip: Option<mpsc::Sender<PathBuf>>,
    /// The last closed name's time, in µs since the epoch.
    last_closed: u64,
    /// A rotation whose rename failed is retried after a second, not on
    /// every batch.
    failed_rotation: Option<Instant>,
}

impl LogFile {
    /// Opens `path` for appending (creating its folder). With `gzip`, starts
    /// the compressor and queues what a previous run left uncompressed.
    pub(super) fn open(
        path: &Path,
        rotate: Option<RotateConfig>,
        gzip: bool,
    ) -> io::Result<LogFile> {
        let file = open_append(path)?;
        let meta = file.metadata()?;
        if rotate.is_some() && !meta.is_file() {
            return Err(io::Error::other(
                "access_log.rotate needs a regular file (this is a device, FIFO or socket)",
            ));
        }
        let gzip = if gzip {
            let (tx, rx) = mpsc::channel();
            for leftover in leftovers(path)? {
                let _ = tx.send(leftover);
            }
            std::thread::Builder::new()
                .name("cohort-log-gzip".into())
                .spawn(move || compress_loop(rx))?;
            Some(tx)
        } else {
            None
        };
        Ok(LogFile {
            path: path.to_path_buf(),
            regular: meta.is_file(),
            size: meta.len(),
            written_back: meta.len(),
            syncer: None,
            since: first_line_time(&meta),
            file: Some(file),
            rotate,
            gzip,
            last_closed: 0,
            failed_rotation: None,
        })
    }

    /// Appends `bytes`, which hold `lines` whole lines, rotating between
    /// lines when `max_bytes` is reached; returns how many lines are in the
    /// file, and the first error. A failed write stops the batch (the rest
    /// is lost); a failed rotation does not (the lines go on into the
    /// current file). Yields the core after each 64 KiB: the writer shares
    /// it with the proxy's workers, and one long write of a whole
    /// collection (hundreds of KiB at full load) would hold them off for
    /// its whole duration and show in their p99.
    pub(super) fn write_lines(&mut self, bytes: &[u8], lines: u64) -> (u64, Option<io::Error>) {
        let mut rest = bytes;
        let mut written = 0;
        // A sync of earlier lines that failed is this batch's error.
        let mut error = self.sync_error();
        while !rest.is_empty() {
            let take = match self.fits(rest) {
                0 if self.rotate_now(&mut error) => continue,
                0 => rest.len(),
                n => n,
            };
            let piece = &rest[..take];
            rest = &rest[take..];
            if let Err((whole, e)) = self.append(piece) {
                return (written + count_lines(&piece[..whole]), Some(e));
            }
            written = if rest.is_empty() {
                lines
            } else {
                written + count_lines(piece)
            };
            if self.full() {
                self.rotate_now(&mut error);
            }
        }
        (written, error)
    }

    /// How much of `rest` (whole lines) goes into the current file: all of
    /// it, the lines that fit under `max_bytes`, or none (0: rotate first).
    /// An empty file takes at least one line, so a line longer than
    /// `max_bytes` gets a file of its own.
    fn fits(&self, rest: &[u8]) -> usize {
        let Some(max) = self.rotate.and_then(|r| r.max_bytes) else {
            return rest.len();
        };
        let room = max.saturating_sub(self.size) as usize;
        if rest.len() <= room || !self.may_rotate() {
            return rest.len();
        }
        let end_of_line = |from: &[u8]| from.iter().position(|b| *b == b'\n').map(|i| i + 1);
        match rest[..room].iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if self.size == 0 => end_of_line(rest).unwrap_or(rest.len()),
            None => 0,
        }
    }

    /// The error the sync thread met since the last call, if any.
    fn sync_error(&self) -> Option<io::Error> {
        let syncer = self.syncer.as_ref()?;
        syncer.failed.lock().expect("sync error lock").take()
    }

    fn full(&self) -> bool {
        let Some(max) = self.rotate.and_then(|r| r.max_bytes) else {
            return false;
        };
        self.size >= max && self.may_rotate()
    }

    fn may_rotate(&self) -> bool {
        self.regular
            && self
                .failed_rotation
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    }

    /// Writes `piece` (whole lines), first opening the new file if a
    /// rotation left none. On failure, cuts the file back to the last whole
    /// line written and returns how many bytes of `piece` that kept, with
    /// the error.
    fn append(&mut self, piece: &[u8]) -> Result<(), (usize, io::Error)> {
        if self.file.is_none() {
            // A folder that cannot be synced costs no line (the file is
            // open): the rename gets to disk with the next sync.
            if let Err(e) = self.open_new() {
                if self.file.is_none() {
                    return Err((0, e));
                }
            }
        }
        let Some(file) = &mut self.file else {
            return Err((0, io::ErrorKind::NotFound.into()));
        };
        let mut done = 0;
        while done < piece.len() {
            let end = (done + CHUNK).min(piece.len());
            #[cfg(test)]
            let written = fail_point("write").and_then(|()| file.write(&piece[done..end]));
            #[cfg(not(test))]
            let written = file.write(&piece[done..end]);
            match written {
                Ok(0) => {
                    return Err(self.cut_back(piece, done, io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => {
                    if self.size == 0 {
                        self.since = Some(SystemTime::now());
                    }
                    done += n;
                    self.size += n as u64;
                    if self.regular && self.size >= self.written_back + SYNC_EVERY {
                        if self.syncer.is_none() {
                            self.syncer = Syncer::start().ok();
                        }
                        let handed = match (&self.syncer, file.try_clone()) {
                            (Some(s), Ok(handle)) => s.tx.try_send(handle).is_ok(),
                            _ => false,
                        };
                        // Not handed (a sync still queued, no descriptor):
                        // the next chunk tries again.
                        if handed {
                            self.written_back = self.size;
                        }
                    }
                    if end == done {
                        std::thread::yield_now();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.cut_back(piece, done, e)),
            }
        }
        Ok(())
    }

    /// After `done` bytes of `piece` went in and the rest failed: removes
    /// the torn last line, so the file holds whole lines only.
    fn cut_back(&mut self, piece: &[u8], done: usize, e: io::Error) -> (usize, io::Error) {
        let whole = piece[..done]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let torn = (done - whole) as u64;
        if torn > 0 && self.regular {
            if let Some(file) = &self.file {
                // The file's own length, not `size`: an outside truncation
                // (copytruncate) since the last rotation leaves `size` too
                // big, and cutting to it would pad the file with NULs.
                if let Ok(len) = file.metadata().map(|m| m.len()) {
                    let kept = len.saturating_sub(torn);
                    if file.set_len(kept).is_ok() {
                        self.size = kept;
                    }
                }
            }
        }
        (whole, e)
    }

    /// Rotates when the current file has collected lines for `max_age`,
    /// and opens the new file if a rotation left none.
    pub(super) fn rotate_if_old(&mut self) -> io::Result<()> {
        let mut error = None;
        if self.file.is_none() {
            self.open_new()?;
        }
        let Some(max_age) = self.rotate.and_then(|r| r.max_age) else {
            return Ok(());
        };
        let old = self
            .since
            .is_some_and(|s| s.elapsed().unwrap_or_default() >= max_age);
        if self.size > 0 && old && self.may_rotate() {
            self.rotate_now(&mut error);
        }
        error.map_or(Ok(()), Err)
    }

    /// Closes the current file under its time-stamped name and starts a
    /// new one at the path: fsync, rename, open, fsync the folder. Returns
    /// whether the file was closed (renamed): then the closed file is
    /// queued for gzip and the next lines go to the new file, whatever
    /// failed after the rename (an open that failed is retried by the next
    /// write). Puts the first error in `error`.
    fn rotate_now(&mut self, error: &mut Option<io::Error>) -> bool {
        let Some(file) = self.file.take() else {
            // Closed already; the new file is still to open.
            return true;
        };
        let closed = self.closed_name();
        // The sync thread may have been told of a lost write-back that
        // this sync no longer hears of: not a complete file, then.
        if let Err(e) = file
            .sync_all()
            .and_then(|()| self.sync_error().map_or(Ok(()), Err))
            .and_then(|()| std::fs::rename(&self.path, &closed))
        {
            self.file = Some(file);
            self.failed_rotation = Some(Instant::now());
            error.get_or_insert(e);
            return false;
        }
        drop(file);
        // From here the lines are under the closed name: whatever happens
        // next, the new file starts empty and the closed one is complete.
        self.size = 0;
        self.written_back = 0;
        self.since = None;
        self.failed_rotation = None;
        if let Some(tx) = &self.gzip {
            let _ = tx.send(closed);
        }
        if let Err(e) = self.open_new() {
            error.get_or_insert(e);
        }
        true
    }

    /// Opens the new file after a rotation and fsyncs the folder, so the
    /// rename and the new file are durable. The file stays open when only
    /// the folder's fsync fails.
    fn open_new(&mut self) -> io::Result<()> {
        self.file = Some(open_append(&self.path)?);
        sync_dir(&self.path)
    }

    /// `<path>.<UTC now to the µs>Z`, later than every name closed before
    /// and not taken.
    fn closed_name(&mut self) -> PathBuf {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        let mut us = now.max(self.last_closed + 1);
        loop {
            let name = closed_path(&self.path, us);
            let taken = name.exists() || gz_of(&name).exists();
            if !taken {
                self.last_closed = us;
                return name;
            }
            us += 1;
        }
    }

    /// Reopens the path (after an outside tool such as logrotate moved the
    /// file away).
    pub(super) fn reopen(&mut self) -> io::Result<()> {
        let file = self.file.insert(open_append(&self.path)?);
        let meta = file.metadata()?;
        self.regular = meta.is_file();
        self.size = meta.len();
        self.written_back = self.size;
        self.since = first_line_time(&meta);
        Ok(())
    }
}

/// The thread that syncs the log's data as it is written, and the first
/// error it met, for the writer to report.
struct Syncer {
    tx: mpsc::SyncSender<File>,
    failed: std::sync::Arc<std::sync::Mutex<Option<io::Error>>>,
}

impl Syncer {
    fn start() -> io::Result<Syncer> {
        let (tx, rx) = mpsc::sync_channel::<File>(1);
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let report = failed.clone();
        std::thread::Builder::new()
            .name("cohort-log-sync".into())
            .spawn(move || {
                for file in rx {
                    // The handle shares the writer's open file, so this
                    // call, not the writer's next sync, is the one told of
                    // a lost write-back (EIO): it goes to the writer.
                    if let Err(e) = file.sync_data() {
                        // Logged here too: the writer's alarm is rate
                        // limited, and this error is rare and matters.
                        tracing::error!(error = %e, "access log: syncing written lines failed; some may be lost");
                        report.lock().expect("sync error lock").get_or_insert(e);
                    }
                }
            })?;
        Ok(Syncer { tx, failed })
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    #[cfg(test)]
    fail_point("open")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// An existing file with lines: its age counts from its creation (or last
/// change, where the filesystem keeps no creation time).
fn first_line_time(meta: &std::fs::Metadata) -> Option<SystemTime> {
    (meta.len() > 0).then(|| meta.created().or_else(|_| meta.modified()).ok())?
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|c| **c == b'\n').count() as u64
}

/// Makes a rename or new file in `path`'s folder durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(test)]
    fail_point("sync_dir")?;
    File::open(dir)?.sync_all()
}

/// `access.jsonl` closed at `us` µs: `access.jsonl.20261204T181500.123456Z`.
fn closed_path(path: &Path, us: u64) -> PathBuf {
    let t = UNIX_EPOCH + Duration::from_micros(us);
    // 2026-12-04T18:15:00.123Z -> 20261204T181500.123
    let stamp: String = rfc3339_millis(t)
        .trim_end_matches('Z')
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{stamp}{:03}Z", us % 1000));
    PathBuf::from(name)
}

fn gz_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    PathBuf::from(name)
}

/// Whether `suffix` (what follows `<file>.`) is a close stamp:
/// `20261204T181500.123456Z`.
fn is_stamp(suffix: &str) -> bool {
    let b = suffix.as_bytes();
    b.len() == 23
        && b[8] == b'T'
        && b[15] == b'.'
        && b[22] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 15 | 22) || c.is_ascii_digit())
}

/// What a stopped process left half done next to `path`: removes stale
/// `.gz.partial` files and closed files whose `.gz` is complete; returns
/// the closed files still to compress, oldest first.
fn leftovers(path: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", base.to_string_lossy());
    let mut todo = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let full = entry.path();
        if rest.strip_suffix(".gz.partial").is_some_and(is_stamp) {
            let _ = std::fs::remove_file(&full);
        } else if is_stamp(rest) {
            if gz_of(&full).exists() {
                let _ = std::fs::remove_file(&full);
            } else {
                todo.push(full);
            }
        }
    }
    todo.sort();
    Ok(todo)
}

/// The compressor thread: gzips each closed file it is sent, until the
/// writer goes away. Errors are logged at most once a second; a file that
/// failed stays as it is, uncompressed and complete.
fn compress_loop(rx: mpsc::Receiver<PathBuf>) {
    let mut last_report: Option<Instant> = None;
    for path in rx {
        if let Err(e) = compress(&path) {
            if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_report = Some(Instant::now());
                tracing::error!(file = %path.display(), error = %e, "access log: cannot gzip a closed file (it stays uncompressed)");
            }
        }
    }
}

/// `X` -> `X.gz.partial` (fsynced) -> `X.gz`, then `X` is removed.
fn compress(path: &Path) -> io::Result<()> {
    let gz = gz_of(path);
    let mut partial = gz.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let mut input = File::open(path)?;
        let out = io::BufWriter::with_capacity(CHUNK, File::create(&partial)?);
        // gzip's own default level: about 10x on these JSON lines, and the
        // thread is off the request path.
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        io::copy(&mut input, &mut enc)?;
        let out = enc.finish()?.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        std::fs::rename(&partial, &gz)?;
        sync_dir(&gz)?;
        std::fs::remove_file(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
thread_local! {
    /// Failures a test arms on its own thread: (point, calls to pass first).
    static FAIL: RefCell<Vec<(&'static str, u32)>> = const { RefCell::new(Vec::new()) };
}

/// Fails once at `point` if this thread's test armed it (after letting the
/// armed number of calls pass).
#[cfg(test)]
fn fail_point(point: &str) -> io::Result<()> {
    FAIL.with(|f| {
        let mut f = f.borrow_mut();
        let Some(i) = f.iter().position(|(p, _)| *p == point) else {
            return Ok(());
        };
        if f[i].1 > 0 {
            f[i].1 -= 1;
            return Ok(());
        }
        f.remove(i);
        Err(io::Error::other(format!("injected failure: {point}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_names_are_fixed_width_stamps_that_sort_by_time() {
        let p = Path::new("/logs/access.jsonl");
        // 2026-12-04T18:15:00.123456Z
        let us = 1_796_408_100_123_456;
        let name = closed_path(p, us);
        assert_eq!(
            name,
            Path::new("/logs/access.jsonl.20261204T181500.123456Z")
        );
        let later = closed_path(p, us + 1_000_000 * 3600 * 24 * 40 + 7);
        assert!(name < later, "{name:?} {later:?}");
        let suffix = |n: &Path| {
            n.to_string_lossy()
                .strip_prefix("/logs/access.jsonl.")
                .unwrap()
                .to_string()
        };
        assert!(is_stamp(&suffix(&name)) && is_stamp(&suffix(&later)));
        assert!(!is_stamp("1") && !is_stamp("20261204T181500.123456Z.gz"));
    }

    #[test]
    fn each_mib_written_goes_to_the_disk_at_once_not_after_the_kernels_30_s() {
        let Some(dir) = crate::test_support::writeback_dir() else {
            return;
        };
        let path = dir.path().join("access.jsonl");
        let mut log = LogFile::open(&path, None, false).unwrap();
        assert_eq!(crate::test_support::dirty_pages(&path), Some(0));
        // 16 MiB in batches of 256 KiB: the kernel alone would keep all of
        // it dirty for 30 s (`dirty_expire_centisecs`) on a machine this
        // size, far under its background threshold.
        let line = format!("{{\"n\":{}}}\n", "1".repeat(250));
        let batch = line.repeat(256 * 1024 / line.len());
        let lines = (batch.len() / line.len()) as u64;
        let mut written = 0;
        while written < 16 << 20 {
            clean(log.write_lines(batch.as_bytes(), lines));
            written += batch.len();
        }
        // What is left dirty is at most the last MiB, not yet handed over
        // (once the last sync has run: give it a moment).
        const { assert!(SYNC_EVERY <= 1 << 20) };
        let limit = (1 << 20) / 4096 + 16;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dirty = crate::test_support::dirty_pages(&path).unwrap();
            if dirty <= limit {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{dirty} pages still dirty of {} written",
                written / 4096
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn clean((written, e): (u64, Option<io::Error>)) -> u64 {
        assert!(e.is_none(), "{e:?}");
        written
    }

    fn arm(point: &'static str, pass: u32) {
        FAIL.with(|f| f.borrow_mut().push((point, pass)));
    }

    /// Lines `from..to`, 12 bytes each: `{"n":00007}`.
    fn lines(from: u64, to: u64) -> Vec<u8> {
        (from..to)
            .flat_map(|n| format!("{{\"n\":{n:05}}}\n").into_bytes())
            .collect()
    }

    /// Each file next to `path` (decoded if gzipped) with its line numbers,
    /// once the compressor has left no closed file uncompressed.
    fn files(path: &Path) -> Vec<(String, Vec<u64>)> {
        use std::io::Read;
        let dir = path.parent().unwrap();
        let names = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while names()
            .iter()
            .any(|n| n.ends_with('Z') || n.ends_with(".partial"))
        {
            assert!(
                Instant::now() < deadline,
                "left uncompressed: {:?}",
                names()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        names()
            .into_iter()
            .map(|n| {
                let raw = std::fs::read(dir.join(&n)).unwrap();
                let mut text = Vec::new();
                if n.ends_with(".gz") {
                    flate2::read::GzDecoder::new(&raw[..])
                        .read_to_end(&mut text)
                        .unwrap();
                } else {
                    text = raw;
                }
                assert!(!text.contains(&0), "{n}: NUL bytes");
                let text = String::from_utf8(text).unwrap();
                assert!(text.is_empty() || text.ends_with('\n'), "{n}: torn line");
                let numbers = text
                    .lines()
                    .map(|l| {
                        l.strip_prefix("{\"n\":")
                            .and_then(|l| l.strip_suffix('}'))
                            .unwrap_or_else(|| panic!("{n}: torn line {l:?}"))
                            .parse()
                            .unwrap()
                    })
                    .collect();
                (n, numbers)
            })
            .collect()
    }

    #[test]
    fn a_new_file_that_cannot_be_opened_after_the_rename_is_opened_by_a_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.jsonl");
        let rotate = RotateConfig {
            max_bytes: Some(100),
            max_age: None,
        };
        let mut log = LogFile::open(&path, Some(rotate), true).unwrap();
        // 8 lines fill the file; the rotation renames it, and the new file
        // cannot be opened, neither by the rotation nor by the write of the
        // last 2 lines (no descriptors left): those 2 are dropped.
        arm("open", 0);
        arm("open", 0);
        let (written, e) = log.write_lines(&lines(0, 10), 10);
        assert_eq!(written, 8);
        assert!(e.is_some());
        assert!(!path.exists(), "the file was renamed away");
        // The next batch opens the new file and rotation goes on.
        assert_eq!(clean(log.write_lines(&lines(10, 20), 10)), 10);
        // A folder that cannot be synced after the rename: the rotation is
        // done all the same (the closed file is queued for gzip, the lines
        // go on into the new file) and the next one is not held back.
        arm("sync_dir", 0);
        let (written, e) = log.write_lines(&lines(20, 30), 10);
        assert_eq!(written, 10);
        assert!(e.is_some());
        assert_eq!(clean(log.write_lines(&lines(30, 50), 20)), 20);
        drop(log);
        let files = files(&path);
        assert_eq!(files[0].0, "access.jsonl");
        let mut seen: Vec<u64> = Vec::new();
        for (name, numbers) in &files {
            assert!(numbers.len() <= 8, "{name}: {numbers:?}, over max_bytes");
            assert!(name == "access.jsonl" || name.ends_with("Z.gz"), "{name}");
            seen.extend(numbers);
        }
        seen.sort();
        let expected: Vec<u64> = (0..50).filter(|n| !matches!(n, 8 | 9)).collect();
        assert_eq!(
            seen, expected,
            "every written line once, in a file of its own"
        );
    }

    #[test]
    fn a_torn_write_after_an_outside_truncation_is_cut_back_without_nul_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.jsonl");
        let mut log = LogFile::open(&path, None, false).unwrap();
        assert_eq!(clean(log.write_lines(&lines(0, 1000), 1000)), 1000);
        // copytruncate: the file is copied away and emptied under the writer.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        // The batch goes out in 64 KiB writes: the first ends inside a line,
        // the second fails (a full disk), so the torn line is cut off.
        arm("write", 1);
        let (written, e) = log.write_lines(&lines(1000, 7000), 6000);
        assert!(e.is_some());
        let whole = CHUNK as u64 / 12;
        assert_eq!(written, whole);
        let files = files(&path);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].1, (1000..1000 + whole).collect::<Vec<_>>());
        // And the file goes on from there.
        assert_eq!(clean(log.write_lines(&lines(7000, 7001), 1)), 1);
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len() as u64, (whole + 1) * 12);
    }
}
