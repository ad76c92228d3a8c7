//! The accept loop: one task per client connection, on the lean path
//! ([`super::lean`]) or hyper's ([`super::hyper`]), each told when
//! shutdown starts (finish the request in flight, then close). A
//! connection the lean path hands off goes on to hyper's front end here,
//! so neither front end calls the other.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::lean::{self, ClientLimits, HandOff, LeanExit};
use crate::state::State;

/// Serves `listener` until `shutdown` resolves, then waits up to `grace` for
/// in-flight requests. `lean` picks the lean HTTP/1.1 path for plain
/// requests; `timeouts` bound how long clients may take. Returns the number of connections cut at the deadline.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    lean: bool,
    limits: ClientLimits,
) -> usize {
    // Every connection task holds a receiver: the count of receivers is the
    // count of open connections, and `closed()` says they are all gone.
    let (stop, _) = watch::channel(false);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .max_header_size(limits.max_head)
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
                let body = limits.body;
                if lean {
                    tokio::spawn(async move {
                        if let LeanExit::HandOff(HandOff { io, stop, state, why }) =
                            lean::serve(stream, peer, state, rx, limits).await
                        {
                            tracing::trace!(%peer, why, "connection handed to hyper");
                            super::hyper::serve(io, peer, state, stop, &http, body).await;
                        }
                    });
                } else {
                    tokio::spawn(async move {
                        super::hyper::serve(stream, peer, state, rx, &http, body).await
                    });
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
