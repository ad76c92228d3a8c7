//! The response side of hyper's front end: [`ResponseBody`] carries
//! either the upstream's response or a body the proxy made itself, counts
//! `bytes_out`, and writes the request's access-log line (through
//! [`core::finish`]) when hyper drops it — after the last byte went out,
//! or when the client went away — so each response gets exactly one line
//! with its final size and duration. An upstream's trailers (an HTTP/2
//! upstream's `grpc-status`) pass through filtered by the response-head
//! policy ([`core::rewrite_trailers`]). A gRPC call whose upstream body
//! fails or runs past `total_timeout` after the head went out ends with
//! trailers saying so (`grpc-status` 14 or 4, [`core::GrpcAnswer`]) rather
//! than a reset stream, which gRPC clients can only report as INTERNAL.
//! The request side (the client's body on its way upstream) is
//! [`crate::proxy::upstream::body`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::{Cause, CLIENT_CLOSED};
use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::proxy::core::{self, UpstreamFailure};
pub(crate) use crate::proxy::upstream::body::{BodyFault, BodyWatch, BoxError, UpstreamBody};
use crate::proxy::upstream::Lease;

use super::Conn;

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// The access-log line of a response, completed when its body ends.
pub(crate) struct PendingLog {
    pub log: AccessLog,
    pub record: AccessRecord,
    pub started: Instant,
    /// The request body, for `bytes_in`.
    pub body: Arc<BodyWatch>,
    /// Keeps the connection's drain signal held until the line is written.
    pub _conn: Arc<Conn>,
}

pub(crate) struct ResponseBody {
    inner: Inner,
    bytes_out: u64,
    /// The upstream's body failed mid-stream: the client got a cut response.
    upstream_failed: bool,
    pending: Option<PendingLog>,
    /// The upstream's `total_timeout`: past it the body is cut.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
    /// The upstream endpoint, counted in flight until the body is done.
    lease: Option<Lease>,
    /// The request was a gRPC call: a failure ends the body with trailers.
    grpc: bool,
}

/// The upstream's body did not end within its `total_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's response took longer than its total_timeout")]
struct TotalTimeout;

impl ResponseBody {
    pub(crate) fn upstream(body: Incoming) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream(body),
            bytes_out: 0,
            upstream_failed: false,
            pending: None,
            deadline: None,
            timed_out: false,
            lease: None,
            grpc: false,
        }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(Some(bytes.into())),
            bytes_out: 0,
            upstream_failed: false,
            pending: None,
            deadline: None,
            timed_out: false,
            lease: None,
            grpc: false,
        }
    }

    /// No body at all: HTTP/2 ends the stream with the HEADERS frame (a
    /// gRPC "Trailers-Only" answer needs that).
    pub(crate) fn empty() -> ResponseBody {
        let mut b = ResponseBody::full(Bytes::new());
        b.inner = Inner::Full(None);
        b
    }

    pub(crate) fn with_log(mut self, pending: PendingLog) -> ResponseBody {
        self.pending = Some(pending);
        self
    }

    /// Cuts the body at `at` (the upstream's `total_timeout`).
    pub(crate) fn with_deadline(mut self, at: Instant) -> ResponseBody {
        self.deadline = Some(Box::pin(tokio::time::sleep_until(
            tokio::time::Instant::from_std(at),
        )));
        self
    }

    /// Ends a failed body with gRPC trailers instead of an error.
    pub(crate) fn with_grpc(mut self, grpc: bool) -> ResponseBody {
        self.grpc = grpc;
        self
    }

    /// A failed upstream body's end: an error (the client's stream is
    /// reset, its connection cut), or for a gRPC call trailers carrying
    /// the failure's `grpc-status`; the upstream's body is dropped either
    /// way. The access record keeps the cause.
    fn fail(
        &mut self,
        failure: UpstreamFailure,
        e: BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match (&self.lease, self.grpc) {
            (Some(lease), true) => {
                let answer = core::GrpcAnswer::of(&core::upstream_error(lease.upstream(), failure));
                self.inner = Inner::Full(None);
                let mut t = http::HeaderMap::new();
                t.insert(super::GRPC_STATUS, answer.status);
                t.insert(super::GRPC_MESSAGE, answer.message);
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            _ => Poll::Ready(Some(Err(e))),
        }
    }

    /// Holds the endpoint's lease (its in-flight count) until the body ends.
    pub(crate) fn with_lease(mut self, lease: Lease) -> ResponseBody {
        self.lease = Some(lease);
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        if r.is_pending() {
            if let Some(d) = &mut this.deadline {
                if d.as_mut().poll(cx).is_ready() {
                    this.timed_out = true;
                    this.deadline = None;
                    return this.fail(UpstreamFailure::TotalTimeout, Box::new(TotalTimeout));
                }
            }
        }
        match r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes_out += d.len() as u64;
                }
                Poll::Ready(Some(Ok(match f.into_trailers() {
                    Ok(mut t) => {
                        core::rewrite_trailers(&mut t);
                        Frame::trailers(t)
                    }
                    Err(f) => f,
                })))
            }
            Poll::Ready(Some(Err(e))) => {
                this.upstream_failed = true;
                this.fail(UpstreamFailure::Body, e)
            }
            r => r,
        }
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
            _conn,
        } = self;
        core::finish(&log, record, started.elapsed(), body.bytes(), bytes_out);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            if self.timed_out {
                p.record.error = Some(Cause::UpstreamTimeout);
            } else if self.upstream_failed {
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
pub(crate) struct CancelLog(Option<PendingLog>);

impl CancelLog {
    pub(crate) fn new(p: PendingLog) -> CancelLog {
        CancelLog(Some(p))
    }

    /// The handler produced a response; that response logs the request.
    pub(crate) fn disarm(mut self) {
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
