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

use crate::assign::ledger::{AppliedConfig, Ledger, LedgerEvent};
use crate::assign::plan::{plan, Plan, Previous};
use crate::assign::store::{Store, StoreError};
use crate::config::{self, Config, ConfigError, ConfigErrors};
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
        let plan = plan_against(&ledger, &store, &config).map_err(|errors| {
            StartError::Rejected(ConfigErrors {
                file: config.source.clone(),
                errors,
            })
        })?;
        let snap = Snapshot::build(config, &planned(ledger, &plan), &store, None);
        if plan.changes_anything() {
            store
                .append_ledger(with_history(&plan, &snap, "start-up"))
                .await?;
        }
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

    /// A request id unique to this process: `<random prefix>-<sequence>`.
    pub fn next_request_id(&self) -> http::HeaderValue {
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

    /// Re-reads the config file and applies it.
    pub async fn reload_file(&self, trigger: &str) -> Result<Reloaded, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let mut cfg = config::load_file(path).map_err(ReloadError::Invalid)?;
        if let Some(l) = self.listen_override {
            cfg.listen = l;
        }
        self.apply(cfg, trigger).await
    }

    /// What applying `config` would do, without applying it.
    pub fn plan(&self, config: &Config) -> Result<Plan, ConfigErrors> {
        plan_against(&self.store.ledger(), &self.store, config).map_err(|errors| ConfigErrors {
            file: config.source.clone(),
            errors,
        })
    }

    pub async fn apply(&self, config: Config, trigger: &str) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let cur = self.snapshot.load_full();
        if *config.version() == *cur.version {
            return Ok(Reloaded::Unchanged);
        }
        let ledger = self.store.ledger();
        let plan = plan_against(&ledger, &self.store, &config).map_err(|errors| {
            ReloadError::Rejected(ConfigErrors {
                file: config.source.clone(),
                errors,
            })
        })?;
        let restart_needed = restart_only_changes(&cur.config, &config);
        let snap = Snapshot::build(config, &planned(ledger, &plan), &self.store, Some(&cur));
        self.store
            .append_ledger(with_history(&plan, &snap, trigger))
            .await?;
        self.snapshot.store(Arc::new(snap));
        Ok(Reloaded::Applied {
            plan,
            restart_needed,
        })
    }

    /// The admin kill switch: journaled, then in effect for every request
    /// at once (the flag lives in the experiment's table, not the snapshot).
    pub async fn set_paused(&self, experiment: &str, paused: bool) -> Result<(), PauseError> {
        let _one_at_a_time = self.reload_lock.lock().await;
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
pub enum PauseError {
    #[error("no experiment {0:?} in the applied config")]
    UnknownExperiment(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn plan_against(ledger: &Ledger, store: &Store, config: &Config) -> Result<Plan, Vec<ConfigError>> {
    let previous = ledger.last_applied().map(|a| Previous {
        version: &a.config_version,
        config: &a.config,
    });
    plan(ledger, store, previous, config, &now_rfc3339())
}

/// The ledger as it will be once `plan`'s events are applied.
fn planned(mut ledger: Ledger, plan: &Plan) -> Ledger {
    for ev in &plan.events {
        ledger.apply(ev).expect("planned events apply");
    }
    ledger
}

/// The plan's events followed by the history record of this apply.
fn with_history(plan: &Plan, snap: &Snapshot, trigger: &str) -> Vec<LedgerEvent> {
    let mut events = plan.events.clone();
    events.push(LedgerEvent::Applied(AppliedConfig {
        config_version: plan.config_version.clone(),
        applied_at: now_rfc3339(),
        trigger: trigger.to_string(),
        summary: plan.to_string(),
        config: crate::assign::plan::canonical(&snap.config),
    }));
    events
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
    if old.runtime.max_request_head != new.runtime.max_request_head {
        v.push("runtime.max_request_head");
    }
    if old.runtime.http1_fast_path != new.runtime.http1_fast_path {
        v.push("runtime.http1_fast_path");
    }
    if old.runtime.client_idle_timeout != new.runtime.client_idle_timeout
        || old.runtime.client_header_timeout != new.runtime.client_header_timeout
        || old.runtime.client_body_timeout != new.runtime.client_body_timeout
    {
        v.push("runtime.client_*_timeout");
    }
    if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        v.push("admin.listen");
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
