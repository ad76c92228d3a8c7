//! Thread-per-core: with `runtime.worker_threads` above 1, each worker is
//! a thread of its own running its own current-thread Tokio runtime and its
//! own accept loop ([`super::listener::serve`]). A connection is served
//! start to end by the worker that accepted it: no work stealing, so no
//! task or socket moves between threads and the request path makes no
//! cross-thread wake-up of its own (NGINX's workers, Pingora's no-steal
//! runtime). The lean path's idle upstream connections are kept per worker
//! ([`super::upstream`]), the access log's buffers per thread. The control
//! plane (admin API, reload, signals, the store's background tasks, the
//! health checks) stays on the calling thread's runtime ([`crate::run`]),
//! so a slow admin call never stalls a worker's connections.
//!
//! All workers accept on the same listening socket, each with a
//! duplicate of its descriptor registered in its own runtime's reactor,
//! rather than each on a `SO_REUSEPORT` socket of its own:
//!
//! - No connection lost: the socket is the one a binary upgrade hands
//!   over ([`crate::upgrade`]), and a connection waiting in its backlog is
//!   accepted by whichever process, whichever worker, gets to it; a
//!   closed `SO_REUSEPORT` socket resets the connections queued on it, so
//!   a drain, or a new binary with another worker count, would drop some.
//! - Balance by load, not by hash: `SO_REUSEPORT` spreads connections by
//!   a hash of the client's address and port, so three long-lived
//!   keep-alive clients land on one worker of two a quarter of the time,
//!   however idle the other is. On a shared socket the kernel gives a
//!   connection to whichever worker's `accept` runs first, which after a
//!   burst (a client's pool opening) is mostly the first to wake; so the
//!   worker that accepts a connection hands it to the worker with the
//!   fewest open connections ([`super::listener::Seat`]), before any
//!   reactor has it. Measured with `benches/workers.sh`.
//!
//! The cost is that an arriving connection wakes every idle worker's
//! reactor and all but one find nothing to accept, and a connection
//! handed on wakes the worker it goes to: once per connection, nothing
//! per request on a kept-alive one.
//!
//! Shutdown is one drain, led by the control plane: every worker stops
//! accepting and drains its connections, then the store is released
//! once, then the WebSocket tunnels are waited for and the access log
//! flushed; the workers' runtimes run until then, since connections they
//! opened (hyper's upstream pool, the Redis client's) may serve the
//! control plane's last steps.

use std::io;
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::listener::{seats, serve, Drained, Serving};

/// The running workers.
pub(crate) struct Workers {
    threads: Vec<JoinHandle<()>>,
    drained: Vec<oneshot::Receiver<Drained>>,
    exit: watch::Sender<bool>,
}

/// Starts `count` workers accepting on `listener`; each stops accepting
/// and drains once `stop` turns true.
pub(crate) fn start(
    count: usize,
    listener: std::net::TcpListener,
    serving: &Serving,
    stop: &watch::Receiver<bool>,
) -> io::Result<Workers> {
    let (exit, _) = watch::channel(false);
    let mut workers = Workers {
        threads: Vec::with_capacity(count),
        drained: Vec::with_capacity(count),
        exit,
    };
    for (index, seat) in seats(count).into_iter().enumerate() {
        let listener = listener.try_clone()?;
        let (drained, drained_rx) = oneshot::channel();
        let (serving, mut stop, mut exit) =
            (serving.clone(), stop.clone(), workers.exit.subscribe());
        // The runtime is built on its own thread, and the listener
        // registered in its reactor there (a runtime dropped inside this
        // async context would panic); how that went comes back before
        // the next worker starts, so a failure stops start-up.
        let (ready, started) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("cohort-worker-{index}"))
            .spawn(move || {
                let built = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        let l = {
                            let _in = rt.enter();
                            TcpListener::from_std(listener)?
                        };
                        Ok((rt, l))
                    });
                let (rt, listener) = match built {
                    Ok(b) => {
                        let _ = ready.send(Ok(()));
                        b
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                super::upstream::set_worker(index);
                rt.block_on(async move {
                    let shutdown = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let _ = drained.send(serve(listener, shutdown, serving, Some(seat)).await);
                    let _ = exit.wait_for(|e| *e).await;
                });
            })?;
        started
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the worker thread ended while starting")))?;
        workers.threads.push(thread);
        workers.drained.push(drained_rx);
    }
    Ok(workers)
}

impl Workers {
    /// Once every worker has stopped accepting and drained its
    /// connections: what each has left, its WebSocket tunnels.
    pub(crate) async fn drained(&mut self) -> Vec<Drained> {
        let mut all = Vec::with_capacity(self.drained.len());
        for rx in self.drained.drain(..) {
            // A worker that panicked has nothing left to wait for.
            if let Ok(d) = rx.await {
                all.push(d);
            }
        }
        all
    }

    /// Ends the workers' runtimes, dropping what still runs on them, and
    /// waits for their threads.
    pub(crate) async fn exit(self) {
        let _ = self.exit.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
