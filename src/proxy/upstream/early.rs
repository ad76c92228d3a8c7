//! The connector of hyper's upstream client, whose sockets let an early
//! answer through. An upstream may answer before it has read the whole
//! request — a 413 to an oversized upload — and close; its kernel then
//! resets the connection, and the proxy's next body write fails. hyper's
//! client gives up on a write error even when the answer is already in
//! the socket, so the client got a 502 instead of the 413 some of the
//! time. NGINX relays such an answer, and so does the lean path
//! ([`crate::proxy::lean`]): here a write that fails because the peer
//! closed is taken as written (the bytes go nowhere), so hyper goes on to
//! read the answer; and a read that finds the connection gone still ends
//! the exchange at once, so nothing waits on a dead socket. A connection
//! whose write failed is never reused: its next read reports the reset.
//!
//! The connector also shakes hands with `https://` upstreams
//! ([`super::tls`]) on the socket it connected, so one client type serves
//! plain and TLS upstreams, HTTP/1.1 and HTTP/2 alike.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;

use super::tls::{Stream, TlsTo};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// [`HttpConnector`], handing out [`EarlyIo`] sockets, TLS ones when the
/// upstream is `https://`.
#[derive(Clone)]
pub(crate) struct EarlyAnswerConnector {
    pub http: HttpConnector,
    pub tls: Option<Arc<TlsTo>>,
    /// When set, every connection goes to this endpoint whatever the
    /// request's authority: an upstream with a `tls.server_name` names
    /// that in the request (`:authority`, Host), not the endpoint.
    pub to: Option<Uri>,
}

impl tower_service::Service<Uri> for EarlyAnswerConnector {
    type Response = EarlyIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<EarlyIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let uri = self.to.clone().unwrap_or(uri);
        let connecting = self.http.call(uri.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let stream = match tls {
                None => Stream::Plain(tcp),
                Some(tls) => {
                    let host = uri.host().unwrap_or_default();
                    Stream::Tls(Box::new(tls.handshake(host, tcp).await?))
                }
            };
            Ok(EarlyIo {
                io: TokioIo::new(stream),
                peer_closed: false,
            })
        })
    }
}

/// An upstream socket whose writes after the peer closed are dropped.
pub(crate) struct EarlyIo {
    io: TokioIo<Stream>,
    /// A write found the peer gone: later writes are dropped.
    peer_closed: bool,
}

/// The peer closed or reset: what it sent before is still readable.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

impl EarlyIo {
    fn wrote(&mut self, r: Poll<io::Result<usize>>, len: usize) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                tracing::debug!(error = %e, "upstream closed mid-request; reading its answer");
                self.peer_closed = true;
                Poll::Ready(Ok(len))
            }
            r => r,
        }
    }
}

impl Read for EarlyIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for EarlyIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.peer_closed {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(r, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.peer_closed {
            return Poll::Ready(Ok(len));
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(r, len)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.peer_closed {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Err(e)) if peer_gone(&e) => {
                self.peer_closed = true;
                Poll::Ready(Ok(()))
            }
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.peer_closed {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connection for EarlyIo {
    fn connected(&self) -> Connected {
        let stream = self.io.inner();
        let connected = stream.tcp().connected();
        if stream.alpn_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}
