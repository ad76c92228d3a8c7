//! Reload triggers: the config file changing on disk, and SIGHUP (the
//! admin API's `POST /admin/reload` is the third, in `admin`).
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

use super::report::report;
use crate::state::State;

/// Two polls must agree before a change applies: at most ~500 ms.
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// Runs forever: reloads `path` whenever its content changes, and on
/// SIGHUP (`hup`, registered by the caller before start-up finished).
/// Without a file (the embedded demo config), SIGHUP is logged and ignored.
pub(crate) async fn watch(
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

pub(crate) type Fingerprint = [u8; 32];

/// The content of the config file and of the files it reads (`watched`,
/// a missing one hashes as empty).
pub(crate) fn fingerprint(path: &Path, watched: &[PathBuf]) -> Option<Fingerprint> {
    let mut h = Sha256::new();
    h.update(std::fs::read(path).ok()?);
    for f in watched {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(std::fs::read(f).unwrap_or_default());
    }
    Some(h.finalize().into())
}
