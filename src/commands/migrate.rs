//! `cohort store migrate --from DIR --to redis://...`: copies an embedded
//! store (its epoch ledger and every assignment) into Redis, so a one-box
//! deployment grows into replicas mid-experiment without moving a unit.
//!
//! Reads the journal read-only (safe while the proxy still runs on it, but
//! stop it before switching, or units first seen in between stay behind:
//! run the command again after stopping it; it is idempotent). The ledger
//! is rebuilt event by event in experiment-id order, so experiment ids,
//! variant dictionaries and epochs are the same in Redis; a Redis ledger
//! that already equals it is left alone, a different one is refused.
//! Assignments are written with `SET NX` under the documented keys
//! (`assign::store::redis`): one already there is left as it is.

use std::path::Path;

use super::Outcome;
use crate::assign::ledger::{Ledger, LedgerEvent};
use crate::assign::store::redis::{Imported, RedisOptions, RedisStore};
use crate::assign::store::StoreView;

/// Where to migrate to.
pub struct MigrateTo {
    /// `redis://` or `rediss://` URLs (several: cluster seed nodes).
    pub urls: Vec<String>,
    /// Redis Cluster.
    pub cluster: bool,
    /// The `store.key_prefix` the replicas will use.
    pub key_prefix: String,
    /// A password that wins over the URL's.
    pub password: Option<String>,
    /// A PEM CA bundle for `rediss://`.
    pub tls_ca: Option<Vec<u8>>,
}

/// The ledger events that rebuild `l` from nothing, ids in the same order.
pub(crate) fn ledger_events(l: &Ledger) -> Vec<LedgerEvent> {
    let mut events = Vec::new();
    for x in &l.experiments {
        events.push(LedgerEvent::epoch(&x.name, x.epochs[0].clone()));
    }
    for x in &l.experiments {
        for r in &x.epochs[1..] {
            events.push(LedgerEvent::epoch(&x.name, r.clone()));
        }
    }
    for a in &l.history {
        events.push(LedgerEvent::Applied(a.clone()));
    }
    for (experiment, paused, at) in &l.pause_log {
        events.push(LedgerEvent::Pause {
            experiment: experiment.clone(),
            paused: *paused,
            at: at.clone(),
        });
    }
    events
}

/// `cohort store migrate`.
pub async fn migrate_command(from: &Path, to: MigrateTo) -> Outcome {
    let view = match StoreView::open(from) {
        Ok(v) => v,
        Err(e) => return Outcome::fail(e),
    };
    let ledger = view.ledger();
    let redis = match RedisStore::open(RedisOptions {
        urls: to.urls,
        cluster: to.cluster,
        key_prefix: to.key_prefix,
        timeout: std::time::Duration::from_secs(5),
        serve_by_hash: false,
        wait_replicas: 0,
        password: to.password,
        tls_ca: to.tls_ca,
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::fail(format!("cannot open the Redis store: {e}")),
    };
    let mut out = String::new();
    match redis.ledger_is_empty().await {
        Err(e) => return Outcome::fail(e),
        Ok(true) => {
            let events = ledger_events(&ledger);
            let n = events.len();
            if let Err(e) = redis.append_ledger_at(events, 0).await {
                return Outcome::fail(format!("cannot write the ledger: {e}"));
            }
            out.push_str(&format!("ledger: {n} events copied\n"));
        }
        Ok(false) => {
            let theirs = redis.ledger();
            let same = theirs.experiments == ledger.experiments
                || ledger.experiments.iter().all(|x| {
                    theirs.get(&x.name).is_some_and(|t| {
                        t.id == x.id
                            && t.variants.starts_with(&x.variants)
                            && t.epochs.starts_with(&x.epochs)
                    })
                });
            if !same {
                return Outcome::fail(
                    "Redis already holds a different ledger under this key prefix: refusing to mix two stores (pick another --key-prefix)",
                );
            }
            out.push_str("ledger: already in Redis\n");
        }
    }
    let (mut written, mut there, mut differ) = (0u64, 0u64, 0u64);
    for (id, key, a) in view.assignments() {
        let Some(x) = ledger.by_id(id) else { continue };
        let variant = &x.variants[usize::from(a.variant)];
        match redis
            .import(&x.name, x.current().reset, key, a, variant)
            .await
        {
            Ok(Imported::Written) => written += 1,
            Ok(Imported::AlreadyThere) => there += 1,
            Ok(Imported::Differs(_)) => differ += 1,
            Err(e) => {
                return Outcome::fail(format!(
                    "{out}assignments: {written} written before the error: {e}"
                ))
            }
        }
    }
    out.push_str(&format!(
        "assignments: {written} written, {there} already there, {differ} held another value in Redis (kept)\n"
    ));
    Outcome {
        stdout: out,
        stderr: String::new(),
        code: u8::from(differ > 0),
    }
}
