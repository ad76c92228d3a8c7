//! Reload triggers: the config file changing on disk, and SIGHUP.
//!
//! The file is polled (every 250 ms, by content) rather than watched with
//! inotify: polling sees every way an operator or a tool replaces a file —
//! in-place writes, editors' rename-over, Kubernetes ConfigMap symlink
//! swaps — with no platform-specific edge cases, and costs one small read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, SignalKind};

use crate::state::{ReloadError, Reloaded, State};

const POLL: Duration = Duration::from_millis(250);

/// Runs forever: reloads `path` whenever its content changes or on SIGHUP.
pub async fn watch(state: Arc<State>, path: PathBuf) {
    let mut last = fingerprint(&path);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; file changes still reload");
            None
        }
    };
    loop {
        let trigger = tokio::select! {
            _ = tick.tick() => {
                let now = fingerprint(&path);
                if now == last {
                    continue;
                }
                last = now;
                "file changed"
            }
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                last = fingerprint(&path);
                "SIGHUP"
            }
        };
        report(trigger, state.reload_file().await);
    }
}

/// Logs a reload's outcome: the plan when applied, every error when not.
pub fn report(trigger: &str, outcome: Result<Reloaded, ReloadError>) {
    match outcome {
        Ok(Reloaded::Unchanged) => tracing::info!(
            trigger,
            "config unchanged (same parsed content); nothing to apply"
        ),
        Ok(Reloaded::Applied {
            plan,
            restart_needed,
        }) => {
            tracing::info!(trigger, config_version = %plan.config_version, "config reloaded\n{plan}");
            if !restart_needed.is_empty() {
                tracing::warn!(fields = ?restart_needed, "these settings changed but take effect only after a restart");
            }
        }
        Err(e) => tracing::error!(trigger, "{e}"),
    }
}

fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}
