//! Prometheus metrics: what `GET /metrics` on the admin listener serves,
//! and the live sample-ratio-mismatch (SRM) alarm.
//!
//! Counting happens once per request, in [`crate::proxy::core::finish`],
//! from the finished access record: the same facts the access log line
//! carries, so the two never disagree. The request path takes no lock and
//! allocates nothing: every counter is an atomic in a slot made off the
//! request path, when a snapshot is applied ([`Metrics::track`], called by
//! `State` before the swap), and found by a lock-free [`ArcSwap`] load and a
//! scan of the (few) experiments and variants by name. Slots are kept for
//! every experiment, variant and epoch ever applied in this process, so
//! counters never go backwards across a reload; label values are only
//! configured names, reasons, status classes and epoch numbers (no unit
//! ids, no paths), so the series are bounded by the configs applied.
//!
//! At scrape time the atomics are read and rendered through
//! `prometheus-client`'s collector and text encoder (Prometheus text format
//! 0.0.4); the gauges that are not counted on the request path (stored
//! assignments, config version, access-log lines, the shared store's
//! health) come from the caller. Degraded requests (`store_degraded`) are
//! counted from the access record like everything else, so the counter
//! equals the number of flagged log lines.
//!
//! The SRM alarm compares, per experiment and current epoch, the first
//! exposures per variant with the configured weights ([`super::srm`]); a
//! thread re-evaluates it every second (and each scrape does too), sets
//! `cohort_srm_alarm` when p < [`SRM_ALARM_P`] with at least
//! [`SRM_MIN_EXPOSURES`] first exposures, and logs a warning at most once a
//! minute per experiment. Only `new` assignments are first exposures, so
//! forced, paused, uncovered and unit-less traffic never enter the test;
//! weight-0 and currently disabled variants are left out.
//! Names, labels and the meaning of each series: docs/metrics.md.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::access_log::AccessRecord;
use super::srm::srm_p_value;
use crate::snapshot::Snapshot;

/// `cohort_requests_total` (the encoder appends `_total` to counters).
pub(crate) const REQUESTS: &str = "cohort_requests";
/// `cohort_request_duration_seconds`, a histogram.
pub(crate) const REQUEST_DURATION: &str = "cohort_request_duration_seconds";
/// `cohort_upstream_duration_seconds`, a histogram.
pub(crate) const UPSTREAM_DURATION: &str = "cohort_upstream_duration_seconds";
/// `cohort_first_exposures_total`.
pub(crate) const FIRST_EXPOSURES: &str = "cohort_first_exposures";
/// `cohort_assignments_stored`, a gauge.
pub(crate) const ASSIGNMENTS_STORED: &str = "cohort_assignments_stored";
/// `cohort_srm_p_value`, a gauge.
pub(crate) const SRM_P_VALUE: &str = "cohort_srm_p_value";
/// `cohort_srm_alarm`, a 0/1 gauge.
pub(crate) const SRM_ALARM: &str = "cohort_srm_alarm";
/// `cohort_reloads_total`.
pub(crate) const RELOADS: &str = "cohort_reloads";
/// `cohort_access_log_lines_total`.
pub(crate) const ACCESS_LOG_LINES: &str = "cohort_access_log_lines";
/// `cohort_config_info` (the encoder appends `_info`).
pub(crate) const CONFIG: &str = "cohort_config";
/// `cohort_store_degraded_total`: requests served by hash because the
/// shared store could not be reached (`store_degraded: true` lines).
pub(crate) const STORE_DEGRADED: &str = "cohort_store_degraded";
/// `cohort_store_up`, a 0/1 gauge (shared store only).
pub(crate) const STORE_UP: &str = "cohort_store_up";
/// `cohort_store_writebacks_total` (shared store only).
pub(crate) const STORE_WRITEBACKS: &str = "cohort_store_writebacks";
/// `cohort_store_writeback_pending`, a gauge (shared store only).
pub(crate) const STORE_PENDING: &str = "cohort_store_writeback_pending";
/// `cohort_store_sync_duration_seconds`, a histogram (embedded store only).
pub(crate) const STORE_SYNC: &str = "cohort_store_sync_duration_seconds";

