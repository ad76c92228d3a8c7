//! The applied config as cohort records it: a dedicated, versioned serde
//! form, kept apart from the live [`Config`] struct.
//!
//! It serves two purposes, and the live struct's field names are neither:
//! - the **config version** ([`ConfigRecord::version`]): a short SHA-256 of
//!   the record's canonical JSON, overrides listed in full. Comment-only
//!   edits and key re-ordering keep it, and it is recorded with every epoch
//!   and applied config, so its meaning must never drift: the JSON below is
//!   byte for byte what cohort hashed before the record existed (pinned by
//!   tests/golden/journal-v1's versions);
//! - the **on-disk history record** ([`ConfigRecord::to_stored`]): the same
//!   fields, overrides summarized by count and digest (they can list many
//!   thousands of units), tagged `"version": 1`. Records written before the
//!   tag existed have the same shape without it and still read back
//!   ([`ConfigRecord::from_stored`]).
//!
//! [`ConfigRecord::of`] destructures every config struct without `..`: a
//! field added to [`Config`] does not compile until it is given a place here
//! (or explicitly left out of the version).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    AccessLogConfig, AdminConfig, Config, ExperimentConfig, HealthCheck, LogTarget, LogUnit,
    MissingUnitPolicy, OnStoreError, Route, RuntimeConfig, TlsConfig, UpstreamConfig,
    UpstreamProtocol, VariantConfig,
};
use crate::terms::{Bucketing, Durability, Weight};

/// The version of the on-disk form [`ConfigRecord::to_stored`] writes.
pub const RECORD_VERSION: u32 = 1;

/// One applied config. Field order is part of the version hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub(crate) listen: SocketAddr,
    pub(crate) store_path: PathBuf,
    pub(crate) access_log: AccessLogRecord,
    pub(crate) upstreams: BTreeMap<String, UpstreamRecord>,
    pub(crate) default_upstream: Option<String>,
    pub(crate) experiments: Vec<ExperimentRecord>,
    pub(crate) runtime: RuntimeRecord,
    pub(crate) admin: Option<AdminRecord>,
    /// The shared store (`kind: redis`). Absent for the embedded journal, so
    /// an embedded config's JSON (and version) is what it always was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) store: Option<RedisStoreRecord>,
    /// Absent (not null) without a tls block, so configs without one keep
    /// the versions they had before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<TlsRecord>,
    /// Absent when `sync` (the default), so configs without the field keep
    /// their versions.
    #[serde(default, skip_serializing_if = "Durability::is_sync")]
    pub(crate) durability: Durability,
}

/// `tls`: the files' paths only. A rotated certificate is not a new config
/// (the listener reloads it by itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TlsRecord {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_ca_file: Option<PathBuf>,
}

/// `store` with `kind: redis`; URLs with their password redacted, files by
/// path (the password itself is never recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RedisStoreRecord {
    pub(crate) urls: Vec<String>,
    pub(crate) cluster: bool,
    pub(crate) key_prefix: String,
    pub(crate) timeout_ms: u64,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) wait_replicas: u32,
    pub(crate) password_file: Option<String>,
    pub(crate) tls_ca_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccessLogRecord {
    pub(crate) target: LogTargetRecord,
    pub(crate) unit: LogUnitRecord,
    /// Absent without built-in rotation, so configs without it keep the
    /// versions they had before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rotate: Option<RotateRecord>,
    /// `compress: gzip`; absent (not false) without it, as `rotate`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) gzip: bool,
}

/// `access_log.rotate`; the age in whole milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RotateRecord {
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_age_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LogTargetRecord {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum LogUnitRecord {
    Raw,
    /// The key's digest only: the key is never recorded.
    Hashed {
        key_digest: String,
    },
}

/// Durations are whole milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UpstreamRecord {
    pub(crate) name: String,
    pub(crate) authority: String,
    pub(crate) connect_timeout: u64,
    pub(crate) timeout: u64,
    pub(crate) max_idle_per_host: usize,
    /// The fields below are left out when absent or default, so a config
    /// that does not use them records (and hashes to) what it did before
    /// they existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) extra_endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) total_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) health: Option<HealthRecord>,
    #[serde(
        default = "default_eject_after",
        skip_serializing_if = "is_default_eject_after"
    )]
    pub(crate) eject_after: u32,
    #[serde(
        default = "default_eject_for",
        skip_serializing_if = "is_default_eject_for"
    )]
    pub(crate) eject_for: u64,
    /// `h2`; left out for `http/1.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tls: Option<UpstreamTlsRecord>,
}

