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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

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
    /// When a failing accept was last logged as a warning, by any worker.
    warned: Arc<Mutex<Option<Instant>>>,
}

impl Serving {
    pub(crate) fn new(
        state: Arc<State>,
        grace: Duration,
        lean: bool,
        limits: ClientLimits,
        tls: Option<Arc<Tls>>,
    ) -> Serving {
        Serving {
            state,
            grace,
            lean,
            limits,
            tls,
            slots: limits.max_connections.map(|n| Arc::new(Semaphore::new(n))),
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
///
/// With a `seat` among other workers accepting on the same socket, a
/// connection accepted here is served by whichever worker has the fewest
/// open connections ([`Seat::place`]), and the connections other workers
/// hand here are served too.
pub(crate) async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    serving: Serving,
    seat: Option<Seat>,
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
    let worker = seat.as_ref().map_or(0, |s| s.index);
    // A connection's task: served on the lean path, or hyper's, or TLS.
    let spawn = |stream: TcpStream, peer: SocketAddr, hold: Hold| {
        tracing::debug!(worker, %peer, "serving a connection");
        let (state, rx, front) = (state.clone(), stop.subscribe(), front.clone());
        match &serving.tls {
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let _hold = hold;
                    front.serve_tls(acceptor, stream, peer, state, rx).await
                });
            }
            None if lean => {
                tokio::spawn(async move {
                    let _hold = hold;
                    if let LeanExit::HandOff(HandOff {
                        io,
                        stop,
                        state,
                        why,
                    }) = lean::serve(stream, peer, state, rx, limits).await
                    {
                        tracing::trace!(%peer, why, "connection handed to hyper");
                        front.serve_plain(io, peer, state, stop).await;
                    }
                });
            }
            None => {
                tokio::spawn(async move {
                    let _hold = hold;
                    front.serve_plain(stream, peer, state, rx).await
                });
            }
        }
    };
    let mut seat = seat;
    // A `max_connections` slot taken and not yet used by an accept.
    let mut slot = None;
    tokio::pin!(shutdown);
    loop {
        if let (Some(slots), None) = (&serving.slots, &slot) {
            tokio::select! {
                taken = slots.clone().acquire_owned() => {
                    slot = Some(taken.expect("the semaphore is never closed"));
                }
                Some(h) = handed(&mut seat) => {
                    if let Some((stream, peer, hold)) = adopt(h) {
                        spawn(stream, peer, hold);
                    }
                    continue;
                }
                () = &mut shutdown => break,
            }
        }
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
                let slot = slot.take();
                match &seat {
                    None => spawn(stream, peer, Hold { _slot: slot, _open: None }),
                    Some(seat) => {
                        if let Some((stream, hold)) = seat.place(stream, peer, slot) {
                            spawn(stream, peer, hold);
                        }
                    }
                }
            }
            Some(h) = handed(&mut seat) => {
                if let Some((stream, peer, hold)) = adopt(h) {
                    spawn(stream, peer, hold);
                }
            }
            () = &mut shutdown => break,
        }
    }
    // Connections other workers handed over before this one stopped are
    // served (and drained) like its own.
    if let Some(seat) = &mut seat {
        seat.inbox.close();
        // `recv`, not `try_recv`: a send that passed the closed check just
        // before `close` is waited for, not left unserved in the channel.
        while let Some(h) = seat.inbox.recv().await {
            if let Some((stream, peer, hold)) = adopt(h) {
                spawn(stream, peer, hold);
            }
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

/// What a connection's task holds until it ends.
struct Hold {
    _slot: Option<OwnedSemaphorePermit>,
    _open: Option<Open>,
}

/// A connection one worker accepted for another: not registered in any
/// runtime's reactor until the worker that serves it adopts it.
struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: Option<OwnedSemaphorePermit>,
    open: Open,
}

/// What the workers accepting on one socket share to balance their
/// connections: each one's count of open connections, and its inbox.
struct Peers {
    open: Box<[OpenCount]>,
    inboxes: Box<[mpsc::UnboundedSender<Handed>]>,
}

/// One worker's count of open connections, on a cache line of its own.
#[repr(align(64))]
struct OpenCount(AtomicUsize);

/// Counts a connection as open on a worker until it is dropped.
struct Open {
    peers: Arc<Peers>,
    worker: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.peers.open[self.worker]
            .0
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's place among the workers that accept on one socket.
pub(crate) struct Seat {
    index: usize,
    peers: Arc<Peers>,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// A seat for each of `workers` workers, `[i]` for worker `i`.
pub(crate) fn seats(workers: usize) -> Vec<Seat> {
    let (inboxes, receivers): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
    let peers = Arc::new(Peers {
        open: (0..workers)
            .map(|_| OpenCount(AtomicUsize::new(0)))
            .collect(),
        inboxes: inboxes.into(),
    });
    receivers
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| Seat {
            index,
            peers: peers.clone(),
            inbox,
        })
        .collect()
}

impl Seat {
    /// Places a connection this worker accepted on the worker with the
    /// fewest open connections, this one on a tie. Returns it to be served
    /// here, or `None` once it was handed to another worker.
    ///
    /// The kernel gives a new connection to whichever worker's `accept`
    /// runs first, and right after a burst of connections (a client pool
    /// opening) the first worker to wake takes most of them; these stay
    /// with it for their whole keep-alive life. Counting open connections
    /// evens that out: three clients on two workers are served two and
    /// one, not three and none. Moving a connection costs the other
    /// worker a wake-up, once per connection, never per request.
    fn place(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Option<(TcpStream, Hold)> {
        let open = &self.peers.open;
        let mut to = self.index;
        let mut least = open[to].0.load(Ordering::Relaxed);
        for (i, n) in open.iter().enumerate() {
            let n = n.0.load(Ordering::Relaxed);
            if n < least {
                (to, least) = (i, n);
            }
        }
        if to != self.index {
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    // Its reactor would not let it go (not seen happen).
                    tracing::debug!(%peer, error = %e, "a connection could not be handed to another worker");
                    return None;
                }
            };
            let h = Handed {
                stream,
                peer,
                slot,
                open: self.open_on(to),
            };
            // Refused only once that worker stopped accepting: then it is
            // served here.
            let Err(mpsc::error::SendError(h)) = self.peers.inboxes[to].send(h) else {
                return None;
            };
            let stream = TcpStream::from_std(h.stream).ok()?;
            let hold = Hold {
                _slot: h.slot,
                _open: Some(self.open_on(self.index)),
            };
            return Some((stream, hold));
        }
        let hold = Hold {
            _slot: slot,
            _open: Some(self.open_on(self.index)),
        };
        Some((stream, hold))
    }

    /// Counts a connection open on `worker`.
    fn open_on(&self, worker: usize) -> Open {
        self.peers.open[worker].0.fetch_add(1, Ordering::Relaxed);
        Open {
            peers: self.peers.clone(),
            worker,
        }
    }
}

/// The next connection another worker handed here; never, without a seat.
async fn handed(seat: &mut Option<Seat>) -> Option<Handed> {
    match seat {
        Some(seat) => seat.inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// A handed connection, registered in this worker's reactor.
fn adopt(h: Handed) -> Option<(TcpStream, SocketAddr, Hold)> {
    let hold = Hold {
        _slot: h.slot,
        _open: Some(h.open),
    };
    match TcpStream::from_std(h.stream) {
        Ok(stream) => Some((stream, h.peer, hold)),
        Err(e) => {
            tracing::debug!(peer = %h.peer, error = %e, "a connection handed from another worker could not be registered");
            None
        }
    }
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