/// The alarm fires below this p-value...
pub(crate) const SRM_ALARM_P: f64 = 0.001;
/// ...once the epoch has at least this many first exposures.
pub(crate) const SRM_MIN_EXPOSURES: u64 = 1000;
/// At most one SRM warning per experiment this often.
const SRM_WARN_EVERY: Duration = Duration::from_secs(60);

/// The `reason` label: the access log's reasons, and `none` for a request
/// that was not assigned (outside any experiment, or refused).
const REASONS: [&str; 9] = [
    "stored",
    "new",
    "no_unit",
    "forced",
    "paused",
    "not_covered",
    "disabled",
    "orphaned",
    "none",
];
const NO_REASON: usize = REASONS.len() - 1;
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
/// Histogram bucket upper bounds, in seconds (+Inf is implied).
static BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The variant label of a refused request on an experiment route.
const NO_VARIANT: &str = "none";

/// The request and upstream time histograms.
type Histogram = crate::latency::Histogram<{ BOUNDS.len() }>;

/// One (experiment, variant)'s request counters, in [`SHARDS`] copies.
struct VariantMeter {
    name: Arc<str>,
    shards: Box<[Shard]>,
}

/// How many copies of each variant's counters there are. Every thread
/// counts into one of its own ([`my_shard`]), so workers on different
/// cores do not write the same cache line on every request; `/metrics`
/// sums the copies.
const SHARDS: usize = 16;

/// One thread's copy of a variant's counters, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    /// By reason, then status class.
    requests: [[AtomicU64; CLASSES.len()]; REASONS.len()],
    duration: Histogram,
    upstream: Histogram,
    /// Requests served by hash while the shared store was unreachable.
    degraded: AtomicU64,
}

/// Hands each thread that counts its shard index.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// This thread's shard index.
fn my_shard() -> usize {
    MY_SHARD.with(|s| *s)
}

impl VariantMeter {
    fn new(name: &str) -> Arc<VariantMeter> {
        Arc::new(VariantMeter {
            name: Arc::from(name),
            shards: (0..SHARDS)
                .map(|_| Shard {
                    requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
                    duration: Histogram::new(&BOUNDS),
                    upstream: Histogram::new(&BOUNDS),
                    degraded: AtomicU64::new(0),
                })
                .collect(),
        })
    }

    /// A counter summed over the shards.
    fn sum(&self, pick: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| pick(s).load(Ordering::Relaxed))
            .sum()
    }
}

/// One experiment's epoch: its variants and weights, first exposures per
/// variant, and the SRM verdict.
struct EpochMeter {
    epoch: u32,
    variants: Vec<&'static str>,
    /// Basis points, in variant order.
    weights: Vec<u32>,
    first: Vec<AtomicU64>,
    /// The last p-value (f64 bits).
    p_value: AtomicU64,
    alarm: AtomicBool,
}

