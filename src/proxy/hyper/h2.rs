//! HTTP/2 on hyper's front end: [`serve_h2`] serves a connection with
//! hyper's HTTP/2 machinery and the same [`super::handle`] as HTTP/1, so
//! every stream is checked, routed, assigned, stamped and logged by the one
//! core. [`sniff`] tells an h2c client with prior knowledge (it opens with
//! the HTTP/2 preface) from an HTTP/1 one on a plaintext port, handing the
//! bytes it read on with the connection ([`Rewind`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;

use super::body::ResponseBody;
use super::{handle, ClientGone, Conn, RequestLimits};
use crate::proxy::core::{Peer, FIRST_REQUEST_GRACE};
use crate::proxy::lean::Rewind;
use crate::state::State;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves an HTTP/2 connection until it closes, until it has had no open
/// stream for `idle` (`runtime.client_idle_timeout`, as an HTTP/1
/// keep-alive connection), or until shutdown starts: then a GOAWAY, and
/// the streams in flight finish.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_h2<I>(
    io: I,
    peer: SocketAddr,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    http: &http2::Builder<TokioExecutor>,
    limits: RequestLimits,
    idle: Duration,
    tls: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        peer: Peer::new(peer),
        limits,
        // HTTP/2 requests never open a tunnel (WebSocket is HTTP/1.1 only).
        tunnels: stop.clone(),
        tls,
        _drain: stop.clone(),
    });
    let streams = Arc::new(Streams::new());
    let open = streams.clone();
    let svc = service_fn(move |req| {
        // Held until the stream's response body is done (or dropped).
        let guard = StreamGuard::open(&open);
        let answer = handle(state.clone(), conn.clone(), req);
        async move {
            // A client gone mid-body (already logged 499): the error makes
            // hyper reset the stream instead of sending an answer.
            let resp = answer.await?;
            Ok::<_, ClientGone>(resp.map(|body| Tracked {
                body,
                _guard: guard,
            }))
        }
    });
    let mut conn = http.serve_connection(TokioIo::new(io), svc);
    let stopping = async {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    let idle_out = async {
        loop {
            let left = streams.idle_left(idle);
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    let result = tokio::select! {
        r = &mut conn => r,
        () = stopping => {
            Pin::new(&mut conn).graceful_shutdown();
            (&mut conn).await
        }
        () = idle_out => {
            tracing::debug!(%peer, "idle HTTP/2 connection closed");
            Pin::new(&mut conn).graceful_shutdown();
            (&mut conn).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
    }
}

/// A connection's open streams, and since when it has had none.
struct Streams {
    open: AtomicUsize,
    start: Instant,
    /// Milliseconds after `start` when the last stream ended.
    last_end: AtomicU64,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            open: AtomicUsize::new(0),
            start: Instant::now(),
            last_end: AtomicU64::new(0),
        }
    }

    /// How long until the connection has been idle for `idle`: the whole
    /// of `idle` while a stream is open, zero once it is due.
    fn idle_left(&self, idle: Duration) -> Duration {
        if self.open.load(Ordering::Acquire) > 0 {
            return idle;
        }
        let since = self.start + Duration::from_millis(self.last_end.load(Ordering::Acquire));
        (since + idle).saturating_duration_since(Instant::now())
    }
}

/// One open stream; its drop marks the time the stream ended.
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn open(streams: &Arc<Streams>) -> StreamGuard {
        streams.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(streams.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end.fetch_max(ms, Ordering::AcqRel);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its stream open until it is done.
pub(crate) struct Tracked {
    body: ResponseBody,
    _guard: StreamGuard,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = <ResponseBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// How a plaintext connection starts.
pub(crate) enum Opening<I> {
    /// With the HTTP/2 preface: h2c with prior knowledge.
    H2(Rewind<I>),
    /// With anything else: HTTP/1.
    H1(Rewind<I>),
    /// Closed, silent past `limit`, or silent for `FIRST_REQUEST_GRACE`
    /// after shutdown started.
    Gone,
}

/// Reads until the first bytes agree with the HTTP/2 preface or differ
/// from it (the first read decides any HTTP/1 request). The client may
/// stay silent for `idle`; one that sends part of the preface and stalls
/// past `header` goes on as HTTP/1, whose own timeout answers it.
pub(crate) async fn sniff<I>(
    mut io: I,
    idle: Duration,
    header: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Opening<I>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(PREFACE.len());
    let mut deadline = tokio::time::Instant::now() + idle;
    let mut watching = true;
    while buf.len() < PREFACE.len() && PREFACE.starts_with(&buf) {
        if !buf.is_empty() && deadline > tokio::time::Instant::now() + header {
            deadline = tokio::time::Instant::now() + header;
        }
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)) => Some(r),
            _ = stop.wait_for(|s| *s), if buf.is_empty() && watching => None,
        };
        let Some(read) = read else {
            // A drain began: this connection, just accepted, may have its
            // first request on the way; it gets a moment to arrive.
            watching = false;
            deadline = deadline.min(tokio::time::Instant::now() + FIRST_REQUEST_GRACE);
            continue;
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return Opening::Gone,
            Ok(Ok(_)) => {}
            Err(_) if buf.is_empty() => return Opening::Gone,
            Err(_) => break,
        }
    }
    let h2 = buf.starts_with(PREFACE);
    let io = Rewind {
        rest: buf.freeze(),
        io,
    };
    if h2 {
        Opening::H2(io)
    } else {
        Opening::H1(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn opening(sent: &[u8], close: bool) -> (&'static str, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(sent).await.unwrap();
        if close {
            drop(client);
        } else {
            // Kept open (and silent) for the test's length.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(client);
            });
        }
        let (_tx, mut stop) = watch::channel(false);
        let short = Duration::from_millis(100);
        let (kind, io) = match sniff(server, Duration::from_secs(2), short, &mut stop).await {
            Opening::H2(io) => ("h2", io),
            Opening::H1(io) => ("h1", io),
            Opening::Gone => return ("gone", Vec::new()),
        };
        (kind, io.rest.to_vec())
    }

    #[tokio::test]
    async fn the_preface_picks_h2_and_anything_else_http1_with_every_byte_kept() {
        let mut h2 = PREFACE.to_vec();
        h2.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let (kind, rest) = opening(&h2, false).await;
        assert_eq!(kind, "h2");
        assert!(h2.starts_with(&rest) && rest.len() >= PREFACE.len());

        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (kind, rest) = opening(get, false).await;
        assert_eq!(kind, "h1");
        assert!(get.starts_with(&rest) && !rest.is_empty());
    }

    #[tokio::test]
    async fn a_stalled_partial_preface_goes_on_as_http1_and_silence_is_gone() {
        assert_eq!(
            opening(b"PRI * HT", false).await,
            ("h1", b"PRI * HT".to_vec())
        );
        assert_eq!(opening(b"", true).await.0, "gone");
        assert_eq!(opening(b"PRI", true).await.0, "gone");
    }

    /// A connection accepted just before a drain still gets its first
    /// request served; a silent one is let go after the grace.
    #[tokio::test]
    async fn a_drain_waits_briefly_for_a_fresh_connections_first_bytes() {
        let (tx, mut stop) = watch::channel(false);
        tx.send(true).unwrap();
        let (mut client, server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let long = Duration::from_secs(30);
        let got = sniff(server, long, long, &mut stop).await;
        assert!(matches!(got, Opening::H1(_)));

        let (_silent, server) = tokio::io::duplex(1024);
        let got = sniff(server, long, long, &mut stop).await;
        assert!(matches!(got, Opening::Gone));
    }
}
