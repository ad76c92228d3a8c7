//! The shared store: assignments and the epoch ledger in Redis (standalone
//! or Redis Cluster, or protocol-compatible Valkey), so every replica of
//! cohort serves a unit the same variant under the same epoch.
//!
//! **Why the `redis` crate.** It is the Redis project's own Rust client
//! (redis-rs), kept in step with the server: its tokio `ConnectionManager`
//! multiplexes one connection and reconnects with exponential back-off,
//! `cluster-async` follows slot moves and failovers, `Script` runs a Lua
//! script by `EVALSHA` (loading it on `NOSCRIPT`), and `rediss://` comes
//! with rustls. `fred` would serve too; redis-rs is the more widely run.
//!
//! **Keys** (all start with `<key_prefix>:`; one key per (experiment, unit)
//! so a cluster spreads units over every slot; no hash tags):
//! - `<p>:u:<experiment>:<reset>:<digest>`: a unit's assignment, the string
//!   `"<epoch> <first_seen unix s> <variant>"`. `<digest>` is the hex of
//!   the first 16 bytes of SHA-256(`"cohort-unit\0" + experiment + "\0" +
//!   unit`), the embedded store's key (so migration needs no unit ids and
//!   Redis holds no raw user ids); `<reset>` is the experiment's `reset`
//!   counter, so a reset moves every replica to fresh keys at once.
//! - `<p>:n:<experiment>:<reset>:<variant>`: units stored per variant, for
//!   `plan`'s orphan check (incremented after each first write).
//! - `<p>:ledger`: the epoch ledger, a list of JSON ledger events in the
//!   order they were applied; its length is the ledger's version.
//!
//! **First writer wins.** A new unit is one `SET key value NX GET`: the
//! reply is nil when this replica's value was stored, else the value that
//! was there, which this replica adopts and stamps. **Ledger** appends are
//! a Lua compare-and-set on the list's length: a replica that planned
//! against an older ledger loses, re-reads it and plans again, so the
//! ledger never forks. Every replica polls the ledger's length every
//! [`LEDGER_POLL`] and applies what is new (a reset clears its cache).
//!
//! **Cache.** Every assignment read or written is kept in the same
//! in-memory [`Table`] the embedded store uses: returning units never touch
//! Redis. Correct because an assignment never changes until a reset, and a
//! reset changes the key generation and clears the cache on every replica
//! within one poll. A unit is cached only while the generation of its key
//! is current, and for [`RESET_SETTLE`] after a reset a new unit assigned
//! under a pre-reset epoch (a request that began before the reset) is
//! written to the dropped generation: such a request cannot put a
//! pre-reset assignment into the new generation or the cleared cache.
//!
//! **Durability** is Redis': an assignment counts as stored when Redis
//! acknowledged the `SET`; what that survives depends on `appendfsync` and
//! replication, stated in docs/replicas.md. `store.wait_replicas` adds a
//! `WAIT` after each first write.
//!
//! **Degraded mode.** Every Redis call on the request path is bounded by
//! `store.timeout`; after a failure Redis is skipped for a back-off (50 ms
//! doubling to 2 s). With `serve_by_hash` a new unit is then assigned by the
//! contract hash under the replica's current epoch, flagged `degraded`, and
//! queued for a `SET NX` write-back when Redis answers again (first writer
//! still wins: a write-back that finds another value logs it and the cache
//! takes the stored one). With `reject` the request fails (503).
//! [`RedisStore::health`] reports whether Redis answers and how write-backs
//! went, for `/metrics` (`cohort_store_up`, `cohort_store_writebacks_total`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Client, IntoConnectionInfo, RedisResult, Script, Value};
use tokio::sync::watch;

use super::embedded::unix_now;
use super::error::StoreError;
use super::shared::Shared;
use super::table::{Assigned, Assignment, Table};
use crate::assign::epoch::Epoch;
use crate::assign::hash::UnitKey;
use crate::assign::ledger::{ExperimentId, Ledger, LedgerEvent, UnitCounts, VariantId};

/// How often every replica checks the shared ledger for changes made by
/// another replica: the bound on how late a reset reaches it (plus one
/// round trip).
/// Queued degraded assignments are retried as often.
pub const LEDGER_POLL: Duration = Duration::from_millis(250);

