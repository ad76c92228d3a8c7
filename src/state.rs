//! The proxy's live state, as requests see it: the applied snapshot (one
//! atomic pointer), the store, the access log and request ids.
//!
//! How a config becomes the snapshot (start-up, reload, plan) is
//! [`crate::reload`]'s job; it swaps the result in through `State::swap`.
//! The admin kill switch lives here because it changes no snapshot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::assign::ledger::LedgerEvent;
use crate::assign::store::{Store, StoreError};
use crate::observe::access_log::AccessLog;
use crate::observe::time::now_rfc3339;
use crate::snapshot::Snapshot;

/// Everything a request needs, shared by every connection and task for the
/// life of the process (behind one `Arc`).
pub struct State {
    snapshot: ArcSwap<Snapshot>,
    /// The assignment store: stored units and the epoch ledger.
    pub store: Store,
    /// The access log every finished request writes one line to.
    pub log: AccessLog,
    config_path: Option<PathBuf>,
    listen_override: Option<SocketAddr>,
    reload_lock: tokio::sync::Mutex<()>,
    request_seq: AtomicU64,
    request_prefix: String,
}

impl State {
    /// The state serving `snapshot` (already applied and journaled).
    pub(crate) fn new(
        snapshot: Snapshot,
        store: Store,
        log: AccessLog,
        config_path: Option<PathBuf>,
        listen_override: Option<SocketAddr>,
    ) -> Arc<State> {
        log.metrics().track(&snapshot);
        Arc::new(State {
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
            log,
            config_path,
            listen_override,
            reload_lock: tokio::sync::Mutex::new(()),
            request_seq: AtomicU64::new(0),
            request_prefix: request_prefix(),
        })
    }

    /// Makes `snapshot` the one new requests use.
    pub(crate) fn swap(&self, snapshot: Snapshot) {
        // Its requests' metric slots exist before any request can see it.
        self.log.metrics().track(&snapshot);
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Held by whoever changes the applied config or the ledger: one change
    /// at a time.
    pub(crate) async fn lock_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reload_lock.lock().await
    }

    /// The file the config was loaded from (none for the embedded demo).
    pub(crate) fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The `--listen` flag, which wins over the file's `listen` and is not
    /// part of the applied config.
    pub fn listen_override(&self) -> Option<SocketAddr> {
        self.listen_override
    }

    /// The snapshot new requests should use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A request id unique to this process: `<random prefix>-<sequence>`.
    pub(crate) fn next_request_id(&self) -> http::HeaderValue {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        let p = self.request_prefix.as_bytes();
        buf[..p.len()].copy_from_slice(p);
        buf[p.len()] = b'-';
        let mut end = p.len() + 1;
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in (0..digits).rev() {
            buf[end] = b"0123456789abcdef"[((n >> (4 * i)) & 0xf) as usize];
            end += 1;
        }
        http::HeaderValue::from_bytes(&buf[..end]).expect("hex is a header value")
    }

    /// The admin kill switch: journaled, then in effect for every request
    /// at once (the flag lives in the experiment's table, not the snapshot).
    pub(crate) async fn set_paused(
        &self,
        experiment: &str,
        paused: bool,
    ) -> Result<(), PauseError> {
        let _one_at_a_time = self.lock_changes().await;
        if self.snapshot().config.experiment(experiment).is_none() {
            return Err(PauseError::UnknownExperiment(experiment.to_string()));
        }
        let ev = LedgerEvent::Pause {
            experiment: experiment.to_string(),
            paused,
            at: now_rfc3339(),
        };
        self.store.append_ledger(vec![ev]).await?;
        tracing::warn!(
            experiment,
            paused,
            "admin {} the experiment",
            if paused { "PAUSED" } else { "resumed" }
        );
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PauseError {
    #[error("no experiment {0:?} in the applied config")]
    UnknownExperiment(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn request_prefix() -> String {
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    Sha256::digest(seed.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
