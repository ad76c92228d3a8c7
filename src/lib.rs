//! cohort: a sticky traffic-splitting reverse proxy for A/B tests and ramps
//! of ML model backends.
//!
//! How a request flows: the [`proxy::listener`] accepts an HTTP/1.1
//! connection and hands each request to [`proxy::core`], which loads the
//! current [`snapshot::Snapshot`] (one atomic pointer read), routes the path
//! to an experiment, and asks the experiment's [`assign::Assigner`] for the
//! unit's variant: a stored assignment if there is one, else a new one made
//! durable in the [`assign::store`] before the response leaves. The request
//! goes to that variant's upstream, stamped with experiment, variant and
//! epoch, and the streamed response carries the same stamps back. When its
//! body ends, one line goes to the [`observe::access_log`].
//!
//! Config changes arrive through [`reload`]: it watches the file (and
//! SIGHUP, and the admin API), plans the validated [`config`] against the
//! epoch ledger ([`reload::plan`]), journals the new epochs and swaps the
//! snapshot. [`config`] and [`assign`] never import each other; what both
//! speak lives in [`terms`].

mod admin;
pub mod assign;
pub mod commands;
pub mod config;
pub mod demo;
mod error;
mod intern;
mod latency;
mod observe;
pub mod proxy;
pub mod reload;
pub mod snapshot;
pub mod state;
pub mod terms;
#[cfg(test)]
mod test_support;
pub mod upgrade;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use assign::store::StoreError;
use config::Config;
use reload::StartError;
use state::State;

