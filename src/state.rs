//! The proxy's live state: the applied snapshot, the store and the access
//! log, and the one place a config is applied (at start-up and on reload).
//!
//! Applying is: validate -> plan against the ledger (pure) -> build the new
//! snapshot -> journal the plan's epoch events durably -> swap. Any failure
//! before the swap leaves the old snapshot serving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::assign::plan::{plan, Plan};
use crate::assign::store::{Store, StoreError};
use crate::config::{self, Config, ConfigErrors};
use crate::observe::access_log::AccessLog;
use crate::observe::time::now_rfc3339;
use crate::snapshot::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("access log: {0}")]
    Log(#[from] std::io::Error),
    #[error("{0}")]
    Rejected(ConfigErrors),
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid config, keeping the applied one: {0}")]
    Invalid(ConfigErrors),
    #[error("config rejected, keeping the applied one: {0}")]
    Rejected(ConfigErrors),
    #[error("config not applied, the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("no config file to reload (running on the embedded config)")]
    NoFile,
}

#[derive(Debug)]
pub enum Reloaded {
    /// The parsed config equals the applied one (e.g. a comment-only edit).
    Unchanged,
    Applied {
        plan: Plan,
        /// Fields that changed but only take effect after a restart.
        restart_needed: Vec<&'static str>,
    },
}

pub struct State {
    snapshot: ArcSwap<Snapshot>,
    pub store: Store,
    pub log: AccessLog,
    config_path: Option<PathBuf>,
    listen_override: Option<SocketAddr>,
    reload_lock: tokio::sync::Mutex<()>,
    request_seq: AtomicU64,
    request_prefix: String,
}

impl State {
    /// Opens the store and log and applies `config` as the first snapshot,
    /// judged by the same rules as a reload against the stored ledger.
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
        listen_override: Option<SocketAddr>,
    ) -> Result<Arc<State>, StartError> {
        let store = Store::open(&config.store_path)?;
        let log = AccessLog::open(&config.access_log.target)?;
        let ledger = store.ledger();
        let plan = plan(&ledger, &store, &config, &now_rfc3339()).map_err(|errors| {
            StartError::Rejected(ConfigErrors {
                file: config.source.clone(),
                errors,
            })
        })?;
        let mut next = ledger;
        for ev in &plan.events {
            next.apply(ev).expect("planned events apply");
        }
        let snap = Snapshot::build(config, &next, &store, None);
        store.append_ledger(plan.events.clone()).await?;
        tracing::info!(config_version = %plan.config_version, "applied config at start-up\n{plan}");
        Ok(Arc::new(State {
            snapshot: ArcSwap::from_pointee(snap),
            store,
            log,
            config_path,
            listen_override,
            reload_lock: tokio::sync::Mutex::new(()),
            request_seq: AtomicU64::new(0),
            request_prefix: request_prefix(),
        }))
    }

    /// The snapshot new requests should use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config_path.as_ref()
    }

    /// A request id unique to this process: `<random prefix>-<sequence>`.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.request_prefix)
    }

    /// Re-reads the config file and applies it.
    pub async fn reload_file(&self) -> Result<Reloaded, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let mut cfg = config::load_file(path).map_err(ReloadError::Invalid)?;
        if let Some(l) = self.listen_override {
            cfg.listen = l;
        }
        self.apply(cfg).await
    }

    pub async fn apply(&self, config: Config) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let cur = self.snapshot.load_full();
        if config.version() == cur.version {
            return Ok(Reloaded::Unchanged);
        }
        let ledger = self.store.ledger();
        let plan = plan(&ledger, &self.store, &config, &now_rfc3339()).map_err(|errors| {
            ReloadError::Rejected(ConfigErrors {
                file: config.source.clone(),
                errors,
            })
        })?;
        let restart_needed = restart_only_changes(&cur.config, &config);
        let mut next = ledger;
        for ev in &plan.events {
            next.apply(ev).expect("planned events apply");
        }
        let snap = Snapshot::build(config, &next, &self.store, Some(&cur));
        self.store.append_ledger(plan.events.clone()).await?;
        self.snapshot.store(Arc::new(snap));
        Ok(Reloaded::Applied {
            plan,
            restart_needed,
        })
    }
}

/// Settings bound at start-up (sockets, files, threads).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.listen != new.listen {
        v.push("listen");
    }
    if old.store_path != new.store_path {
        v.push("store.path");
    }
    if old.access_log.target != new.access_log.target {
        v.push("access_log.path");
    }
    if old.runtime.worker_threads != new.runtime.worker_threads {
        v.push("runtime.worker_threads");
    }
    if old.runtime.shutdown_timeout != new.runtime.shutdown_timeout {
        v.push("runtime.shutdown_timeout");
    }
    v
}

fn request_prefix() -> String {
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    Sha256::digest(seed.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
