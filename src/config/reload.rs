//! Reload triggers: the config file changing on disk, and SIGHUP.
//!
//! The file is polled (every 200 ms, by content) rather than watched with
//! inotify: polling sees every way an operator or a tool replaces a file —
//! in-place writes, editors' rename-over, Kubernetes ConfigMap symlink
//! swaps — with no platform-specific edge cases, and costs one small read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::signal::unix::Signal;

use crate::assign::plan::Decision;
use crate::state::{ReloadError, Reloaded, State};

/// Two polls must agree before a change applies: at most ~500 ms.
const POLL: Duration = Duration::from_millis(200);

/// Runs forever: reloads `path` whenever its content changes, and on
/// SIGHUP (`hup`, registered by the caller before start-up finished).
/// Without a file (the embedded demo config), SIGHUP is logged and ignored.
pub async fn watch(
    state: Arc<State>,
    path: Option<PathBuf>,
    loaded: Option<Fingerprint>,
    mut hup: Signal,
) {
    // `loaded` was taken when the config was read, before the store was
    // replayed: an edit made during a long start-up is still seen.
    let mut last = loaded;
    // A change is applied once two polls agree, so a file caught halfway
    // through an in-place write is never applied.
    let mut settling: Option<Fingerprint> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = tick.tick() => {
                let Some(p) = path.as_deref() else { continue };
                let now = fingerprint(p, &state.snapshot().config.watched);
                if now == last {
                    settling = None;
                    continue;
                }
                if settling != now {
                    settling = now;
                    continue;
                }
                settling = None;
                last = now;
                "file changed"
            }
            Some(()) = hup.recv() => {
                last = path.as_deref().and_then(|p| fingerprint(p, &state.snapshot().config.watched));
                "SIGHUP"
            }
        };
        report(trigger, state.reload_file(trigger).await);
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
            for x in &plan.experiments {
                if matches!(x.decision, Decision::NewEpoch { reset: true, .. }) {
                    let dropped: u64 = x.units.iter().map(|(_, n)| n).sum();
                    tracing::warn!(experiment = %x.name, dropped, epoch = x.epoch_after.0, "EXPERIMENT RESET: every stored assignment was dropped; units are assigned afresh in the new epoch");
                }
            }
        }
        Err(e) => tracing::error!(trigger, "{e}"),
    }
}

pub type Fingerprint = [u8; 32];

/// The content of the config file and of the files it reads (`watched`,
/// a missing one hashes as empty).
pub fn fingerprint(path: &Path, watched: &[PathBuf]) -> Option<Fingerprint> {
    let mut h = Sha256::new();
    h.update(std::fs::read(path).ok()?);
    for f in watched {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(std::fs::read(f).unwrap_or_default());
    }
    Some(h.finalize().into())
}
