//! The accept loop: one task per client connection, on the lean path
//! ([`super::lean`]) or hyper's, each told when shutdown starts (finish the
//! request in flight, then close).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{forward, lean};
use crate::state::State;

/// Serves `listener` until `shutdown` resolves, then waits up to `grace` for
/// in-flight requests. `lean` picks the lean HTTP/1.1 path for plain
/// requests; `timeouts` bound how long clients may take. Returns the number of connections cut at the deadline.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    lean: bool,
    timeouts: lean::ClientTimeouts,
) -> usize {
    // Every connection task holds a receiver: the count of receivers is the
    // count of open connections, and `closed()` says they are all gone.
    let (stop, _) = watch::channel(false);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .keep_alive(true);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (state, rx, http) = (state.clone(), stop.subscribe(), http.clone());
                if lean {
                    tokio::spawn(lean::serve(stream, peer, state, rx, http, timeouts));
                } else {
                    tokio::spawn(async move { serve_hyper(stream, peer, state, rx, &http).await });
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = stop.receiver_count();
    tracing::info!(open_connections = open, "draining connections");
    let _ = stop.send(true);
    match tokio::time::timeout(grace, stop.closed()).await {
        Ok(()) => 0,
        Err(_) => {
            tracing::warn!(
                ?grace,
                "shutdown deadline reached with requests still in flight"
            );
            stop.receiver_count()
        }
    }
}

/// Serves a connection with hyper until it closes, or until shutdown
/// starts and its request in flight is answered.
pub async fn serve_hyper<I>(
    io: I,
    peer: SocketAddr,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    http: &http1::Builder,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let who = Arc::new(forward::Peer::new(peer));
    let svc = service_fn(move |req| forward::handle(state.clone(), who.clone(), req));
    let conn = http.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Borrowed, not moved: the receiver must live until the connection
    // ends, since the drain waits for every receiver to go.
    let stopping = async {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    // Biased: a connection handed over from the lean path already holds a
    // request, which hyper must read before a shutdown can find it idle.
    let result = tokio::select! {
        biased;
        r = conn.as_mut() => r,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
