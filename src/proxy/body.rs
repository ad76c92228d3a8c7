//! Bodies that stream through the proxy, counted on the way.
//!
//! [`UpstreamBody`] wraps the client's request body on its way to the
//! upstream and counts `bytes_in`. [`ResponseBody`] carries either the
//! upstream's response or a body the proxy made itself, counts `bytes_out`,
//! and writes the request's access-log line when hyper drops it — after the
//! last byte went out, or when the client went away — so each response
//! gets exactly one line with its final size and duration.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::observe::access_log::{AccessLog, AccessRecord};

pub struct UpstreamBody {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> UpstreamBody {
        UpstreamBody { inner, bytes }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// The access-log line of a response, completed when its body ends.
pub struct PendingLog {
    pub log: AccessLog,
    pub record: AccessRecord,
    pub started: Instant,
    pub bytes_in: Arc<AtomicU64>,
}

pub struct ResponseBody {
    inner: Inner,
    bytes_out: u64,
    /// The upstream's body failed mid-stream: the client got a cut response.
    upstream_failed: bool,
    pending: Option<PendingLog>,
}

impl ResponseBody {
    pub fn upstream(body: Incoming) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream(body),
            bytes_out: 0,
            upstream_failed: false,
            pending: None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(Some(bytes.into())),
            bytes_out: 0,
            upstream_failed: false,
            pending: None,
        }
    }

    pub fn with_log(mut self, pending: PendingLog) -> ResponseBody {
        self.pending = Some(pending);
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes_out += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.upstream_failed = true,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl PendingLog {
    /// Completes the record with the final sizes and duration and logs it.
    fn finish(self, bytes_out: u64) {
        let PendingLog {
            log,
            mut record,
            started,
            bytes_in,
        } = self;
        record.bytes_out = bytes_out;
        record.bytes_in = bytes_in.load(Ordering::Relaxed);
        record.total_time = started.elapsed();
        log.record(&record);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            if self.upstream_failed {
                p.record.error = Some("upstream_body");
            }
            p.finish(self.bytes_out);
        }
    }
}

/// Logs a request whose handler was dropped before it produced a response
/// (the client went away while the upstream was answering): status 499,
/// error `client_gone`. Without it a unit's first exposure could vanish
/// from the log while its assignment is stored.
pub struct CancelLog(Option<PendingLog>);

impl CancelLog {
    pub fn new(p: PendingLog) -> CancelLog {
        CancelLog(Some(p))
    }

    /// The handler produced a response; that response logs the request.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelLog {
    fn drop(&mut self) {
        if let Some(mut p) = self.0.take() {
            p.record.status = 499;
            p.record.error = Some("client_gone");
            p.finish(0);
        }
    }
}
