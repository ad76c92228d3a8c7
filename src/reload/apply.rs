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
use crate::assign::store::{RedisOptions, Store, StoreError};
use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::observe::access_log::AccessLog;
use crate::observe::time::now_rfc3339;
use crate::snapshot::Snapshot;
use crate::state::State;

use super::diff::diff;
use super::plan::{canonical, plan, Plan, Previous};
use crate::config::record::ConfigRecord;

/// Why the proxy could not start serving a config.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened, replayed or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The access log could not be opened.
    #[error("cannot open the access log {target}: {source}")]
    Log {
        /// The file (or `stdout`).
        target: String,
        /// Why the OS refused.
        source: std::io::Error,
    },
    /// The config is valid on its own but the ledger refuses it (judged
    /// exactly like a reload).
    #[error("{0}")]
    Rejected(ConfigErrors),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
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
pub(crate) enum Reloaded {
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
        let store = match &config.redis {
            None => Store::open_with(&config.store_path, config.durability)?,
            Some(r) => Store::open_redis(redis_options(r)).await?,
        };
        let log = AccessLog::open(&config.access_log).map_err(|source| StartError::Log {
            target: match &config.access_log.target {
                crate::config::LogTarget::File(p) => p.display().to_string(),
                crate::config::LogTarget::Stdout => "stdout".into(),
            },
            source,
        })?;
        // A shared ledger may move between reading and appending (another
        // replica applied): plan again against the new one.
        let mut tries = 0;
        let (plan, snap) = loop {
            let (ledger, version) = store.fresh_ledger().await?;
            let plan = plan_against(&ledger, &store, &config).map_err(|errors| {
                StartError::Rejected(ConfigErrors {
                    file: config.source.clone(),
                    errors,
                })
            })?;
            let snap = Snapshot::build(config.clone(), &planned(ledger, &plan), &store, None);
            if !plan.changes_anything() {
                break (plan, snap);
            }
            match store
                .append_ledger_at(with_history(&plan, &snap, "start-up"), version)
                .await
            {
                Ok(()) => break (plan, snap),
                Err(StoreError::LedgerMoved) if tries < LEDGER_RETRIES => {
                    tries += 1;
                    tracing::warn!("the shared ledger changed while this replica started (another replica applied a config); planning again against it");
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(config_version = %plan.config_version, "applied config at start-up\n{plan}");
        let state = State::new(snap, store, log, config_path, listen_override);
        if let Some(shared) = state.store.shared() {
            follow_ledger(Arc::downgrade(&state), shared.watch_ledger());
        }
        Ok(state)
    }

    /// Another replica moved the shared ledger: if this replica's applied
    /// config is exactly what the ledger now says (same rules, the other
    /// replica applied the same file first), rebuild the snapshot on the
    /// new epochs; otherwise keep serving and say why.
    async fn adopt_ledger(&self) {
        let _one_at_a_time = self.lock_changes().await;
        let cur = self.snapshot();
        let ledger = self.store.ledger();
        let behind = cur.experiments.iter().any(|x| {
            ledger
                .get(x.name)
                .is_some_and(|l| l.current().epoch != x.assigner.epoch)
        });
        if !behind {
            return;
        }
        let config = (*cur.config).clone();
        match plan_against(&ledger, &self.store, &config) {
            Ok(plan) if !plan.changes_epochs() => {
                let snap = Snapshot::build(config, &ledger, &self.store, Some(&cur));
                self.swap(snap);
                tracing::info!(
                    config_version = %plan.config_version,
                    "adopted the shared ledger: another replica applied this config's rules first"
                );
            }
            Ok(_) | Err(_) => {
                tracing::warn!(
                    applied_by_other = ledger.last_applied().map(|a| a.config_version.as_str()).unwrap_or("?"),
                    this_replica = %cur.version,
                    "the shared ledger moved to rules this replica's config does not have; it keeps serving its own until its config file matches (stored units are served as stored either way)"
                );
            }
        }
    }

    /// Re-reads the config file and applies it: every reload trigger comes
    /// through here, so this is where `cohort_reloads_total` is counted.
    pub(crate) async fn reload_file(&self, trigger: &str) -> Result<Reloaded, ReloadError> {
        let outcome = async {
            let path = self.config_path().ok_or(ReloadError::NoFile)?;
            let cfg = config::load_file(path).map_err(ReloadError::Invalid)?;
            self.apply(cfg, trigger).await
        }
        .await;
        match &outcome {
            Ok(Reloaded::Applied { .. }) => self.log.metrics().count_reload(true),
            Ok(Reloaded::Unchanged) => {}
            Err(_) => self.log.metrics().count_reload(false),
        }
        outcome
    }

    pub(crate) async fn apply(
        &self,
        config: Config,
        trigger: &str,
    ) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.lock_changes().await;
        let cur = self.snapshot();
        if *config.version() == *cur.version {
            return Ok(Reloaded::Unchanged);
        }
        let restart_needed =
            diff(&ConfigRecord::of(&cur.config), &ConfigRecord::of(&config)).restart_needed;
        let mut tries = 0;
        let (plan, snap) = loop {
            let (ledger, version) = self.store.fresh_ledger().await?;
            let plan = plan_against(&ledger, &self.store, &config).map_err(|errors| {
                ReloadError::Rejected(ConfigErrors {
                    file: config.source.clone(),
                    errors,
                })
            })?;
            let snap = Snapshot::build(
                config.clone(),
                &planned(ledger, &plan),
                &self.store,
                Some(&cur),
            );
            match self
                .store
                .append_ledger_at(with_history(&plan, &snap, trigger), version)
                .await
            {
                Ok(()) => break (plan, snap),
                Err(StoreError::LedgerMoved) if tries < LEDGER_RETRIES => {
                    tries += 1;
                    tracing::warn!(
                        config_version = %plan.config_version,
                        "another replica changed the shared ledger while this one applied its config: planning again against the ledger it wrote (this replica's config is applied after it)"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.swap(snap);
        Ok(Reloaded::Applied {
            plan,
            restart_needed,
        })
    }
}

/// How often an apply plans again after losing the ledger's CAS.
const LEDGER_RETRIES: u32 = 8;

/// The store's view of the config's `store` block (assignment never
/// imports the config).
pub fn redis_options(r: &crate::config::RedisStoreConfig) -> RedisOptions {
    RedisOptions {
        urls: r.urls.clone(),
        cluster: r.cluster,
        key_prefix: r.key_prefix.clone(),
        timeout: r.timeout,
        serve_by_hash: r.on_store_error == crate::config::OnStoreError::ServeByHash,
        wait_replicas: r.wait_replicas,
        password: r.password.clone(),
        tls_ca: r.tls_ca.clone(),
    }
}

/// Rebuilds the snapshot whenever the shared ledger moves, for as long as
/// the state lives.
fn follow_ledger(state: std::sync::Weak<State>, mut version: tokio::sync::watch::Receiver<u64>) {
    tokio::spawn(async move {
        while version.changed().await.is_ok() {
            let Some(state) = state.upgrade() else { return };
            state.adopt_ledger().await;
        }
    });
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, Env};

    fn config(dir: &Path, weights: (u32, u32)) -> Config {
        let yaml = format!(
            "listen: 127.0.0.1:0
store: {{ path: ./store }}
access_log: {{ path: \"-\" }}
upstreams:
  old: {{ url: http://127.0.0.1:1 }}
experiments:
  - name: e
    routes: [/p]
    variants:
      - {{ name: a, upstream: old, weight: {} }}
      - {{ name: b, upstream: old, weight: {} }}
",
            weights.0, weights.1
        );
        parse(&yaml, &dir.join("c.yaml"), dir, &Env::default()).unwrap()
    }

    fn history(state: &State) -> Vec<String> {
        let ledger = state.store.ledger();
        ledger
            .history
            .iter()
            .map(|a| a.config_version.clone())
            .collect()
    }

    /// Restarting on the same file, with or without `--listen`, records no
    /// new config version and starts no epoch.
    #[tokio::test]
    async fn a_restart_on_the_same_file_records_nothing_whatever_the_listen_flag() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let s = State::start(config(dir.path(), (50, 50)), None, None)
                .await
                .unwrap();
            history(&s)
        };
        assert_eq!(first.len(), 1);
        for listen in [None, Some("127.0.0.1:1234"), Some("127.0.0.1:4321")] {
            let listen = listen.map(|l| l.parse().unwrap());
            let s = State::start(config(dir.path(), (50, 50)), None, listen)
                .await
                .unwrap();
            assert_eq!(history(&s), first, "--listen {listen:?}");
            let l = s.store.ledger();
            assert_eq!(l.get("e").unwrap().epochs.len(), 1);
            // The flag is kept beside the config, not in it.
            assert_eq!(s.listen_override(), listen);
            assert_eq!(s.snapshot().config.listen.port(), 0);
        }
    }

    #[tokio::test]
    async fn a_reload_applies_only_a_changed_config() {
        let dir = tempfile::tempdir().unwrap();
        let listen = Some("127.0.0.1:1234".parse().unwrap());
        let s = State::start(config(dir.path(), (50, 50)), None, listen)
            .await
            .unwrap();
        let same = s.apply(config(dir.path(), (50, 50)), "test").await.unwrap();
        assert!(matches!(same, Reloaded::Unchanged));
        let ramp = s.apply(config(dir.path(), (20, 80)), "test").await.unwrap();
        let Reloaded::Applied {
            plan,
            restart_needed,
        } = ramp
        else {
            panic!("applied")
        };
        assert!(restart_needed.is_empty(), "{restart_needed:?}");
        assert_eq!(plan.experiments[0].epoch_after.0, 2);
        assert_eq!(history(&s).len(), 2);
        // The history record is the versioned one.
        let l = s.store.ledger();
        assert_eq!(l.history[1].config["version"], 1);
        assert_eq!(*s.snapshot().version, l.history[1].config_version);
    }
}
