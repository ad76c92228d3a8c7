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
        let store = Store::open(&config.store_path)?;
        let log = AccessLog::open(&config.access_log.target).map_err(|source| StartError::Log {
            target: match &config.access_log.target {
                crate::config::LogTarget::File(p) => p.display().to_string(),
                crate::config::LogTarget::Stdout => "stdout".into(),
            },
            source,
        })?;
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
        let ledger = self.store.ledger();
        let plan = plan_against(&ledger, &self.store, &config).map_err(|errors| {
            ReloadError::Rejected(ConfigErrors {
                file: config.source.clone(),
                errors,
            })
        })?;
        let restart_needed =
            diff(&ConfigRecord::of(&cur.config), &ConfigRecord::of(&config)).restart_needed;
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