impl EpochMeter {
    fn counts(&self) -> Vec<u64> {
        self.first
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// One experiment's slots. Rebuilt (sharing its counters) on every
/// [`Metrics::track`].
struct ExperimentMeter {
    name: &'static str,
    /// Every variant ever configured, then the `none` slot (unless a
    /// variant is itself called `none`).
    variants: Vec<Arc<VariantMeter>>,
    /// Every epoch applied in this process.
    epochs: Vec<Arc<EpochMeter>>,
    /// The applied config's epoch, when the experiment is in it.
    current: Option<usize>,
    /// Which of the current epoch's variants are disabled now: a new unit
    /// whose bucket falls there is served the first variant unstored, so
    /// a disabled variant has no first exposures and leaves the SRM test.
    disabled: Vec<bool>,
}

impl ExperimentMeter {
    fn variant(&self, name: Option<&str>) -> &VariantMeter {
        let name = name.unwrap_or(NO_VARIANT);
        self.variants
            .iter()
            .find(|v| &*v.name == name)
            .or_else(|| self.variants.iter().find(|v| &*v.name == NO_VARIANT))
            .expect("the none slot exists")
    }
}

/// The process's metrics: one per access log, shared by every thread.
pub(crate) struct Metrics {
    experiments: ArcSwap<Vec<Arc<ExperimentMeter>>>,
    /// Requests outside any experiment (default upstream, no route,
    /// unparsable heads): `experiment=""`, `variant=""`.
    outside: Arc<VariantMeter>,
    reloads_applied: AtomicU64,
    reloads_rejected: AtomicU64,
    /// One [`Metrics::track`] at a time; when each experiment last warned.
    changes: Mutex<HashMap<&'static str, Instant>>,
}

impl Metrics {
    /// New, empty metrics, and the thread that re-evaluates the SRM alarm
    /// every second while they live.
    pub(crate) fn new() -> Arc<Metrics> {
        let m = Arc::new(Metrics {
            experiments: ArcSwap::from_pointee(Vec::new()),
            outside: VariantMeter::new(""),
            reloads_applied: AtomicU64::new(0),
            reloads_rejected: AtomicU64::new(0),
            changes: Mutex::new(HashMap::new()),
        });
        let weak: Weak<Metrics> = Arc::downgrade(&m);
        // Without the thread the alarm is still evaluated at each scrape.
        let _ = std::thread::Builder::new()
            .name("cohort-srm".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                match weak.upgrade() {
                    Some(m) => m.evaluate_srm(),
                    None => return,
                }
            });
        m
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Instant>> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the slots `snap`'s requests count into (off the request path,
    /// before it is swapped in). Counters of earlier experiments, variants
    /// and epochs are kept.
    pub(crate) fn track(&self, snap: &Snapshot) {
        let _one_at_a_time = self.lock_changes();
        let old = self.experiments.load_full();
        let mut next = Vec::with_capacity(old.len() + snap.experiments.len());
        for x in &snap.experiments {
            let prev = old.iter().find(|m| m.name == x.name);
            let cfg = snap.config.experiment(x.name);
            let mut variants: Vec<Arc<VariantMeter>> =
                prev.map(|p| p.variants.clone()).unwrap_or_default();
            let mut add = |name: &str| {
                if !variants.iter().any(|v| &*v.name == name) {
                    variants.push(VariantMeter::new(name));
                }
            };
            for v in &x.variants {
                add(v.name);
            }
            add(NO_VARIANT);
            let mut epochs = prev.map(|p| p.epochs.clone()).unwrap_or_default();
            let epoch = x.assigner.epoch.0;
            let current = match epochs.iter().position(|e| e.epoch == epoch) {
                Some(i) => i,
                None => {
                    let weights = cfg
                        .map(|c| c.variants.iter().map(|v| v.weight.0).collect())
                        .unwrap_or_else(|| vec![0; x.variants.len()]);
                    epochs.push(Arc::new(EpochMeter {
                        epoch,
                        variants: x.variants.iter().map(|v| v.name).collect(),
                        weights,
                        first: x.variants.iter().map(|_| AtomicU64::new(0)).collect(),
                        p_value: AtomicU64::new(1f64.to_bits()),
                        alarm: AtomicBool::new(false),
                    }));
                    epochs.len() - 1
                }
            };
            let disabled = epochs[current]
                .variants
                .iter()
                .map(|n| {
                    cfg.and_then(|c| c.variants.iter().find(|v| v.name == **n))
                        .is_some_and(|v| v.disabled)
                })
                .collect();
            next.push(Arc::new(ExperimentMeter {
                name: x.name,
                variants,
                epochs,
                current: Some(current),
                disabled,
            }));
        }
        for m in old.iter() {
            if !next.iter().any(|n| n.name == m.name) {
                next.push(Arc::new(ExperimentMeter {
                    name: m.name,
                    variants: m.variants.clone(),
                    epochs: m.epochs.clone(),
                    current: None,
                    disabled: Vec::new(),
                }));
            }
        }
        self.experiments.store(Arc::new(next));
    }

    /// Counts one finished request: the request path's only metrics call.
    /// Atomics only: no lock, no allocation.
    pub(crate) fn count(&self, rec: &AccessRecord) {
        let all = self.experiments.load();
        let x = rec
            .experiment
            .as_ref()
            .and_then(|name| all.iter().find(|m| m.name == *name));
        let v = match x {
            // The proxy's own lack of descriptors (503 `local_resource`) is
            // not the variant's failure: counted outside any experiment, so
            // no variant's 5xx rate (and alert) rises with it.
            Some(x) if rec.error != Some(crate::error::Cause::LocalResource) => {
                x.variant(rec.variant)
            }
            _ => &self.outside,
        };
        let reason = rec
            .reason
            .and_then(|r| REASONS.iter().position(|k| *k == r))
            .unwrap_or(NO_REASON);
        let class = match rec.status / 100 {
            2 => 0,
            3 => 1,
            4 => 2,
            _ => 3,
        };
        let v = &v.shards[my_shard()];
        v.requests[reason][class].fetch_add(1, Ordering::Relaxed);
        if rec.store_degraded {
            v.degraded.fetch_add(1, Ordering::Relaxed);
        }
        v.duration.observe(rec.total_time);
        if let Some(t) = rec.upstream_time {
            v.upstream.observe(t);
        }
        if !rec.first_exposure {
            return;
        }
        let (Some(x), Some(variant)) = (x, rec.variant) else {
            return;
        };
        if let Some(e) = x.epochs.iter().rev().find(|e| e.epoch == rec.epoch) {
            if let Some(i) = e.variants.iter().position(|n| &**n == variant) {
                e.first[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a reload's outcome: applied, or rejected (invalid, refused by
    /// the plan, or the store failed). An unchanged config counts as neither.
    pub(crate) fn count_reload(&self, applied: bool) {
        let c = if applied {
            &self.reloads_applied
        } else {
            &self.reloads_rejected
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Re-runs the SRM test of every applied experiment's current epoch,
    /// sets the gauges, and warns (at most once a minute per experiment)
    /// where the alarm is on.
    pub(crate) fn evaluate_srm(&self) {
        let all = self.experiments.load_full();
        for x in all.iter() {
            let Some(e) = x.current.map(|i| &x.epochs[i]) else {
                continue;
            };
            let counts = e.counts();
            let weights: Vec<u32> = e
                .weights
                .iter()
                .zip(&x.disabled)
                .map(|(w, off)| if *off { 0 } else { *w })
                .collect();
            let n: u64 = counts
                .iter()
                .zip(&weights)
                .filter(|(_, w)| **w > 0)
                .map(|(c, _)| c)
                .sum();
            let p = srm_p_value(&counts, &weights);
            e.p_value.store(p.to_bits(), Ordering::Relaxed);
            let alarm = p < SRM_ALARM_P && n >= SRM_MIN_EXPOSURES;
            e.alarm.store(alarm, Ordering::Relaxed);
            if !alarm {
                continue;
            }
            let mut warned = self.lock_changes();
            let now = Instant::now();
            if warned
                .get(&x.name)
                .is_some_and(|t| now.duration_since(*t) < SRM_WARN_EVERY)
            {
                continue;
            }
            warned.insert(x.name, now);
            drop(warned);
            let observed: Vec<String> = e
                .variants
                .iter()
                .zip(&counts)
                .zip(&e.weights)
                .map(|((v, c), w)| format!("{v}={c} (weight {}%)", f64::from(*w) / 100.0))
                .collect();
            tracing::warn!(
                experiment = %x.name,
                epoch = e.epoch,
                p_value = p,
                first_exposures = n,
                "SAMPLE RATIO MISMATCH: first exposures per variant [{}] do not match the configured weights (chi-square p = {p:.3e}). At the proxy this means assignment or logging is broken, or unit ids are being gamed (clients picking ids that land in one variant); do not trust this epoch's comparison until it is explained",
                observed.join(", ")
            );
        }
    }

    /// The text exposition (Prometheus format 0.0.4) of every metric.
    pub(crate) fn render(self: &Arc<Metrics>, process: ProcessFacts) -> String {
        self.evaluate_srm();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            metrics: self.clone(),
            process,
        }));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a scrape reports that is not counted on the request path.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProcessFacts {
    pub config_version: String,
    /// Stored assignments per experiment.
    pub stored: Vec<(String, u64)>,
    pub log_written: u64,
    pub log_dropped: u64,
    /// The shared store's health; `None` for the embedded store.
    pub store: Option<StoreFacts>,
    /// The embedded journal's sync times (sum in seconds, count,
    /// per-bucket counts); `None` for the shared store.
    pub syncs: Option<crate::terms::HistogramRead>,
}

/// The shared (Redis) store's health at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StoreFacts {
    /// Its last call succeeded.
    pub up: bool,
    /// Degraded assignments waiting to be written back.
    pub pending: u64,
    /// Write-backs after which the unit holds what this replica served.
    pub writebacks_stored: u64,
    /// Write-backs that found another variant or epoch stored first.
    pub writebacks_lost: u64,
}

/// One scrape: the metrics and the caller's facts, rendered through
/// `prometheus-client`'s collector interface.
struct Scrape {
    metrics: Arc<Metrics>,
    process: ProcessFacts,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(impl EncodeLabelSet, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        m.encode_family(labels)?
            .encode_counter::<NoLabelSet, u64, u64>(v, None)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(impl EncodeLabelSet, impl EncodeGaugeValue)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let all = self.metrics.experiments.load_full();
        let outside = ("", &self.metrics.outside);
        let slots: Vec<(&str, &VariantMeter)> = std::iter::once((outside.0, &**outside.1))
            .chain(
                all.iter()
                    .flat_map(|x| x.variants.iter().map(move |v| (&*x.name, &**v))),
            )
            .collect();

        let mut requests = Vec::new();
        for (x, v) in &slots {
            for (r, reason) in REASONS.iter().enumerate() {
                for (c, class) in CLASSES.iter().enumerate() {
                    let n = v.sum(|s| &s.requests[r][c]);
                    if n > 0 {
                        let labels = [
                            ("experiment", *x),
                            ("variant", &*v.name),
                            ("reason", *reason),
                            ("code_class", *class),
                        ];
                        requests.push((labels, n));
                    }
                }
            }
        }
        counter(
            &mut enc,
            REQUESTS,
            "Requests answered, by experiment, variant, assignment reason and status class",
            &requests,
        )?;

        for (name, help, pick) in [
            (
                REQUEST_DURATION,
                "Time from the request's arrival to the last response byte, in seconds",
                (|s: &Shard| &s.duration) as fn(&Shard) -> &Histogram,
            ),
            (
                UPSTREAM_DURATION,
                "Time from sending the request upstream to its response head (or failure), in seconds",
                |s: &Shard| &s.upstream,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (x, v) in &slots {
                let (sum, count, buckets) = Histogram::read(v.shards.iter().map(pick));
                if count == 0 {
                    continue;
                }
                let labels = [("experiment", *x), ("variant", &*v.name)];
                m.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }

        let mut first = Vec::new();
        let mut p_values = Vec::new();
        let mut alarms = Vec::new();
        for x in all.iter() {
            for e in &x.epochs {
                let epoch = e.epoch.to_string();
                for (v, n) in e.variants.iter().zip(e.counts()) {
                    first.push((
                        [
                            ("experiment", x.name.to_string()),
                            ("variant", v.to_string()),
                            ("epoch", epoch.clone()),
                        ],
                        n,
                    ));
                }
            }
            if let Some(e) = x.current.map(|i| &x.epochs[i]) {
                let labels = [
                    ("experiment", x.name.to_string()),
                    ("epoch", e.epoch.to_string()),
                ];
                let p = f64::from_bits(e.p_value.load(Ordering::Relaxed));
                let alarm = u64::from(e.alarm.load(Ordering::Relaxed));
                p_values.push((labels.clone(), p));
                alarms.push((labels, alarm));
            }
        }
        counter(
            &mut enc,
            FIRST_EXPOSURES,
            "Units assigned for the first time (stored), by experiment, variant and epoch",
            &first,
        )?;

        let stored: Vec<_> = self
            .process
            .stored
            .iter()
            .map(|(x, n)| ([("experiment", x.as_str())], *n))
            .collect();
        gauge(
            &mut enc,
            ASSIGNMENTS_STORED,
            "Assignments held in the store, by experiment",
            &stored,
        )?;
        gauge(
            &mut enc,
            SRM_P_VALUE,
            "Chi-square p-value of the current epoch's first exposures per variant against the weights",
            &p_values,
        )?;
        gauge(
            &mut enc,
            SRM_ALARM,
            "1 when the current epoch shows a sample ratio mismatch (p < 0.001 with at least 1000 first exposures)",
            &alarms,
        )?;

        let m = &self.metrics;
        counter(
            &mut enc,
            RELOADS,
            "Config reloads, by result",
            &[
                (
                    [("result", "applied")],
                    m.reloads_applied.load(Ordering::Relaxed),
                ),
                (
                    [("result", "rejected")],
                    m.reloads_rejected.load(Ordering::Relaxed),
                ),
            ],
        )?;
        counter(
            &mut enc,
            ACCESS_LOG_LINES,
            "Access log lines, written or dropped (the writer could not keep up or write)",
            &[
                ([("result", "written")], self.process.log_written),
                ([("result", "dropped")], self.process.log_dropped),
            ],
        )?;
        // Every experiment, zeros included, so `increase()` sees the first one.
        let degraded: Vec<_> = all
            .iter()
            .map(|x| {
                let n = x
                    .variants
                    .iter()
                    .map(|v| v.sum(|s| &s.degraded))
                    .sum::<u64>();
                ([("experiment", x.name)], n)
            })
            .collect();
        counter(
            &mut enc,
            STORE_DEGRADED,
            "Requests served by the contract hash because the shared store could not be reached (store_degraded in the access log)",
            &degraded,
        )?;
        if let Some(st) = &self.process.store {
            enc.encode_descriptor(
                STORE_UP,
                "1 while the shared store answers (its last call succeeded), else 0",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&u64::from(st.up))?;
            counter(
                &mut enc,
                STORE_WRITEBACKS,
                "Degraded assignments written back to the shared store: stored (the unit holds what was served) or lost_race (another writer stored another variant or epoch first)",
                &[
                    ([("result", "stored")], st.writebacks_stored),
                    ([("result", "lost_race")], st.writebacks_lost),
                ],
            )?;
            enc.encode_descriptor(
                STORE_PENDING,
                "Degraded assignments waiting to be written back to the shared store",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&st.pending)?;
        }
        if let Some((sum, count, buckets)) = &self.process.syncs {
            enc.encode_descriptor(
                STORE_SYNC,
                "Time each fdatasync of the embedded store's journal took, in seconds (a new unit waits for one under store.durability: sync)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?;
        }
        let mut info = enc.encode_descriptor(
            CONFIG,
            "The applied config's version",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[("version", self.process.config_version.as_str())])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_are_summed_over_the_shards() {
        let m = Metrics::new();
        let mut rec = crate::observe::access_log::sample_record();
        rec.experiment = None;
        rec.status = 200;
        rec.reason = None;
        let threads = SHARDS + 5;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| (0..100).for_each(|_| m.count(&rec)));
            }
        });
        let text = m.render(ProcessFacts::default());
        let total = threads * 100;
        for line in [
            format!("cohort_requests_total{{experiment=\"\",variant=\"\",reason=\"none\",code_class=\"2xx\"}} {total}"),
            format!("cohort_request_duration_seconds_count{{experiment=\"\",variant=\"\"}} {total}"),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn an_empty_scrape_is_valid_and_names_every_metric() {
        let m = Metrics::new();
        let text = m.render(ProcessFacts {
            config_version: "abc".into(),
            stored: vec![("ranker".into(), 3)],
            log_written: 5,
            log_dropped: 1,
            store: None,
            syncs: Some((0.003, 2, vec![(0.001, 1), (0.0025, 1), (f64::INFINITY, 0)])),
        });
        for line in [
            "# TYPE cohort_requests_total counter",
            "# TYPE cohort_request_duration_seconds histogram",
            "# TYPE cohort_upstream_duration_seconds histogram",
            "# TYPE cohort_first_exposures_total counter",
            "cohort_assignments_stored{experiment=\"ranker\"} 3",
            "# TYPE cohort_srm_p_value gauge",
            "# TYPE cohort_srm_alarm gauge",
            "cohort_reloads_total{result=\"applied\"} 0",
            "cohort_access_log_lines_total{result=\"written\"} 5",
            "cohort_access_log_lines_total{result=\"dropped\"} 1",
            "cohort_config_info{version=\"abc\"} 1",
            "# TYPE cohort_store_sync_duration_seconds histogram",
            "cohort_store_sync_duration_seconds_bucket{le=\"0.001\"} 1",
            "cohort_store_sync_duration_seconds_bucket{le=\"0.0025\"} 2",
            "cohort_store_sync_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("cohort_store_up"), "{text}");
    }

    #[test]
    fn the_shared_stores_health_is_exported_with_it() {
        let m = Metrics::new();
        let text = m.render(ProcessFacts {
            store: Some(StoreFacts {
                up: false,
                pending: 7,
                writebacks_stored: 3,
                writebacks_lost: 2,
            }),
            ..ProcessFacts::default()
        });
        for line in [
            "# TYPE cohort_store_degraded_total counter",
            "cohort_store_up 0",
            "cohort_store_writebacks_total{result=\"stored\"} 3",
            "cohort_store_writebacks_total{result=\"lost_race\"} 2",
            "cohort_store_writeback_pending 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
