//! The accept loop: one task per client connection, each told when
//! shutdown starts (finish what is in flight, then close).
//!
//! A plaintext connection goes to the lean path ([`super::lean`]) or to
//! hyper's HTTP/1 front end ([`super::hyper`]); one the lean path hands
//! off, and any that opens with the HTTP/2 preface (h2c with prior
//! knowledge, told apart by [`super::hyper::h2::sniff`]), goes on to
//! hyper's front end here, so neither front end calls the other. With
//! `tls`, every connection shakes hands first ([`super::tls`]) and ALPN
//! picks hyper's HTTP/2 or HTTP/1 front end; the lean path serves
//! plaintext only.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::hyper::h2::{self, Opening};
use super::hyper::RequestLimits;
use super::lean::{self, ClientLimits, HandOff, LeanExit};
use super::tls::Tls;
use crate::state::State;

/// hyper's HTTP/1 read buffer, beyond the head limit.
const MIN_READ_BUF: usize = 16 * 1024;

/// How often a failing accept is logged as a warning.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(60);

/// hyper's connection settings, made once for every connection.
struct Front {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    limits: ClientLimits,
    request: RequestLimits,
    /// Copied into each hyper HTTP/1 connection for its tunnels.
    tunnels: watch::Receiver<bool>,
}

/// What an accept loop serves with; every worker holds a copy.
#[derive(Clone)]
pub(crate) struct Serving {
    state: Arc<State>,
    /// How long in-flight requests may take once shutdown starts.
    grace: Duration,
    /// The lean HTTP/1.1 path for plain requests.
    lean: bool,
    /// How long clients may take, what they may send.
    limits: ClientLimits,
    /// Terminates TLS on every connection.
    tls: Option<Arc<Tls>>,
    /// `max_connections`' slots: one semaphore for the whole process,
    /// whichever worker accepts.
    slots: Option<Arc<Semaphore>>,
    /// Other workers accept on the same socket: after each accept, let
    /// them (and the new connection's first read) go first, so one worker
    /// does not take a whole burst of connections.
    share_accepts: bool,
    /// When a failing accept was last logged as a warning, by any worker.
    warned: Arc<Mutex<Option<Instant>>>,
}

impl Serving {
    /// For `workers` accept loops on the same socket.
    pub(crate) fn new(
        state: Arc<State>,
        grace: Duration,
        lean: bool,
        limits: ClientLimits,
        tls: Option<Arc<Tls>>,
        workers: usize,
    ) -> Serving {
        Serving {
            state,
            grace,
            lean,
            limits,
            tls,
            slots: limits.max_connections.map(|n| Arc::new(Semaphore::new(n))),
            share_accepts: workers > 1,
            warned: Arc::default(),
        }
    }

    /// Whether a failing accept is to be logged as a warning now: at most
    /// once a minute, whichever worker's accept fails.
    fn warn_now(&self) -> bool {
        let mut last = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let due = last.is_none_or(|t| now.saturating_duration_since(t) >= ACCEPT_WARN_EVERY);
        if due {
            *last = Some(now);
        }
        due
    }
}

