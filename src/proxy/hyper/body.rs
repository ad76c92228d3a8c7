//! Bodies that stream through hyper's front end, counted on the way.
//!
//! [`UpstreamBody`] wraps the client's request body on its way to the
//! upstream: it counts `bytes_in`, bounds how long the client may pause
//! (`client_body_timeout`), and notes in a [`BodyWatch`] how the body
//! failed, so the handler blames the client, not the upstream, for it.
//! [`ResponseBody`] carries either the upstream's response or a body the
//! proxy made itself, counts `bytes_out`, and writes the request's
//! access-log line when hyper drops it — after the last byte went out, or
//! when the client went away — so each response gets exactly one line
//! with its final size and duration.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::error::{Cause, CLIENT_CLOSED};
use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::proxy::core;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a client's request body failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BodyFault {
    /// Its framing was broken (a bad chunk line or size): 400.
    Framing,
    /// The client paused longer than `client_body_timeout`: 408.
    Timeout,
    /// The client closed or reset mid-body: 499.
    Gone,
}

/// What the handler learns of the request body as it streams: its size,
/// whether it ended, and how it failed.
#[derive(Default)]
pub struct BodyWatch {
    bytes: AtomicU64,
    ended: AtomicBool,
    fault: AtomicU8,
}

impl BodyWatch {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    pub fn fault(&self) -> Option<BodyFault> {
        match self.fault.load(Ordering::Relaxed) {
            1 => Some(BodyFault::Framing),
            2 => Some(BodyFault::Timeout),
            3 => Some(BodyFault::Gone),
            _ => None,
        }
    }

    fn set_fault(&self, f: BodyFault) {
        let n = match f {
            BodyFault::Framing => 1,
            BodyFault::Timeout => 2,
            BodyFault::Gone => 3,
        };
        self.fault.store(n, Ordering::Relaxed);
    }
}

/// Why a body read failed, from the error's source chain: hyper reports
/// broken chunked framing as `InvalidData`/`InvalidInput` I/O errors, and a
/// body cut short as `UnexpectedEof` or an incomplete message.
pub fn classify_body_error(e: &(dyn std::error::Error + 'static)) -> BodyFault {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    BodyFault::Framing
                }
                std::io::ErrorKind::TimedOut => BodyFault::Timeout,
                _ => BodyFault::Gone,
            };
        }
        if err.downcast_ref::<BodyTimedOut>().is_some() {
            return BodyFault::Timeout;
        }
        cur = err.source();
    }
    BodyFault::Gone
}

/// The client paused its body longer than `client_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client paused its request body longer than the body timeout")]
pub struct BodyTimedOut;

type DynBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

pub struct UpstreamBody {
    inner: DynBody,
    watch: Arc<BodyWatch>,
    timeout: Duration,
    /// When the client last sent a frame (or the body was first polled).
    last: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl UpstreamBody {
    pub fn new<B>(inner: B, watch: Arc<BodyWatch>, timeout: Duration) -> UpstreamBody
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if inner.is_end_stream() {
            watch.ended.store(true, Ordering::Relaxed);
        }
        UpstreamBody {
            inner: Box::pin(http_body_util::BodyExt::map_err(inner, Into::into)),
            watch,
            timeout,
            last: None,
            timer: None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let now = *this.last.get_or_insert_with(Instant::now);
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.watch
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                this.last = Some(Instant::now());
                // hyper's client stops polling a body that says it ended.
                if this.inner.is_end_stream() {
                    this.watch.ended.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.watch.set_fault(classify_body_error(&*e));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.watch.ended.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The timer is re-armed only when it fires early, so a
                // steady body costs one timer, not one per frame.
                let deadline = tokio::time::Instant::from_std(now + this.timeout);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    this.watch.set_fault(BodyFault::Timeout);
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
                }
                Poll::Pending
            }
        }
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
    /// The request body, for `bytes_in`.
    pub body: Arc<BodyWatch>,
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
            record,
            started,
            body,
        } = self;
        core::finish(&log, record, started.elapsed(), body.bytes(), bytes_out);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            if self.upstream_failed {
                p.record.error = Some(Cause::UpstreamBody);
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
            p.record.status = CLIENT_CLOSED;
            p.record.error = Some(Cause::ClientGone);
            p.finish(0);
        }
    }
}
