//! The applied config in the form requests read it: built off the request
//! path at start-up and on every reload, then swapped in whole (ArcSwap), so
//! a request sees one config from start to end and never takes a lock.
//!
//! This is also where a validated [`Config`] is turned into assignment's own
//! inputs (`rule`, `ExperimentSpec`): config and assignment never import
//! each other, and this module sits above both.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::assign::epoch::{Epoch, Rule, RuleVariant};
use crate::assign::ledger::Ledger;
use crate::assign::store::Store;
use crate::assign::{Assigner, ExperimentSpec};
use crate::config::{Config, ExperimentConfig, LogUnit, MissingUnitPolicy, Route};
use crate::intern::intern;
use crate::proxy::upstream::Upstream;

/// One applied config, ready for requests: routes, assigners, upstream
/// pools and pre-encoded stamp values. Immutable once built; a reload builds
/// the next one.
pub struct Snapshot {
    pub(crate) config: Arc<Config>,
    pub(crate) version: &'static str,
    /// Exact routes. A config has a handful, and a scan of a short Vec is
    /// cheaper than hashing the path with SipHash on every request.
    exact: Vec<(String, usize)>,
    /// Longest prefix first.
    prefixes: Vec<(String, usize)>,
    /// The config's experiments, in file order (routes index into it).
    pub experiments: Vec<ExperimentRoute>,
    pub(crate) upstreams: HashMap<String, Arc<Upstream>>,
    pub(crate) default_upstream: Option<Arc<Upstream>>,
    pub(crate) log_unit: LogUnit,
}

/// One experiment as requests use it: its stamps, how to read the unit,
/// its assigner and where each variant's requests go.
pub struct ExperimentRoute {
    pub(crate) name: &'static str,
    pub(crate) name_header: HeaderValue,
    pub(crate) unit_header: HeaderName,
    pub(crate) on_missing_unit: MissingUnitPolicy,
    /// Decides each unit's variant under this config's epoch.
    pub assigner: Assigner,
    pub(crate) variants: Vec<VariantRoute>,
    /// `x-cohort-epoch` values for epochs 0 ..= current, built once.
    epoch_headers: Vec<HeaderValue>,
}

impl ExperimentRoute {
    pub(crate) fn epoch_header(&self, e: Epoch) -> HeaderValue {
        self.epoch_headers
            .get(e.0 as usize)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from(e.0))
    }
}

pub(crate) struct VariantRoute {
    pub(crate) name: &'static str,
    pub(crate) header: HeaderValue,
    pub(crate) upstream: Arc<Upstream>,
    /// Serves the variant while its own upstream has no endpoint up.
    pub(crate) fallback: Option<Arc<Upstream>>,
}

/// Where a request path goes.
pub(crate) enum Target<'a> {
    Experiment(&'a ExperimentRoute),
    Default(&'a Arc<Upstream>),
    NotFound,
}

impl Snapshot {
    /// Builds the snapshot of `config`; `ledger` must already hold the epochs
    /// it applies. Upstream pools of `previous` are reused when unchanged.
    pub(crate) fn build(
        config: Config,
        ledger: &Ledger,
        store: &Store,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let mut upstreams = HashMap::new();
        for (name, u) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|p| p.config == *u)
                .cloned();
            upstreams.insert(
                name.clone(),
                reused.unwrap_or_else(|| Upstream::start(u, config.runtime.workers())),
            );
        }
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        let mut experiments = Vec::new();
        for (i, x) in config.experiments.iter().enumerate() {
            let l = ledger
                .get(&x.name)
                .expect("ledger holds every applied experiment");
            for r in &x.routes {
                match r {
                    Route::Exact(p) => {
                        exact.push((p.clone(), i));
                    }
                    Route::Prefix(p) => prefixes.push((p.clone(), i)),
                }
            }
            experiments.push(ExperimentRoute {
                epoch_headers: (0..=l.current().epoch.0).map(HeaderValue::from).collect(),
                name: intern(&x.name),
                name_header: HeaderValue::from_str(&x.name).expect("validated name"),
                unit_header: HeaderName::from_bytes(x.unit_header.as_bytes())
                    .expect("validated header"),
                on_missing_unit: x.on_missing_unit,
                assigner: Assigner::new(spec(x), l, store.table(l.id)),
                variants: x
                    .variants
                    .iter()
                    .map(|v| VariantRoute {
                        name: intern(&v.name),
                        header: HeaderValue::from_str(&v.name).expect("validated name"),
                        upstream: upstreams[&v.upstream].clone(),
                        fallback: v.fallback.as_ref().map(|f| upstreams[f].clone()),
                    })
                    .collect(),
            });
        }
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let version = intern(&config.version());
        Snapshot {
            version,
            exact,
            prefixes,
            experiments,
            default_upstream: config
                .default_upstream
                .as_ref()
                .map(|d| upstreams[d].clone()),
            upstreams,
            log_unit: config.access_log.unit.clone(),
            config: Arc::new(config),
        }
    }

    /// Whether a request on `path` may reach an upstream the lean path
    /// cannot speak to (`protocol: h2`, or `https://`): any variant's
    /// upstream or fallback of the experiment routing it, or the default
    /// upstream. The lean path then hands the connection to hyper's front
    /// end before it reads the request, as for any request it does not
    /// take. The request must then be routed with this same snapshot: a
    /// reload in between could otherwise route it to an upstream the lean
    /// path cannot speak to.
    pub(crate) fn needs_hyper(&self, path: &str) -> bool {
        if !crate::proxy::upstream::any_hyper_only() {
            return false;
        }
        match self.route(path) {
            Target::Experiment(x) => x
                .variants
                .iter()
                .any(|v| !v.upstream.lean() || v.fallback.as_ref().is_some_and(|f| !f.lean())),
            Target::Default(up) => !up.lean(),
            Target::NotFound => false,
        }
    }

    pub(crate) fn route(&self, path: &str) -> Target<'_> {
        let idx = self
            .exact
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, i)| *i)
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| path.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            });
        match (idx, &self.default_upstream) {
            (Some(i), _) => Target::Experiment(&self.experiments[i]),
            (None, Some(d)) => Target::Default(d),
            (None, None) => Target::NotFound,
        }
    }
}

/// The part of an experiment that decides new units' variants: what the
/// epoch ledger records and compares.
pub(crate) fn rule(x: &ExperimentConfig) -> Rule {
    Rule {
        salt: x.salt.clone(),
        unit_header: x.unit_header.clone(),
        coverage: x.coverage,
        variants: x
            .variants
            .iter()
            .map(|v| RuleVariant {
                name: v.name.clone(),
                weight: v.weight,
            })
            .collect(),
        bucketing: x.bucketing.clone(),
    }
}

/// Everything the assigner needs of `x`.
fn spec(x: &ExperimentConfig) -> ExperimentSpec {
    ExperimentSpec {
        name: x.name.clone(),
        rule: rule(x),
        disabled: x.variants.iter().map(|v| v.disabled).collect(),
        overrides: x
            .overrides
            .iter()
            .map(|(u, v)| (u.as_bytes().to_vec(), *v))
            .collect(),
        paused: x.paused,
    }
}