/// TLS to an `https://` upstream: the files as written and a digest of
/// their contents (a rotated CA or client certificate is a change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UpstreamTlsRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server_name: Option<String>,
    /// SHA-256 of the files' contents, in that order.
    pub(crate) digest: String,
}

/// An upstream's active health check; durations in whole milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HealthRecord {
    pub(crate) path: String,
    pub(crate) interval: u64,
    pub(crate) timeout: u64,
    pub(crate) unhealthy_after: u32,
    pub(crate) healthy_after: u32,
}

fn default_eject_after() -> u32 {
    super::DEFAULT_EJECT_AFTER
}

fn is_default_eject_after(n: &u32) -> bool {
    *n == super::DEFAULT_EJECT_AFTER
}

fn default_eject_for() -> u64 {
    millis(super::DEFAULT_EJECT_FOR)
}

fn is_default_eject_for(n: &u64) -> bool {
    *n == default_eject_for()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExperimentRecord {
    pub(crate) name: String,
    pub(crate) routes: Vec<RouteRecord>,
    pub(crate) unit_header: String,
    pub(crate) salt: String,
    pub(crate) variants: Vec<VariantRecord>,
    pub(crate) on_missing_unit: MissingUnitRecord,
    pub(crate) reset: u64,
    pub(crate) paused: bool,
    pub(crate) coverage: Weight,
    pub(crate) overrides: OverridesRecord,
    /// Left out when default, so a config without `bucketing:` records (and
    /// hashes to) exactly the version it did before schemes existed.
    #[serde(default, skip_serializing_if = "Bucketing::is_cohort")]
    pub(crate) bucketing: Bucketing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RouteRecord {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MissingUnitRecord {
    Control,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VariantRecord {
    pub(crate) name: String,
    pub(crate) upstream: String,
    pub(crate) weight: Weight,
    pub(crate) disabled: bool,
    /// Left out when absent (the version of a config without it is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fallback: Option<String>,
}

/// Forced units: in full for the version hash, summarized on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum OverridesRecord {
    Summary(OverridesSummary),
    /// Unit id -> index of the variant it is forced into.
    Units(BTreeMap<String, usize>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverridesSummary {
    pub(crate) count: usize,
    /// The first 8 bytes of SHA-256 of the overrides' JSON, in hex.
    pub(crate) digest: String,
}

impl OverridesRecord {
    /// The summarized form (already summarized: unchanged).
    pub(crate) fn summary(&self) -> OverridesSummary {
        match self {
            OverridesRecord::Summary(s) => s.clone(),
            OverridesRecord::Units(units) => {
                let json = serde_json::to_string(units).expect("a map of strings serializes");
                let d = Sha256::digest(json.as_bytes());
                OverridesSummary {
                    count: units.len(),
                    digest: hex(&d[..8]),
                }
            }
        }
    }
}

/// Durations are whole milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RuntimeRecord {
    pub(crate) worker_threads: Option<usize>,
    pub(crate) http1_fast_path: bool,
    pub(crate) client_idle_timeout: u64,
    pub(crate) client_header_timeout: u64,
    pub(crate) client_body_timeout: u64,
    /// Bytes. Left out at its default, so a record (and the config version
    /// hashed from it) is the same as before the setting existed.
    #[serde(
        default = "default_max_request_head",
        skip_serializing_if = "is_default_max_request_head"
    )]
    pub(crate) max_request_head: usize,
    pub(crate) shutdown_timeout: u64,
    /// The limits below are left out when unset or at their default, for
    /// the same reason.
    #[serde(
        default = "default_max_header_count",
        skip_serializing_if = "is_default_max_header_count"
    )]
    pub(crate) max_header_count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_body_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections: Option<usize>,
}

fn default_max_header_count() -> usize {
    super::DEFAULT_MAX_HEADER_COUNT
}

fn is_default_max_header_count(n: &usize) -> bool {
    *n == super::DEFAULT_MAX_HEADER_COUNT
}

fn default_max_request_head() -> usize {
    super::DEFAULT_MAX_REQUEST_HEAD
}

