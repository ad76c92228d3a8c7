//! The access log: one JSON object per line per request, the record the
//! warehouse groups cohorts by.
//!
//! A line is rendered on the request's own thread straight into that
//! thread's log buffer; a writer thread collects every thread's buffer each
//! 20 ms (swapping in an empty one) and writes each buffer straight to the
//! file (no second buffer in user space: a collection is already one large
//! write), so the request path makes no syscall, allocation or channel send
//! for logging. The buffer's mutex is the thread's own: the only other party
//! is the writer, once per collection, so it is never waited on in practice.
//! Lines of one thread keep their order; lines of different threads
//! interleave by collection (each line carries its `ts`).
//!
//! All threads' buffers together hold at most [`writer::MAX_PENDING`] bytes
//! (one shared count, so the bound does not grow with the number of
//! threads): past that (the disk cannot keep up) lines are counted as
//! failed instead of growing memory without bound. On shutdown every buffer is collected and written;
//! SIGUSR1 reopens the file (logrotate); `access_log.rotate` rotates it
//! from inside the writer, between lines. A line that cannot be written
//! (disk full) is counted ([`AccessLog::failed_lines`]) and reported, at
//! most one error line a second, never dropped silently; the proxy keeps
//! serving.
//!
//! Split by job: `record` is the struct filled on the request path,
//! `json` renders it as one line, `writer` moves lines to the sink, `file`
//! keeps the file on disk (whole lines, rotation, gzip of closed files).

mod file;
mod json;
mod record;
mod writer;

pub(crate) use record::{AccessRecord, LoggedUnit};
pub(crate) use writer::AccessLog;

#[cfg(test)]
pub(crate) use record::tests::sample as sample_record;