/// How long after this replica's ledger copy takes in a reset a new unit
/// assigned under a pre-reset epoch is taken for a request that began
/// before the reset (written to the dropped generation and not cached)
/// rather than for a replica whose config has not got the reset yet
/// (written to the new generation, as documented). It covers the time from
/// the reset reaching this replica to its snapshot swap, plus a request's
/// time from reading its snapshot to its store call.
const RESET_SETTLE: Duration = Duration::from_secs(1);

/// How long a unit counter's `INCR` is retried while Redis is away.
const COUNT_RETRY_FOR: Duration = Duration::from_secs(60);

/// Increments in flight past which a failed one is not retried.
const COUNT_RETRY_TASKS: u64 = 4096;

/// Degraded assignments kept for write-back at most (about 100 bytes
/// each); beyond it new ones are served but not queued.
const MAX_PENDING: usize = 1_000_000;

/// The ledger CAS: append `ARGV[2..]` if the list still has `ARGV[1]`
/// entries; returns the new length, or -1 when another replica appended
/// first.
const APPEND_LEDGER: &str = r"
local n = redis.call('LLEN', KEYS[1])
if n ~= tonumber(ARGV[1]) then return -1 end
for i = 2, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
return n + #ARGV - 1
";

/// Where and how to reach Redis: the store's own copy of the config's
/// `store` block (assignment never imports the config).
#[derive(Clone)]
pub struct RedisOptions {
    /// One URL, or a cluster's seed nodes.
    pub urls: Vec<String>,
    /// Redis Cluster.
    pub cluster: bool,
    /// The prefix of every key.
    pub key_prefix: String,
    /// The bound on every request-path call.
    pub timeout: Duration,
    /// `serve_by_hash` (true) or `reject` (false).
    pub serve_by_hash: bool,
    /// `WAIT` for this many replicas after a first write.
    pub wait_replicas: u32,
    /// A password that wins over the URL's.
    pub password: Option<String>,
    /// A PEM CA bundle for `rediss://`.
    pub tls_ca: Option<Vec<u8>>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        s: &Script,
        key: &str,
        args: &[String],
    ) -> RedisResult<T> {
        let mut inv = s.key(key);
        for a in args {
            inv.arg(a);
        }
        match self.clone() {
            Conn::Single(mut c) => inv.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
        }
    }
}

/// The Redis-backed store of one replica.
pub struct RedisStore {
    conn: Conn,
    opts: RedisOptions,
    shared: Arc<Shared>,
    append: Script,
    /// Unit counts per (experiment, variant), read before each plan.
    counts: Mutex<HashMap<(ExperimentId, VariantId), u64>>,
    /// Degraded assignments waiting to be written: key -> (value,
    /// experiment, unit, the key's reset generation).
    pending: Mutex<HashMap<String, (String, ExperimentId, UnitKey, u64)>>,
    /// Milliseconds since `born` until which Redis is skipped.
    down_until: AtomicU64,
    backoff_ms: AtomicU64,
    born: Instant,
    /// Requests served degraded so far.
    pub degraded_total: AtomicU64,
    /// Degraded assignments not queued because the queue was full.
    dropped_write_backs: AtomicU64,
    /// Whether the last Redis call (a request's or the ledger poll's)
    /// succeeded: `cohort_store_up`.
    up: AtomicBool,
    /// Write-backs after which the unit holds what this replica served it,
    /// and those that found another variant or epoch stored first.
    writebacks_stored: AtomicU64,
    writebacks_lost: AtomicU64,
    version: watch::Sender<u64>,
    /// Serialises this replica's ledger reads and appends.
    ledger_io: tokio::sync::Mutex<()>,
    /// When this replica's ledger copy last took in a reset, per experiment.
    resets_seen: Mutex<HashMap<ExperimentId, Instant>>,
    /// The runtime the store was opened on (the control plane's), which
    /// runs the unit counters' `INCR`s: a worker's runtime stops serving
    /// its tasks before the process is done, and a count lost there would
    /// let `plan` think a variant holds fewer units than it does.
    control: tokio::runtime::Handle,
    /// `INCR`s sent and not yet answered; [`RedisStore::settle`] waits for
    /// them at shutdown.
    counting: Arc<Counting>,
}

/// Unit-counter increments in flight (and write-back passes, which make
/// more of them).
#[derive(Default)]
struct Counting {
    n: AtomicU64,
    idle: tokio::sync::Notify,
    /// Increments given up on (warned of every thousandth).
    lost: AtomicU64,
    /// Set by [`RedisStore::settle`]: write-back passes stop.
    closing: AtomicBool,
}