fn is_default_max_request_head(n: &usize) -> bool {
    *n == super::DEFAULT_MAX_REQUEST_HEAD
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AdminRecord {
    pub(crate) listen: SocketAddr,
    /// The token's digest only: a rotated token is a new version.
    pub(crate) token_digest: String,
    /// Left out when false (its default), so a record (and the config
    /// version hashed from it) is the same as before the setting existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) metrics_auth: bool,
}

/// The on-disk document: the record with its format version.
#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    #[serde(flatten)]
    config: ConfigRecord,
}

/// Why a stored config record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Written by a newer cohort, in a format this one does not know.
    #[error("config record version {0} is newer than this cohort reads ({RECORD_VERSION})")]
    UnknownVersion(u64),
    /// Not JSON of any record version this cohort reads.
    #[error("unreadable config record: {0}")]
    Malformed(#[from] serde_json::Error),
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl ConfigRecord {
    /// The record of `config`, overrides in full.
    pub fn of(config: &Config) -> ConfigRecord {
        let Config {
            listen,
            store_path,
            durability,
            redis,
            access_log,
            upstreams,
            default_upstream,
            experiments,
            runtime,
            admin,
            tls,
            // Where the config came from, not what it says.
            positions: _,
            source: _,
            watched: _,
        } = config;
        ConfigRecord {
            listen: *listen,
            store_path: store_path.clone(),
            durability: *durability,
            store: redis.as_ref().map(|r| RedisStoreRecord {
                urls: r.urls.iter().map(|u| super::redact_url(u)).collect(),
                cluster: r.cluster,
                key_prefix: r.key_prefix.clone(),
                timeout_ms: r.timeout.as_millis() as u64,
                on_store_error: r.on_store_error,
                wait_replicas: r.wait_replicas,
                password_file: r.files.0.clone(),
                tls_ca_file: r.files.1.clone(),
            }),
            access_log: access_log_record(access_log),
            upstreams: upstreams
                .iter()
                .map(|(k, u)| (k.clone(), upstream_record(u)))
                .collect(),
            default_upstream: default_upstream.clone(),
            experiments: experiments.iter().map(experiment_record).collect(),
            runtime: runtime_record(runtime),
            admin: admin.as_ref().map(|a| {
                let AdminConfig {
                    listen,
                    token: _,
                    token_digest,
                    metrics_auth,
                } = a;
                AdminRecord {
                    listen: *listen,
                    token_digest: token_digest.clone(),
                    metrics_auth: *metrics_auth,
                }
            }),
            tls: tls.as_ref().map(|t| {
                let TlsConfig {
                    cert_file,
                    key_file,
                    client_ca_file,
                } = t;
                TlsRecord {
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                    client_ca_file: client_ca_file.clone(),
                }
            }),
        }
    }

    /// A short hash of the canonical JSON (see the module doc).
    pub fn version(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a config record serializes");
        hex(&Sha256::digest(&canonical)[..6])
    }

    /// The same record with every experiment's overrides summarized.
    pub fn summarized(&self) -> ConfigRecord {
        let mut r = self.clone();
        for x in &mut r.experiments {
            x.overrides = OverridesRecord::Summary(x.overrides.summary());
        }
        r
    }

    /// The on-disk form: summarized, tagged with [`RECORD_VERSION`].
    pub fn to_stored(&self) -> serde_json::Value {
        serde_json::to_value(Stored {
            version: RECORD_VERSION,
            config: self.summarized(),
        })
        .expect("a config record serializes")
    }

    /// Reads a stored record: the current version, or the untagged form
    /// written before records were versioned.
    pub fn from_stored(v: &serde_json::Value) -> Result<ConfigRecord, RecordError> {
        match v.get("version").map(serde_json::Value::as_u64) {
            None => Ok(serde_json::from_value(v.clone())?),
            Some(Some(1)) => Ok(serde_json::from_value::<Stored>(v.clone())?.config),
            Some(n) => Err(RecordError::UnknownVersion(n.unwrap_or(u64::MAX))),
        }
    }
}

fn access_log_record(a: &AccessLogConfig) -> AccessLogRecord {
    let AccessLogConfig {
        target,
        unit,
        rotate,
        gzip,
    } = a;
    AccessLogRecord {
        rotate: rotate.map(|r| RotateRecord {
            max_bytes: r.max_bytes,
            max_age_ms: r.max_age.map(|d| d.as_millis() as u64),
        }),
        gzip: *gzip,
        target: match target {
            LogTarget::Stdout => LogTargetRecord::Stdout,
            LogTarget::File(p) => LogTargetRecord::File(p.clone()),
        },
        unit: match unit {
            LogUnit::Raw => LogUnitRecord::Raw,
            LogUnit::Hashed { key: _, key_digest } => LogUnitRecord::Hashed {
                key_digest: key_digest.clone(),
            },
        },
    }
}

fn upstream_record(u: &UpstreamConfig) -> UpstreamRecord {
    let UpstreamConfig {
        name,
        authority,
        connect_timeout,
        timeout,
        max_idle_per_host,
        extra_endpoints,
        total_timeout,
        health,
        eject_after,
        eject_for,
        protocol,
        tls,
    } = u;
    UpstreamRecord {
        name: name.clone(),
        authority: authority.clone(),
        connect_timeout: millis(*connect_timeout),
        timeout: millis(*timeout),
        max_idle_per_host: *max_idle_per_host,
        extra_endpoints: extra_endpoints.clone(),
        total_timeout: total_timeout.map(millis),
        health: health.as_ref().map(|h| {
            let HealthCheck {
                path,
                interval,
                timeout,
                unhealthy_after,
                healthy_after,
            } = h;
            HealthRecord {
                path: path.clone(),
                interval: millis(*interval),
                timeout: millis(*timeout),
                unhealthy_after: *unhealthy_after,
                healthy_after: *healthy_after,
            }
        }),
        eject_after: *eject_after,
        eject_for: millis(*eject_for),
        protocol: (*protocol != UpstreamProtocol::Http1).then(|| protocol.as_str().to_string()),
        tls: tls.as_ref().map(|t| {
            let mut h = Sha256::new();
            let (cert, key) = t
                .client_cert
                .as_ref()
                .map_or((&[][..], &[][..]), |(c, k)| (c.as_slice(), k.as_slice()));
            for part in [t.ca.as_deref().unwrap_or_default(), cert, key] {
                h.update(part);
                h.update([0xff]);
            }
            let [ca_file, cert_file, key_file] = t.files.clone();
            UpstreamTlsRecord {
                ca_file,
                cert_file,
                key_file,
                server_name: t.server_name.clone(),
                digest: hex(&h.finalize()),
            }
        }),
    }
}

fn experiment_record(x: &ExperimentConfig) -> ExperimentRecord {
    let ExperimentConfig {
        name,
        routes,
        unit_header,
        salt,
        variants,
        on_missing_unit,
        reset,
        paused,
        coverage,
        overrides,
        bucketing,
    } = x;
    ExperimentRecord {
        name: name.clone(),
        routes: routes
            .iter()
            .map(|r| match r {
                Route::Exact(p) => RouteRecord::Exact(p.clone()),
                Route::Prefix(p) => RouteRecord::Prefix(p.clone()),
            })
            .collect(),
        unit_header: unit_header.clone(),
        salt: salt.clone(),
        variants: variants
            .iter()
            .map(|v| {
                let VariantConfig {
                    name,
                    upstream,
                    weight,
                    disabled,
                    fallback,
                } = v;
                VariantRecord {
                    name: name.clone(),
                    upstream: upstream.clone(),
                    weight: *weight,
                    disabled: *disabled,
                    fallback: fallback.clone(),
                }
            })
            .collect(),
        on_missing_unit: match on_missing_unit {
            MissingUnitPolicy::Control => MissingUnitRecord::Control,
            MissingUnitPolicy::Reject => MissingUnitRecord::Reject,
        },
        reset: *reset,
        paused: *paused,
        coverage: *coverage,
        overrides: OverridesRecord::Units(overrides.clone()),
        bucketing: bucketing.clone(),
    }
}

fn runtime_record(r: &RuntimeConfig) -> RuntimeRecord {
    let RuntimeConfig {
        worker_threads,
        http1_fast_path,
        client_idle_timeout,
        client_header_timeout,
        client_body_timeout,
        max_request_head,
        shutdown_timeout,
        max_header_count,
        max_body_bytes,
        max_connections,
    } = r;
    RuntimeRecord {
        worker_threads: *worker_threads,
        http1_fast_path: *http1_fast_path,
        client_idle_timeout: millis(*client_idle_timeout),
        client_header_timeout: millis(*client_header_timeout),
        client_body_timeout: millis(*client_body_timeout),
        max_request_head: *max_request_head,
        shutdown_timeout: millis(*shutdown_timeout),
        max_header_count: *max_header_count,
        max_body_bytes: *max_body_bytes,
        max_connections: *max_connections,
    }
}