/// Why the proxy stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store, the access log or the ledger's verdict on the config
    /// stopped start-up.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A listener (the proxy's or the admin API's) could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
        /// The OS error (address in use, permission denied, ...).
        #[source]
        source: std::io::Error,
    },
    /// The `tls` block's certificate, key or client CA did not load.
    #[error("cannot load the TLS files: {0}")]
    Tls(#[from] proxy::tls::TlsError),
    /// SIGTERM, SIGINT, SIGHUP, SIGUSR1 or SIGUSR2 could not be hooked.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// A worker thread or its runtime could not be started.
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    /// Started by a binary upgrade, the listeners could not be taken
    /// over from the old process.
    #[error("binary upgrade: {0}")]
    Upgrade(#[from] upgrade::UpgradeError),
}

/// Runs the proxy on `config` until SIGTERM or SIGINT, then drains in-flight
/// requests, flushes the access log and syncs the store.
///
/// `listen_override` (the `--listen` flag) wins over the file's `listen`, at
/// start-up and on every reload. It is not written into the config, so it is
/// no part of the config version the ledger records.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    listen_override: Option<SocketAddr>,
) -> Result<(), RunError> {
    let listen = listen_override.unwrap_or(config.listen);
    let grace = config.runtime.shutdown_timeout;
    let lean = config.runtime.http1_fast_path;
    let workers = config.runtime.workers();
    let timeouts = proxy::lean::ClientTimeouts::of(&config.runtime);
    let tls = config.tls.as_ref().map(proxy::tls::Tls::load).transpose()?;
    // Every handler is in place before anyone can learn we are up: a SIGHUP
    // that arrived before its handler would kill the process.
    let sig = |kind| signal(kind).map_err(RunError::Signals);
    let (mut term, mut int) = (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?);
    let (mut usr1, hup, usr2) = (
        sig(SignalKind::user_defined1())?,
        sig(SignalKind::hangup())?,
        sig(SignalKind::user_defined2())?,
    );
    // Bind (or take the old process's sockets, in a binary upgrade) before
    // the store records anything: a start-up that cannot listen must not
    // have journaled the config's new epochs.
    let bind_err = |addr| move |source| RunError::Bind { addr, source };
    let inherited = upgrade::Inherited::take()?;
    let adopt = |l: std::net::TcpListener, addr| {
        l.set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l))
            .map_err(bind_err(addr))
    };
    let (listener, admin_listener, ready) = match inherited {
        Some(i) => {
            let admin = match (&config.admin, i.admin) {
                (Some(a), Some(l)) => Some(adopt(l, a.listen)?),
                (Some(a), None) => Some(
                    tokio::net::TcpListener::bind(a.listen)
                        .await
                        .map_err(bind_err(a.listen))?,
                ),
                (None, _) => None,
            };
            (adopt(i.proxy, listen)?, admin, Some(i.ready))
        }
        None => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(bind_err(listen))?;
            let admin = match &config.admin {
                Some(a) => Some(
                    tokio::net::TcpListener::bind(a.listen)
                        .await
                        .map_err(bind_err(a.listen))?,
                ),
                None => None,
            };
            (listener, admin, None)
        }
    };
    let local = listener.local_addr().map_err(bind_err(listen))?;
    let keep = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(bind_err(listen));
    let listeners = upgrade::Listeners {
        proxy: keep(listener.as_fd())?,
        admin: admin_listener
            .as_ref()
            .map(|l| keep(l.as_fd()))
            .transpose()?,
    };
    let loaded = config_path
        .as_deref()
        .and_then(|p| reload::watch::fingerprint(p, &config.watched));
    let upgrading = ready.is_some();
    if let Some(ready) = ready {
        // The old process now stops accepting, drains, syncs the store and
        // exits; new connections wait in the backlog meanwhile.
        ready.send()?;
        tracing::info!(old_pid = std::os::unix::process::parent_id(), "binary upgrade: took over the listeners; waiting for the old process to release the store");
    }
    let state = start_state(config, config_path.clone(), listen_override, upgrading).await?;

    if let Some(l) = admin_listener {
        let addr = l.local_addr().map_err(bind_err(listen))?;
        tracing::info!(addr = %addr, "admin API on http://{addr}");
        tokio::spawn(admin::serve(l, state.clone()));
    }
    tokio::spawn(reload::watch::watch(
        state.clone(),
        config_path,
        loaded,
        hup,
    ));
    let log = state.log.clone();
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            tracing::info!("SIGUSR1: reopening the access log");
            log.reopen();
        }
    });
    let scheme = if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch());
        "https"
    } else {
        "http"
    };
    let serving = proxy::listener::Serving::new(state.clone(), grace, lean, timeouts, tls);
    // One worker serves on this thread's runtime, beside the control
    // plane; more each get a thread and a runtime of their own, started
    // before anyone learns we are up. (`Err`: no pool, the listener this
    // thread serves itself.)
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pool = if workers == 1 {
        Err(listener)
    } else {
        let pool = listener
            .into_std()
            .and_then(|l| proxy::workers::start(workers, l, &serving, &stopped))
            .map_err(RunError::Workers)?;
        Ok(pool)
    };
    tracing::info!(addr = %local, "listening on {scheme}://{local}");
    let (handed_tx, handed) = tokio::sync::oneshot::channel();
    let upgrades = tokio::spawn(async move {
        upgrade::on_sigusr2(usr2, listeners).await;
        let _ = handed_tx.send(());
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            Ok(()) = handed => tracing::info!("binary upgrade: handed over, shutting down"),
        }
        // Its copies of the listening sockets go too: on a plain stop the
        // port then refuses new connections at once, as before.
        upgrades.abort();
    };
    let (drained, pool) = match pool {
        Err(listener) => {
            let drained = proxy::listener::serve(listener, shutdown, serving, None).await;
            (vec![drained], None)
        }
        Ok(mut pool) => {
            drop(serving);
            shutdown.await;
            let _ = stop.send(true);
            (pool.drained().await, Some(pool))
        }
    };
    // Every connection is done, so nothing here assigns any more (a
    // WebSocket tunnel never does): the store is synced and let go now,
    // and a binary upgrade's new process opens it without waiting for the
    // tunnels still open here.
    if let Err(e) = state.store.release().await {
        tracing::error!(error = %e, "store sync at shutdown failed");
    }
    for d in drained {
        d.tunnels().await;
    }
    flush_log(&state).await;
    if let Some(pool) = pool {
        pool.exit().await;
    }
    Ok(())
}

/// [`State::start`]; in a binary upgrade, waiting (up to the drain's
/// deadline and 10 s more) for the old process to release the embedded
/// store's lock: only one process may hold the journal, and the old one
/// holds it until its requests in flight are done (not its WebSocket
/// tunnels, which never assign).
async fn start_state(
    config: Config,
    config_path: Option<PathBuf>,
    listen_override: Option<SocketAddr>,
    upgrading: bool,
) -> Result<Arc<State>, StartError> {
    let deadline =
        std::time::Instant::now() + config.runtime.shutdown_timeout + Duration::from_secs(10);
    loop {
        match State::start(config.clone(), config_path.clone(), listen_override).await {
            Err(StartError::Store(StoreError::Locked(_)))
                if upgrading && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            r => return r,
        }
    }
}

async fn flush_log(state: &Arc<State>) {
    let log = state.log.clone();
    let _ = tokio::task::spawn_blocking(move || log.flush()).await;
    tracing::info!(
        access_log_lines = state.log.written_lines(),
        failed_lines = state.log.failed_lines(),
        "stopped"
    );
}
