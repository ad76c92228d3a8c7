//! `runtime.max_body_bytes` on hyper's front end for a body whose length
//! is not known up front (chunked, or an HTTP/2 stream without
//! Content-Length): [`Capped`] passes the client's body through and fails
//! it the moment it goes past the limit, so the upstream never gets more
//! than the limit and the handler answers 413. A declared length over the
//! limit is refused before the body is read (in [`super::handle`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::body::BoxError;

/// The client's body, cut off past `max` bytes.
pub(crate) struct Capped<B> {
    inner: Pin<Box<B>>,
    left: u64,
    /// Set when the body went past the limit: the handler's 413.
    over: Arc<AtomicBool>,
}

/// The error the body ends with past the limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body went past runtime.max_body_bytes")]
pub(crate) struct BodyTooLarge;

impl<B> Capped<B> {
    pub(crate) fn new(inner: B, max: u64, over: Arc<AtomicBool>) -> Capped<B> {
        Capped {
            inner: Box::pin(inner),
            left: max,
            over,
        }
    }
}

impl<B> Body for Capped<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            if n > self.left {
                self.over.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(BodyTooLarge.into())));
            }
            self.left -= n;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use http_body_util::BodyExt;

    use super::*;

    /// A body of the given chunk sizes.
    struct Chunks(VecDeque<usize>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let next = self.0.pop_front();
            Poll::Ready(next.map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
        }
    }

    #[tokio::test]
    async fn a_body_at_the_limit_passes_and_one_past_it_fails() {
        let over = Arc::new(AtomicBool::new(false));
        let body = Capped::new(Chunks([400, 600].into()), 1000, over.clone());
        let got = body.collect().await.expect("at the limit").to_bytes();
        assert_eq!(got.len(), 1000);
        assert!(!over.load(Ordering::Relaxed));

        let body = Capped::new(Chunks([400, 601].into()), 1000, over.clone());
        let err = body.collect().await.expect_err("past the limit");
        assert!(err.downcast_ref::<BodyTooLarge>().is_some());
        assert!(over.load(Ordering::Relaxed));
    }
}
