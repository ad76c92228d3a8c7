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
//! A thread's buffer holds at most [`writer::MAX_PENDING`] bytes: past that (the
//! disk cannot keep up) lines are counted as failed instead of growing
//! memory without bound. On shutdown every buffer is collected and flushed;
//! SIGUSR1 reopens the file (logrotate). A line that cannot be written is
//! counted ([`AccessLog::failed_lines`]) and reported, never dropped silently.
//!
//! Split by job: `record` is the struct filled on the request path,
//! `json` renders it as one line, `writer` moves lines to the sink.

mod json;
mod record;
mod writer;

pub(crate) use record::{AccessRecord, LoggedUnit};
pub(crate) use writer::AccessLog;

#[cfg(test)]
pub(crate) use record::tests::sample as sample_record;