impl Counting {
    fn done(&self) {
        if self.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

fn redis_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Connects and reads the whole shared ledger. Needs Redis up: a
    /// replica that cannot read the ledger cannot know the epochs.
    pub async fn open(opts: RedisOptions) -> Result<Arc<RedisStore>, StoreError> {
        let conn = connect(&opts).await.map_err(|e| {
            let at: Vec<String> = opts.urls.iter().map(|u| without_password(u)).collect();
            let hint = if e.kind() == redis::ErrorKind::AuthenticationFailed {
                " (check the user in store.url and the password in store.url or store.password_file)"
            } else {
                ""
            };
            StoreError::Unavailable(format!("cannot connect to {}: {e}{hint}", at.join(", ")))
        })?;
        let store = Arc::new(RedisStore {
            conn,
            shared: Arc::new(Shared {
                path: opts.urls[0].clone().into(),
                ledger: Mutex::new(Ledger::default()),
                ledger_events: AtomicU64::new(0),
                tables: Mutex::new(Vec::new()),
            }),
            opts,
            append: Script::new(APPEND_LEDGER),
            counts: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            down_until: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(0),
            born: Instant::now(),
            degraded_total: AtomicU64::new(0),
            dropped_write_backs: AtomicU64::new(0),
            up: AtomicBool::new(true),
            writebacks_stored: AtomicU64::new(0),
            writebacks_lost: AtomicU64::new(0),
            version: watch::channel(0).0,
            ledger_io: tokio::sync::Mutex::new(()),
            resets_seen: Mutex::new(HashMap::new()),
            control: tokio::runtime::Handle::current(),
            counting: Arc::default(),
        });
        store.refresh_ledger().await.map_err(|e| match e {
            StoreError::Unavailable(m) if m.to_lowercase().contains("noperm") => StoreError::Unavailable(format!(
                "{m} (the Redis ACL user needs the keys {}:* and the commands docs/replicas.md lists)",
                store.opts.key_prefix
            )),
            e => e,
        })?;
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut reported = 0;
            loop {
                tokio::time::sleep(LEDGER_POLL).await;
                let Some(s) = weak.upgrade() else { return };
                let polled = tokio::time::timeout(LEDGER_POLL * 4, s.refresh_ledger()).await;
                match polled.map_err(|_| StoreError::Unavailable("ledger poll timed out".into())) {
                    Ok(Err(e)) | Err(e) => {
                        s.up.store(false, Ordering::Relaxed);
                        tracing::debug!(error = %e, "shared ledger poll failed");
                    }
                    Ok(Ok(())) => s.up.store(true, Ordering::Relaxed),
                }
                // Reported before the write-back, which can take a while
                // once Redis is back and many units are queued.
                let degraded = s.degraded_total.load(Ordering::Relaxed);
                if degraded != reported {
                    tracing::warn!(
                        degraded_total = degraded,
                        pending_write_back = s.pending(),
                        not_queued = s.dropped_write_backs.load(Ordering::Relaxed),
                        "new units served by hash while the redis store was unavailable (store_degraded)"
                    );
                    reported = degraded;
                }
                s.write_back().await;
            }
        });
        Ok(store)
    }

    fn key(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}:{rest}", self.opts.key_prefix)
    }

    fn ledger_key(&self) -> String {
        self.key(format_args!("ledger"))
    }

    /// The Redis key of `key` in experiment `id`, the experiment's name
    /// and the key's reset generation: the current one, except for a new
    /// unit assigned under a pre-reset `epoch` within [`RESET_SETTLE`] of
    /// this replica taking in the reset: that request began before the
    /// reset, and writes to the generation the reset dropped, never into
    /// the new one.
    fn unit_redis_key(
        &self,
        id: ExperimentId,
        key: UnitKey,
        epoch: Option<Epoch>,
    ) -> Option<(String, String, u64)> {
        let l = self.shared.ledger.lock().expect("ledger lock");
        let x = l.by_id(id)?;
        let mut reset = x.current().reset;
        let began_before = epoch
            .and_then(|e| x.epochs.iter().find(|r| r.epoch == e))
            .map(|r| r.reset)
            .filter(|&r| r < reset);
        if let Some(r) = began_before {
            let seen = self
                .resets_seen
                .lock()
                .expect("resets lock")
                .get(&id)
                .copied();
            if seen.is_some_and(|t| t.elapsed() < RESET_SETTLE) {
                reset = r;
            }
        }
        let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        Some((
            self.key(format_args!("u:{}:{reset}:{hex}", x.name)),
            x.name.clone(),
            reset,
        ))
    }

    /// A copy of the ledger as last read from Redis.
    pub fn ledger(&self) -> Ledger {
        self.shared.ledger.lock().expect("ledger lock").clone()
    }

    /// The ledger's version (its length in Redis) as last read.
    pub fn ledger_version(&self) -> u64 {
        self.shared.ledger_events.load(Ordering::Relaxed)
    }

    /// Changes whenever the local copy of the ledger advances.
    pub fn watch_ledger(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The cached assignments of experiment `id`.
    pub fn table(&self, id: ExperimentId) -> Arc<Table> {
        self.shared.table(id)
    }

    /// Caches `a` (read from or written to a key of reset generation
    /// `reset`) unless a reset has moved the experiment past that
    /// generation; returns what is cached, or `a` itself. The check and
    /// the insert hold the ledger lock, and a reset clears the cache only
    /// after it has changed the ledger, so an assignment of a dropped
    /// generation is never left in the cache.
    fn cache(
        &self,
        id: ExperimentId,
        reset: u64,
        key: UnitKey,
        a: Assignment,
    ) -> (Assignment, bool) {
        let l = self.shared.ledger.lock().expect("ledger lock");
        if l.by_id(id).map(|x| x.current().reset) != Some(reset) {
            return (a, true);
        }
        self.table(id).insert_first(key, a)
    }

    /// The shared store's health, for `/metrics`.
    pub fn health(&self) -> StoreHealth {
        StoreHealth {
            up: self.up.load(Ordering::Relaxed),
            pending: self.pending() as u64,
            writebacks_stored: self.writebacks_stored.load(Ordering::Relaxed),
            writebacks_lost: self.writebacks_lost.load(Ordering::Relaxed),
        }
    }

    /// Reads the ledger entries appended since the last read and applies
    /// them (a reset clears that experiment's cache).
    pub async fn refresh_ledger(&self) -> Result<(), StoreError> {
        let _one = self.ledger_io.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<(), StoreError> {
        let have = self.ledger_version();
        let len: u64 = self
            .conn
            .query(redis::cmd("LLEN").arg(self.ledger_key()))
            .await
            .map_err(redis_err)?;
        if len <= have {
            return Ok(());
        }
        let items: Vec<String> = self
            .conn
            .query(
                redis::cmd("LRANGE")
                    .arg(self.ledger_key())
                    .arg(have)
                    .arg(len - 1),
            )
            .await
            .map_err(redis_err)?;
        for item in items {
            let ev: LedgerEvent = serde_json::from_str(&item).map_err(|e| StoreError::Corrupt {
                path: self.ledger_key().into(),
                what: format!("ledger entry {}: {e}", self.ledger_version()),
            })?;
            // A reset while serving (not in the ledger read at start-up):
            // noted before the ledger changes, so whoever sees the new
            // generation also sees that it is fresh.
            if let (LedgerEvent::Epoch { experiment, record }, true) = (&ev, have > 0) {
                let id = self
                    .shared
                    .ledger
                    .lock()
                    .expect("ledger lock")
                    .get(experiment)
                    .map(|x| x.id);
                if let (Some(id), true) = (id, record.dropped_assignments) {
                    self.resets_seen
                        .lock()
                        .expect("resets lock")
                        .insert(id, Instant::now());
                }
            }
            self.shared.apply_ledger(&ev)?;
        }
        self.version.send_replace(self.ledger_version());
        Ok(())
    }

    /// Re-reads the ledger and the unit counts, for planning a change; the
    /// version returned is what [`RedisStore::append_ledger_at`] expects.
    pub async fn fresh_ledger(&self) -> Result<(Ledger, u64), StoreError> {
        let _one = self.ledger_io.lock().await;
        self.refresh_locked().await?;
        let ledger = self.ledger();
        let mut counts = HashMap::new();
        for x in &ledger.experiments {
            let reset = x.current().reset;
            for (vid, v) in x.variants.iter().enumerate() {
                let key = self.key(format_args!("n:{}:{reset}:{v}", x.name));
                let n: Option<u64> = self
                    .conn
                    .query(redis::cmd("GET").arg(key))
                    .await
                    .map_err(redis_err)?;
                counts.insert((x.id, vid as VariantId), n.unwrap_or(0));
            }
        }
        *self.counts.lock().expect("counts lock") = counts;
        Ok((ledger, self.ledger_version()))
    }

    /// Appends `events` if the shared ledger is still at `version`;
    /// [`StoreError::LedgerMoved`] if another replica appended first.
    pub async fn append_ledger_at(
        &self,
        events: Vec<LedgerEvent>,
        version: u64,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let _one = self.ledger_io.lock().await;
        self.refresh_locked().await?;
        if self.ledger_version() != version {
            return Err(StoreError::LedgerMoved);
        }
        // Check the events apply before they are shared.
        let mut trial = self.ledger();
        for ev in &events {
            trial.apply(ev)?;
        }
        let mut args = vec![version.to_string()];
        for ev in &events {
            args.push(serde_json::to_string(ev).expect("a ledger event serializes"));
        }
        let got: i64 = self
            .conn
            .script(&self.append, &self.ledger_key(), &args)
            .await
            .map_err(redis_err)?;
        if got < 0 {
            return Err(StoreError::LedgerMoved);
        }
        self.refresh_locked().await
    }

    /// Appends `events` at whatever version the ledger has (events that
    /// apply to any ledger: an admin pause).
    pub async fn append_ledger(&self, events: Vec<LedgerEvent>) -> Result<(), StoreError> {
        for _ in 0..10 {
            self.refresh_ledger().await?;
            match self
                .append_ledger_at(events.clone(), self.ledger_version())
                .await
            {
                Err(StoreError::LedgerMoved) => continue,
                r => return r,
            }
        }
        Err(StoreError::LedgerMoved)
    }

    fn skipping(&self) -> bool {
        (self.born.elapsed().as_millis() as u64) < self.down_until.load(Ordering::Relaxed)
    }

    fn failed(&self, why: &str) {
        self.up.store(false, Ordering::Relaxed);
        let b = (self.backoff_ms.load(Ordering::Relaxed) * 2).clamp(50, 2000);
        self.backoff_ms.store(b, Ordering::Relaxed);
        self.down_until.store(
            self.born.elapsed().as_millis() as u64 + b,
            Ordering::Relaxed,
        );
        tracing::warn!(error = why, backoff_ms = b, "redis store unavailable");
    }

    fn succeeded(&self) {
        self.backoff_ms.store(0, Ordering::Relaxed);
        if !self.up.load(Ordering::Relaxed) {
            self.up.store(true, Ordering::Relaxed);
        }
    }

    /// One request-path call, bounded by `store.timeout` and skipped while
    /// Redis is backing off.
    async fn bounded<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        if self.skipping() {
            return Err(StoreError::Unavailable("redis is backing off".into()));
        }
        match tokio::time::timeout(self.opts.timeout, self.conn.query(cmd)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                Err(redis_err(e))
            }
            Err(_) => {
                self.failed("timed out");
                Err(StoreError::Unavailable(format!(
                    "redis did not answer within {:?}",
                    self.opts.timeout
                )))
            }
        }
    }

    fn parse(&self, id: ExperimentId, v: &str) -> Option<Assignment> {
        let mut it = v.splitn(3, ' ');
        let epoch: u32 = it.next()?.parse().ok()?;
        let first_seen: u32 = it.next()?.parse().ok()?;
        let name = it.next()?;
        let variant = self
            .shared
            .ledger
            .lock()
            .expect("ledger lock")
            .by_id(id)?
            .variant_id(name)?;
        Some(Assignment {
            variant,
            epoch: Epoch(epoch),
            first_seen,
        })
    }

    /// [`RedisStore::parse`], re-reading the ledger once if the variant is
    /// one this replica has not heard of yet.
    async fn adopt(&self, id: ExperimentId, v: &str) -> Result<Assignment, StoreError> {
        if let Some(a) = self.parse(id, v) {
            return Ok(a);
        }
        let _ = self.refresh_ledger().await;
        self.parse(id, v).ok_or_else(|| StoreError::Corrupt {
            path: self.ledger_key().into(),
            what: format!("stored assignment {v:?} names no variant of the ledger"),
        })
    }

    /// The stored assignment of a unit this replica has not cached, if any.
    /// Errors are the caller's to degrade.
    pub async fn lookup(
        &self,
        id: ExperimentId,
        key: UnitKey,
    ) -> Result<Option<Assignment>, StoreError> {
        let Some((rkey, _, reset)) = self.unit_redis_key(id, key, None) else {
            return Ok(None);
        };
        let got: Option<String> = self.bounded(redis::cmd("GET").arg(&rkey)).await?;
        match got {
            None => Ok(None),
            Some(v) => {
                let a = self.adopt(id, &v).await?;
                Ok(Some(self.cache(id, reset, key, a).0))
            }
        }
    }

    /// First writer wins: stores `variant` at `epoch` unless the unit is
    /// stored, and returns what is stored.
    pub async fn assign(
        &self,
        id: ExperimentId,
        key: UnitKey,
        variant: VariantId,
        epoch: Epoch,
    ) -> Result<Assigned, StoreError> {
        let (rkey, name, reset) =
            self.unit_redis_key(id, key, Some(epoch))
                .ok_or(StoreError::Stale {
                    experiment: id,
                    got: epoch.0,
                    current: 0,
                })?;
        let mine = Assignment {
            variant,
            epoch,
            first_seen: unix_now(),
        };
        let vname = self
            .shared
            .ledger
            .lock()
            .expect("ledger lock")
            .by_id(id)
            .and_then(|x| x.variants.get(usize::from(variant)).cloned())
            .unwrap_or_default();
        let value = format!("{} {} {vname}", mine.epoch.0, mine.first_seen);
        let r: Result<Option<String>, _> = self
            .bounded(
                redis::cmd("SET")
                    .arg(&rkey)
                    .arg(&value)
                    .arg("NX")
                    .arg("GET"),
            )
            .await;
        match r {
            Ok(None) => {
                self.count_unit(&name, reset, &vname);
                if self.opts.wait_replicas > 0 {
                    let acked: Result<i64, _> = self
                        .bounded(
                            redis::cmd("WAIT")
                                .arg(self.opts.wait_replicas)
                                // Its own timeout a little inside ours, so
                                // it answers with the count it got.
                                .arg((self.opts.timeout.as_millis() as u64 * 4 / 5).max(1)),
                        )
                        .await;
                    match acked {
                        Ok(n) if n >= i64::from(self.opts.wait_replicas) => {}
                        other => {
                            let why = format!(
                                "WAIT {}: {}",
                                self.opts.wait_replicas,
                                match other {
                                    Ok(n) => format!("only {n} replicas acknowledged"),
                                    Err(e) => e.to_string(),
                                }
                            );
                            if !self.opts.serve_by_hash {
                                return Err(StoreError::Unavailable(why));
                            }
                            tracing::warn!(error = %why, "assignment not yet on enough replicas");
                        }
                    }
                }
                let (a, created) = self.cache(id, reset, key, mine);
                Ok(Assigned {
                    assignment: a,
                    created,
                    degraded: false,
                })
            }
            Ok(Some(theirs)) => {
                let a = self.adopt(id, &theirs).await?;
                let (a, _) = self.cache(id, reset, key, a);
                Ok(Assigned {
                    assignment: a,
                    created: false,
                    degraded: false,
                })
            }
            Err(e) if self.opts.serve_by_hash => {
                self.degraded_total.fetch_add(1, Ordering::Relaxed);
                let mut pending = self.pending.lock().expect("pending lock");
                if pending.len() < MAX_PENDING {
                    pending.entry(rkey).or_insert((value, id, key, reset));
                } else {
                    // A very long outage: the unit is still served by hash
                    // (the same answer each time under this epoch), and
                    // stored by its first request after Redis returns.
                    self.dropped_write_backs.fetch_add(1, Ordering::Relaxed);
                }
                drop(pending);
                tracing::debug!(error = %e, "serving by hash");
                Ok(Assigned {
                    assignment: mine,
                    created: true,
                    degraded: true,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Adds a stored unit to its variant's counter, off the request path,
    /// on the control plane's runtime. Retried while Redis is away (the
    /// unit's `SET` may have landed just before it went): a unit stored and
    /// not counted would let `plan` count its variant low. An `INCR` that
    /// ran but whose answer was lost is counted twice: high is the safe
    /// side.
    fn count_unit(&self, experiment: &str, reset: u64, variant: &str) {
        let counter = self.key(format_args!("n:{experiment}:{reset}:{variant}"));
        let conn = self.conn.clone();
        let counting = self.counting.clone();
        // Past this many in flight (a counter's node down while the
        // units' are up), an increment is tried once, not retried.
        let retry = counting.n.fetch_add(1, Ordering::SeqCst) < COUNT_RETRY_TASKS;
        self.control.spawn(async move {
            let since = Instant::now();
            loop {
                let r: RedisResult<Value> = conn.query(redis::cmd("INCR").arg(&counter)).await;
                let Err(e) = r else { break };
                // Only a connection that failed may succeed later; a
                // refusal (an ACL without INCR, a wrong type) never will.
                let passing = e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_cluster_error();
                if !(retry && passing) || since.elapsed() >= COUNT_RETRY_FOR {
                    if counting.lost.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                        tracing::warn!(counter = %counter, error = %e, lost_so_far = counting.lost.load(Ordering::Relaxed), "a unit counter could not be incremented; `plan` may count its variant low");
                    }
                    break;
                }
                tokio::time::sleep(LEDGER_POLL).await;
            }
            counting.done();
        });
    }

    /// [`RedisStore::count_unit`] for a written-back `value` (`epoch
    /// first_seen variant`).
    fn count_written_back(&self, id: ExperimentId, reset: u64, value: &str) {
        let name = {
            let l = self.shared.ledger.lock().expect("ledger lock");
            l.by_id(id).map(|x| x.name.clone())
        };
        if let (Some(name), Some(variant)) = (name, value.splitn(3, ' ').nth(2)) {
            self.count_unit(&name, reset, variant);
        }
    }

    /// Waits (at most `timeout`) for the unit counters' `INCR`s in flight.
    /// Write-backs stop first (one in progress ends after its current
    /// unit), so none starts an increment after this returns.
    pub async fn settle(&self, timeout: Duration) {
        self.counting.closing.store(true, Ordering::SeqCst);
        let wait = async {
            loop {
                let idle = self.counting.idle.notified();
                if self.counting.n.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(
                in_flight = self.counting.n.load(Ordering::SeqCst),
                "shutdown: unit counter increments still unanswered by Redis; `plan` may count a variant's units low"
            );
        }
    }

    /// Writes queued degraded assignments back (`SET NX`); a unit another
    /// replica stored meanwhile keeps that value, which is logged and cached.
    async fn write_back(&self) {
        // In flight like an increment, so `settle` waits for the pass (and
        // the increments it starts) at shutdown.
        if self.counting.closing.load(Ordering::SeqCst) {
            return;
        }
        self.counting.n.fetch_add(1, Ordering::SeqCst);
        self.write_back_pass().await;
        self.counting.done();
    }

    async fn write_back_pass(&self) {
        let batch: Vec<_> = {
            let p = self.pending.lock().expect("pending lock");
            if p.is_empty() {
                return;
            }
            p.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (rkey, (value, id, key, reset)) in batch {
            if self.counting.closing.load(Ordering::SeqCst) {
                return;
            }
            let r: RedisResult<Option<String>> = self
                .conn
                .query(
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(&value)
                        .arg("NX")
                        .arg("GET"),
                )
                .await;
            match r {
                Err(_) => return,
                Ok(theirs) => {
                    self.pending.lock().expect("pending lock").remove(&rkey);
                    match theirs {
                        None => {
                            self.writebacks_stored.fetch_add(1, Ordering::Relaxed);
                            // Stored by this write: counted like any first write.
                            self.count_written_back(id, reset, &value);
                            if let Some(a) = self.parse(id, &value) {
                                self.cache(id, reset, key, a);
                            }
                        }
                        // Stored already: by this replica (a write that
                        // timed out after Redis ran it) or by another one.
                        // Lost only if the unit now holds another variant
                        // or epoch than it was served.
                        Some(theirs) if same_assignment(&theirs, &value) => {
                            self.writebacks_stored.fetch_add(1, Ordering::Relaxed);
                            if theirs == value {
                                // Most likely this replica's own write, which
                                // Redis ran but whose answer was lost: never
                                // counted. (Another replica's identical write
                                // in the same second would count twice; `plan`
                                // errs safe on a high count, not a low one.)
                                self.count_written_back(id, reset, &value);
                            }
                            if let Some(a) = self.parse(id, &theirs) {
                                self.cache(id, reset, key, a);
                            }
                        }
                        Some(theirs) => {
                            self.writebacks_lost.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                key = %rkey,
                                served = %value,
                                stored = %theirs,
                                "a unit served degraded (by hash) was stored by another replica first; it is served the stored assignment from now on"
                            );
                            if let Some(a) = self.parse(id, &theirs) {
                                self.cache(id, reset, key, a);
                            }
                        }
                    }
                }
            }
        }
        self.succeeded();
    }

    /// Degraded assignments not yet written back.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }

    /// Whether the shared ledger is empty (nothing applied to it yet).
    pub async fn ledger_is_empty(&self) -> Result<bool, StoreError> {
        let (l, _) = self.fresh_ledger().await?;
        Ok(l.experiments.is_empty() && l.history.is_empty())
    }

    /// Writes one assignment as `cohort store migrate` does: `SET NX` of
    /// the embedded store's record; returns whether it was new.
    pub async fn import(
        &self,
        experiment: &str,
        reset: u64,
        key: UnitKey,
        a: Assignment,
        variant: &str,
    ) -> Result<Imported, StoreError> {
        let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let rkey = self.key(format_args!("u:{experiment}:{reset}:{hex}"));
        let value = format!("{} {} {variant}", a.epoch.0, a.first_seen);
        let had: Option<String> = self
            .conn
            .query(
                redis::cmd("SET")
                    .arg(&rkey)
                    .arg(&value)
                    .arg("NX")
                    .arg("GET"),
            )
            .await
            .map_err(redis_err)?;
        if let Some(had) = had {
            // Idempotent: the same record is already there (an earlier
            // run). first_seen may differ only if another writer won.
            return Ok(if same_assignment(&had, &value) {
                Imported::AlreadyThere
            } else {
                Imported::Differs(had)
            });
        }
        {
            let counter = self.key(format_args!("n:{experiment}:{reset}:{variant}"));
            let _: i64 = self
                .conn
                .query(redis::cmd("INCR").arg(counter))
                .await
                .map_err(redis_err)?;
        }
        Ok(Imported::Written)
    }
}

/// Whether two stored values give the same variant under the same epoch
/// (their first-seen times may differ).
fn same_assignment(a: &str, b: &str) -> bool {
    a.split(' ').next() == b.split(' ').next() && a.splitn(3, ' ').nth(2) == b.splitn(3, ' ').nth(2)
}

/// The shared store's health at one moment (`cohort_store_*` metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreHealth {
    /// The last Redis call succeeded.
    pub up: bool,
    /// Degraded assignments waiting to be written back.
    pub pending: u64,
    /// Write-backs after which the unit holds what this replica served.
    pub writebacks_stored: u64,
    /// Write-backs that found another variant or epoch stored first.
    pub writebacks_lost: u64,
}

/// What importing one assignment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// It was not in Redis and now is.
    Written,
    /// The same variant and epoch were already stored.
    AlreadyThere,
    /// Redis holds another assignment for the unit (kept: first writer wins).
    Differs(String),
}

impl UnitCounts for RedisStore {
    fn units(&self, experiment: ExperimentId, variant: VariantId) -> u64 {
        let shared = self
            .counts
            .lock()
            .expect("counts lock")
            .get(&(experiment, variant))
            .copied()
            .unwrap_or(0);
        shared.max(self.table(experiment).units(variant))
    }
}

/// `url` with any password replaced by `***`, for error messages.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

async fn connect(opts: &RedisOptions) -> RedisResult<Conn> {
    let infos = opts
        .urls
        .iter()
        .map(|u| {
            let mut info = u.as_str().into_connection_info()?;
            if let Some(p) = &opts.password {
                let r = info.redis_settings().clone().set_password(p);
                info = info.set_redis_settings(r);
            }
            Ok(info)
        })
        .collect::<RedisResult<Vec<_>>>()?;
    let certs = || redis::TlsCertificates {
        client_tls: None,
        root_cert: opts.tls_ca.clone(),
    };
    if opts.cluster {
        let mut b = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2))
            .retries(2);
        if opts.tls_ca.is_some() {
            b = b.certs(certs());
        }
        let client = b.build()?;
        return Ok(Conn::Cluster(client.get_async_connection().await?));
    }
    let info = infos.into_iter().next().expect("validated: one url");
    let client = if opts.tls_ca.is_some() {
        Client::build_with_tls(info, certs())?
    } else {
        Client::open(info)?
    };
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    Ok(Conn::Single(
        ConnectionManager::new_with_config(client, cfg).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn error_messages_never_carry_the_password() {
        assert_eq!(
            without_password("redis://cohort:s3cret@r:6379/0"),
            "redis://cohort:***@r:6379/0"
        );
        assert_eq!(without_password("rediss://r:6380"), "rediss://r:6380");
        assert_eq!(without_password("redis://user@r:1"), "redis://user@r:1");
    }
}
