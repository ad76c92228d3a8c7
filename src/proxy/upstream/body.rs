//! The client's request body on its way to the upstream through hyper's
//! client: [`UpstreamBody`] counts `bytes_in`, bounds how long the client
//! may pause (`client_body_timeout`), and notes in a [`BodyWatch`] how the
//! body failed, so the handler blames the client, not the upstream, for a
//! body that broke its framing, stalled or was abandoned. The body's
//! trailers (a chunked body's, an HTTP/2 client's) are filtered by the
//! request-head rule ([`names::forward_rule`]): a client cannot slip a
//! stamp or a request id in after the body, and a hop-by-hop field (which
//! HTTP/2 forbids) never makes the upstream's stream fail.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::proxy::h1::names::{self, Forward};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a client's request body failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum BodyFault {
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
pub(crate) struct BodyWatch {
    bytes: AtomicU64,
    ended: AtomicBool,
    fault: AtomicU8,
}

impl BodyWatch {
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    pub(crate) fn fault(&self) -> Option<BodyFault> {
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
pub(crate) fn classify_body_error(e: &(dyn std::error::Error + 'static)) -> BodyFault {
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
pub(crate) struct BodyTimedOut;

type DynBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

pub(crate) struct UpstreamBody {
    /// The client's body; `None` while it waits, unpolled, in `slot`.
    inner: Option<DynBody>,
    /// Where a [`Reclaim`]able body waits until hyper first polls it.
    slot: Option<Arc<Mutex<Option<DynBody>>>>,
    watch: Arc<BodyWatch>,
    timeout: Duration,
    /// When the client last sent a frame (or the body was first polled).
    last: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl UpstreamBody {
    pub(crate) fn new<B>(inner: B, watch: Arc<BodyWatch>, timeout: Duration) -> UpstreamBody
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if inner.is_end_stream() {
            watch.ended.store(true, Ordering::Relaxed);
        }
        UpstreamBody {
            inner: Some(Box::pin(http_body_util::BodyExt::map_err(
                inner,
                Into::into,
            ))),
            slot: None,
            watch,
            timeout,
            last: None,
            timer: None,
        }
    }

    /// This body, and a handle that takes it back if hyper's client drops
    /// it without polling it once — a connect failure — so the request can
    /// go to another endpoint: no byte of it went upstream.
    pub(crate) fn reclaimable(mut self) -> (UpstreamBody, Reclaim) {
        let slot = Arc::new(Mutex::new(self.inner.take()));
        let handle = Reclaim {
            slot: slot.clone(),
            watch: self.watch.clone(),
            timeout: self.timeout,
        };
        self.slot = Some(slot);
        (self, handle)
    }

    /// The body, wherever it is now (nothing when it was taken from a
    /// reclaimed slot, which a dropped request never polls again).
    fn with_inner<T>(&self, f: impl FnOnce(&DynBody) -> T, none: T) -> T {
        match (&self.inner, &self.slot) {
            (Some(b), _) => f(b),
            (None, Some(slot)) => match &*slot.lock().expect("body slot lock") {
                Some(b) => f(b),
                None => none,
            },
            (None, None) => none,
        }
    }
}

/// The other half of [`UpstreamBody::reclaimable`].
pub(crate) struct Reclaim {
    slot: Arc<Mutex<Option<DynBody>>>,
    watch: Arc<BodyWatch>,
    timeout: Duration,
}

impl Reclaim {
    /// The body again, if it was never polled; reclaimable once more.
    pub(crate) fn take(&self) -> Option<(UpstreamBody, Reclaim)> {
        let inner = self.slot.lock().expect("body slot lock").take()?;
        let body = UpstreamBody {
            inner: Some(inner),
            slot: None,
            watch: self.watch.clone(),
            timeout: self.timeout,
            last: None,
            timer: None,
        };
        Some(body.reclaimable())
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
        if this.inner.is_none() {
            this.inner = this
                .slot
                .as_ref()
                .and_then(|s| s.lock().expect("body slot lock").take());
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let now = *this.last.get_or_insert_with(Instant::now);
        match inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.watch
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                this.last = Some(Instant::now());
                // hyper's client stops polling a body that says it ended.
                if inner.is_end_stream() {
                    this.watch.ended.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(match f.into_trailers() {
                    Ok(mut t) => {
                        forward_trailers(&mut t);
                        Frame::trailers(t)
                    }
                    Err(f) => f,
                })))
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
        self.with_inner(|b| b.is_end_stream(), true)
    }

    fn size_hint(&self) -> SizeHint {
        self.with_inner(|b| b.size_hint(), SizeHint::with_exact(0))
    }
}

/// Keeps the trailer fields a request head would pass on unchanged
/// ([`Forward::Keep`]): hop-by-hop names, the proxy's own (stamps,
/// `x-forwarded-*`, `x-request-id`), their look-alikes and framing or
/// routing names (`host`, `content-length`) are dropped.
fn forward_trailers(t: &mut http::HeaderMap) {
    let drop: Vec<http::HeaderName> = t
        .keys()
        .filter(|k| names::forward_rule(k.as_str().as_bytes()) != Forward::Keep)
        .cloned()
        .collect();
    for n in drop {
        t.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn body() -> UpstreamBody {
        let watch = Arc::new(BodyWatch::default());
        UpstreamBody::new(
            Full::new(Bytes::from_static(b"abc")),
            watch,
            Duration::from_secs(1),
        )
    }

    #[tokio::test]
    async fn a_body_never_polled_is_taken_back_whole_and_a_polled_one_is_not() {
        let (sent, reclaim) = body().reclaimable();
        assert_eq!(
            sent.size_hint().exact(),
            Some(3),
            "hyper still sees its length"
        );
        // A connect failure: hyper drops the request without polling it.
        drop(sent);
        let (again, reclaim) = reclaim.take().expect("never polled: taken back");
        let got = again.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"abc");
        assert!(reclaim.take().is_none(), "polled: its bytes went upstream");
    }
}
