//! Applying a config: at start-up, on every reload, and as a dry run for
//! `plan`. The one place a config becomes the serving snapshot.
//!
//! Applying is: plan against the ledger (pure, [`super::plan`]) -> build the
//! new snapshot -> journal the plan's epoch events and the history record
//! durably -> swap. Any failure before the swap leaves the old snapshot
//! serving. These are methods of [`State`] so callers keep one handle, but
//! they live here: `state.rs` stays the plain holder the proxy reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::assign::ledger::{AppliedConfig, Ledger, LedgerEvent};
use crate::assign::store::{Store, StoreError};
use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::observe::access_log::AccessLog;
use crate::observe::time::now_rfc3339;
use crate::snapshot::Snapshot;
use crate::state::State;

use super::plan::{canonical, plan, Plan, Previous};

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

impl State {
    /// Opens the store and log and applies `config` as the first snapshot,
    /// judged by the same rules as a reload against the stored ledger.
    ///
    /// `listen_override` (the `--listen` flag) is kept beside the config,
    /// never written into it: it is not part of the recorded config version.
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
        Ok(State::new(snap, store, log, config_path, listen_override))
    }

    /// Re-reads the config file and applies it.
    pub async fn reload_file(&self, trigger: &str) -> Result<Reloaded, ReloadError> {
        let path = self.config_path().ok_or(ReloadError::NoFile)?;
        let cfg = config::load_file(path).map_err(ReloadError::Invalid)?;
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
        let _one_at_a_time = self.lock_changes().await;
        let cur = self.snapshot();
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
        self.swap(snap);
        Ok(Reloaded::Applied {
            plan,
            restart_needed,
        })
    }
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
        config: canonical(&snap.config),
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