/// Serves `listener` until `shutdown` resolves, then waits up to `grace` for
/// in-flight requests; the WebSocket tunnels still open are left to
/// [`Drained::tunnels`], after the caller released the store.
///
/// With `max_connections`, a slot is taken before each accept and held by
/// the connection's task until it ends: past the limit the loop stops
/// accepting, so new connections wait in the kernel's backlog (not in
/// cohort's memory) until one closes. A failing accept (EMFILE, ENFILE:
/// out of descriptors) is retried every 50 ms, so the loop never spins,
/// and logged as a warning at most once a minute.
pub(crate) async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    serving: Serving,
) -> Drained {
    let (state, grace, lean, limits) = (
        serving.state.clone(),
        serving.grace,
        serving.lean,
        serving.limits,
    );
    // Every connection task holds a receiver: the count of receivers is the
    // count of open connections, and `closed()` says they are all gone.
    let (stop, _) = watch::channel(false);
    // Likewise every WebSocket tunnel (and hyper's HTTP/1 connections,
    // which may open one).
    let (tunnels, _) = watch::channel(false);
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .max_header_size(limits.max_head)
        .max_headers(limits.max_headers)
        // hyper's read buffer grows up to ~400 KiB per connection while a
        // client streams a body in faster than the upstream takes it;
        // capped at the head limit (a head must fit) plus a read's worth.
        .max_buf_size(limits.max_head.max(MIN_READ_BUF) + MIN_READ_BUF)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_head).unwrap_or(u32::MAX));
    let request = RequestLimits {
        body_timeout: limits.body,
        max_body: limits.max_body,
        max_headers: limits.max_headers,
    };
    let front = Arc::new(Front {
        h1,
        h2,
        limits,
        request,
        tunnels: tunnels.subscribe(),
    });
    tokio::pin!(shutdown);
    loop {
        let slot = match &serving.slots {
            Some(s) => tokio::select! {
                slot = s.clone().acquire_owned() => Some(slot.expect("the semaphore is never closed")),
                () = &mut shutdown => break,
            },
            None => None,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning,
                        // and say so once, not 20 times a second.
                        if serving.warn_now() {
                            tracing::warn!(error = %e, "accept failed; retrying every 50 ms until it works (logged once a minute)");
                        } else {
                            tracing::debug!(error = %e, "accept failed");
                        }
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                            () = &mut shutdown => break,
                        }
                    }
                };
                let _ = stream.set_nodelay(true);
                let (state, rx, front) = (state.clone(), stop.subscribe(), front.clone());
                match &serving.tls {
                    Some(tls) => {
                        let acceptor = tls.acceptor();
                        tokio::spawn(async move {
                            let _slot = slot;
                            front.serve_tls(acceptor, stream, peer, state, rx).await
                        });
                    }
                    None if lean => {
                        tokio::spawn(async move {
                            let _slot = slot;
                            if let LeanExit::HandOff(HandOff { io, stop, state, why }) =
                                lean::serve(stream, peer, state, rx, limits).await
                            {
                                tracing::trace!(%peer, why, "connection handed to hyper");
                                front.serve_plain(io, peer, state, stop).await;
                            }
                        });
                    }
                    None => {
                        tokio::spawn(async move {
                            let _slot = slot;
                            front.serve_plain(stream, peer, state, rx).await
                        });
                    }
                }
                if serving.share_accepts {
                    tokio::task::yield_now().await;
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = stop.receiver_count();
    tracing::info!(open_connections = open, "draining connections");
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, stop.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "shutdown deadline reached with requests still in flight"
        );
    }
    // The listener's own copy: only tunnels (and connections still open
    // past the deadline) hold one now.
    drop(front);
    Drained { tunnels, deadline }
}

/// A listener whose connections are drained: what is left is its
/// WebSocket tunnels.
pub(crate) struct Drained {
    tunnels: watch::Sender<bool>,
    deadline: tokio::time::Instant,
}

impl Drained {
    /// Waits for the tunnels still open up to the drain's deadline, then
    /// cuts the rest (each writes its access-log line as it ends).
    pub(crate) async fn tunnels(self) {
        let open = self.tunnels.receiver_count();
        if open == 0 {
            return;
        }
        tracing::info!(
            open_tunnels = open,
            "waiting for WebSocket tunnels to close"
        );
        if tokio::time::timeout_at(self.deadline, self.tunnels.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                cut = self.tunnels.receiver_count(),
                "shutdown deadline reached with WebSocket tunnels open"
            );
            drop(self.tunnels);
            // Let the cut tunnels write their lines before the log flush.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Front {
    /// A plaintext connection: h2c if it opens with the HTTP/2 preface,
    /// else HTTP/1.
    async fn serve_plain<I>(
        &self,
        io: I,
        peer: SocketAddr,
        state: Arc<State>,
        mut stop: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let l = self.limits;
        match h2::sniff(io, l.idle, l.header, &mut stop).await {
            Opening::H2(io) => {
                h2::serve_h2(io, peer, state, stop, &self.h2, self.request, l.idle, false).await
            }
            Opening::H1(io) => {
                super::hyper::serve(
                    io,
                    peer,
                    state,
                    stop,
                    self.tunnels.clone(),
                    &self.h1,
                    self.request,
                    false,
                )
                .await
            }
            Opening::Gone => {}
        }
    }

    /// A TLS connection: the handshake (within the head timeout), then the
    /// front end ALPN agreed on.
    async fn serve_tls(
        &self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        peer: SocketAddr,
        state: Arc<State>,
        stop: watch::Receiver<bool>,
    ) {
        let l = self.limits;
        let io = match tokio::time::timeout(l.header, acceptor.accept(stream)).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        if io.get_ref().1.alpn_protocol() == Some(b"h2") {
            h2::serve_h2(io, peer, state, stop, &self.h2, self.request, l.idle, true).await;
        } else {
            super::hyper::serve(
                io,
                peer,
                state,
                stop,
                self.tunnels.clone(),
                &self.h1,
                self.request,
                true,
            )
            .await;
        }
    }
}
