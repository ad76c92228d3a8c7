//! Configuration: YAML text -> `raw` serde structs -> validated [`Config`].
//!
//! Unknown keys are found first, over the YAML itself (`schema`, with a
//! did-you-mean), then serde reads the rest and `validate` collects every
//! semantic problem, so all of a file's errors are reported at once, each
//! with the file, line, column and YAML path of the offending value. Loading
//! does no network I/O and reads only the file and the files it names
//! (overrides, admin token, log-unit key, through `files::Files`), so
//! `cohort check`, `cohort plan` and a reload share exactly this code.
//!
//! A leaf: it depends on no assignment code (what both speak is in
//! [`crate::terms`]). The applied config's recorded form and version hash
//! are [`record`]; how a config is planned and applied is `crate::reload`.

pub(crate) mod files;
pub(crate) mod positions;
pub(crate) mod raw;
pub mod record;
mod schema;
mod syntax;
mod upstream_tls;
mod validate;

#[cfg(test)]
mod docs_test;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::terms::Weight;
pub use crate::terms::{Bucketing, Durability};
pub use positions::Position;
pub(crate) use positions::PositionIndex;
pub(crate) use upstream_tls::upstream_tls_client;

/// The config cohort runs when none is given (`cohort demo`).
pub(crate) const EMBEDDED_DEMO: &str = include_str!("../../config/example.yaml");

/// A validated config: every rule of `config/reference.yaml` holds, every
/// name it refers to exists, and the files it names have been read.
/// Built only by [`load_file`] and [`parse`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens (`listen`); `--listen` overrides it without
    /// changing the config.
    pub listen: SocketAddr,
    /// The assignment store's directory (`store.path`), resolved against the
    /// config's folder.
    pub store_path: PathBuf,
    /// When the embedded journal answers a first exposure
    /// (`store.durability`).
    pub durability: Durability,
    /// The shared store (`store.kind: redis`); none runs the embedded
    /// journal in `store_path`.
    pub redis: Option<RedisStoreConfig>,
    /// Where the access log goes and how it shows units.
    pub access_log: AccessLogConfig,
    /// The backends, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The upstream (a key of `upstreams`) for paths no experiment routes;
    /// none answers them 404.
    pub default_upstream: Option<String>,
    /// The experiments, in file order.
    pub experiments: Vec<ExperimentConfig>,
    /// Process settings: threads, client timeouts, shutdown.
    pub runtime: RuntimeConfig,
    /// The admin API; none runs without the `admin` block.
    pub admin: Option<AdminConfig>,
    /// TLS on the proxy listener; none serves plaintext (HTTP/1.1 and h2c).
    pub tls: Option<TlsConfig>,
    /// Where each value sat in the file, for errors found after validation.
    pub(crate) positions: Arc<PositionIndex>,
    /// The file this came from (`<embedded>` for the demo).
    pub(crate) source: PathBuf,
    /// Other files the config reads (overrides, token, log-unit key): a
    /// change to any of them reloads, like a change to the config itself.
    pub(crate) watched: Vec<PathBuf>,
}

/// The `access_log` block.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    /// Where the lines go (`path`; `-` or no block is stdout).
    pub target: LogTarget,
    /// How the `unit` field shows the unit id (`log_unit`).
    pub unit: LogUnit,
    /// Built-in rotation of the file (`rotate`); none leaves rotation to an
    /// outside tool (logrotate with SIGUSR1).
    pub rotate: Option<RotateConfig>,
    /// Compress closed files with gzip (`compress: gzip`; needs `rotate`).
    pub gzip: bool,
}

/// `access_log.rotate`: close the file and start a new one when either
/// bound is reached (at least one is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotateConfig {
    /// The most bytes a file holds (a single longer line gets a file of its own).
    pub max_bytes: Option<u64>,
    /// The longest a file collects lines, from its first line.
    pub max_age: Option<Duration>,
}

/// The `store` block with `kind: redis`: where the shared store is and
/// how requests behave when it is slow or down.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// `redis://` or `rediss://` URLs: one (`url`), or the seed nodes of a
    /// cluster (`urls`).
    pub urls: Vec<String>,
    /// Redis Cluster (`cluster: true`, or several `urls`).
    pub cluster: bool,
    /// Every key starts with `<key_prefix>:`.
    pub key_prefix: String,
    /// The most one Redis call on the request path may take.
    pub timeout: Duration,
    /// What a request gets when Redis fails or is slower than `timeout`.
    pub on_store_error: OnStoreError,
    /// `WAIT` for this many replicas before a new unit's response (0: no
    /// `WAIT`).
    pub wait_replicas: u32,
    /// The password from `password_file` (wins over the URL's); never
    /// logged nor part of the config version.
    pub password: Option<String>,
    /// The PEM bundle of `tls_ca_file`, for `rediss://` with a private CA.
    pub tls_ca: Option<Vec<u8>>,
    /// `password_file` and `tls_ca_file` as written (what the record keeps).
    pub(crate) files: (Option<String>, Option<String>),
}

// The password stays out of Debug output, so no log line can carry it.
impl std::fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("on_store_error", &self.on_store_error)
            .field("wait_replicas", &self.wait_replicas)
            .field("password_file", &self.files.0)
            .field("tls_ca_file", &self.files.1)
            .finish()
    }
}

/// `url` with any password in it replaced by `***`, for logs and records.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `store.on_store_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Assign by the contract hash under the current epoch, flag the line
    /// `store_degraded`, write the assignment back when Redis returns.
    ServeByHash,
    /// Answer 503 (stamped); nothing is assigned.
    Reject,
}

/// Where access log lines are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// The process's standard output.
    Stdout,
    /// This file, appended to (parent folders created; SIGUSR1 reopens it).
    File(PathBuf),
}

/// How the access log shows unit ids (`log_unit`).
#[derive(Clone)]
pub enum LogUnit {
    /// The header value as received.
    Raw,
    /// HMAC-SHA-256 of the unit under `key`; the key itself is never logged
    /// nor part of the config version (its digest is).
    Hashed {
        /// The HMAC key, from `log_unit_key_file` or `COHORT_LOG_UNIT_KEY`.
        key: Vec<u8>,
        /// Hex of the first 6 bytes of SHA-256(key): what the config version
        /// records, so a new key is a change.
        key_digest: String,
    },
}

/// One entry of `upstreams`. Routing only: no field here changes who gets
/// which variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Its key in `upstreams`.
    pub name: String,
    /// The `url`'s `host:port` (port 80, or 443 for `https://`, when the
    /// URL names none).
    pub authority: String,
    /// How long the TCP connect may take before the client gets 502.
    pub connect_timeout: Duration,
    /// How long the response head may take after the request was sent
    /// before the client gets 504 (the body's streaming is not limited).
    pub timeout: Duration,
    /// Idle keep-alive connections kept open to it (per endpoint).
    pub max_idle_per_host: usize,
    /// The endpoints after the first (`authority`), when `endpoints:`
    /// lists several; requests are spread over all of them.
    pub extra_endpoints: Vec<String>,
    /// How long a whole exchange may take, response body included; a
    /// response head not in by then is answered 504. `None`: no limit.
    pub total_timeout: Option<Duration>,
    /// The active health check of each endpoint, if configured.
    pub health: Option<HealthCheck>,
    /// Consecutive connect failures or 5xx answers after which an endpoint
    /// is ejected for `eject_for` (0: never). Applies only to an upstream
    /// with several endpoints: a lone endpoint is never ejected passively.
    pub eject_after: u32,
    /// How long a passively ejected endpoint gets no requests.
    pub eject_for: Duration,
    /// What the upstream speaks (`protocol`): HTTP/1.1 or HTTP/2.
    pub protocol: UpstreamProtocol,
    /// TLS to the upstream: set when its endpoints are `https://` URLs.
    pub tls: Option<UpstreamTls>,
}

/// An upstream's `protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// `http/1.1` (the default).
    #[default]
    Http1,
    /// `h2`: HTTP/2, with prior knowledge over `http://` (h2c) and by ALPN
    /// over `https://`; requests share few multiplexed connections.
    H2,
}

impl UpstreamProtocol {
    /// The name the config and the record use.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http/1.1",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// TLS to an `https://` upstream: the PEM files' contents (read and checked
/// when the config is validated), the name the certificate must carry,
/// and the rustls client built from them then.
#[derive(Clone)]
pub struct UpstreamTls {
    /// CA certificates to verify the upstream against (`ca_file`); none:
    /// the system's trust store.
    pub ca: Option<Vec<u8>>,
    /// A client certificate chain and its key (`cert_file`, `key_file`),
    /// for upstreams that require one.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// The name sent as SNI and verified in the certificate
    /// (`server_name`); none: each endpoint URL's host.
    pub server_name: Option<String>,
    /// `ca_file`, `cert_file` and `key_file` as written (what the record
    /// keeps).
    pub files: [Option<String>; 3],
    /// The rustls client of the above, without ALPN, built when the config
    /// was validated ([`upstream_tls_client`]); the upstream built from the
    /// config copies it, so doing so cannot fail on a reload.
    pub client: Arc<rustls::ClientConfig>,
}

/// Equal when the config says the same: the client is built from it.
impl PartialEq for UpstreamTls {
    fn eq(&self, o: &UpstreamTls) -> bool {
        (&self.ca, &self.client_cert, &self.server_name, &self.files)
            == (&o.ca, &o.client_cert, &o.server_name, &o.files)
    }
}

impl Eq for UpstreamTls {}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key's bytes stay out of debug output.
        f.debug_struct("UpstreamTls")
            .field("ca_file", &self.files[0])
            .field("cert_file", &self.files[1])
            .field("key_file", &self.files[2])
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// An upstream's `health:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Requested with `GET`; a 2xx or 3xx answer is a pass.
    pub path: String,
    /// Time between two checks of an endpoint.
    pub interval: Duration,
    /// How long one check may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive failed checks that take an endpoint out.
    pub unhealthy_after: u32,
    /// Consecutive passed checks that bring it back.
    pub healthy_after: u32,
}

/// `eject_after`'s default.
pub(crate) const DEFAULT_EJECT_AFTER: u32 = 5;
/// `eject_for`'s default.
pub(crate) const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(10);

impl UpstreamConfig {
    /// Every endpoint's `host:port`, the first being `authority`.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.authority.as_str())
            .chain(self.extra_endpoints.iter().map(String::as_str))
    }
}

/// One entry of `experiments`: which paths it serves, how units are read,
/// the rule that assigns them and the routing of each variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentConfig {
    /// Its name, unique in the file: the key of its ledger in the store and
    /// the `x-cohort-experiment` stamp.
    pub name: String,
    /// The request paths it serves (at least one).
    pub routes: Vec<Route>,
    /// The request header carrying the unit id, lower-case.
    pub unit_header: String,
    /// The bucket hash's salt (the experiment's name unless set).
    pub salt: String,
    /// Its variants in order: the order lays out their bucket ranges, and
    /// the first is the control served whenever a unit is not assigned.
    pub variants: Vec<VariantConfig>,
    /// What a request without a valid unit id gets.
    pub on_missing_unit: MissingUnitPolicy,
    /// The explicit reset counter: raising it drops every stored assignment
    /// and starts a new epoch; it never goes down.
    pub reset: u64,
    /// Kill switch from the file (an admin pause is kept in the store).
    pub paused: bool,
    /// Share of units that enter the experiment, in basis points (10000 = all).
    pub coverage: Weight,
    /// Forced units: unit id -> index of the variant it is forced into.
    pub overrides: BTreeMap<String, usize>,
    /// How new units are drawn: cohort's SHA-256 contract (the default) or
    /// a vendor's algorithm. Part of the rule: a change is a new epoch.
    pub bucketing: Bucketing,
}

/// One variant of an experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantConfig {
    /// Its name, unique in the experiment: the `x-cohort-variant` stamp.
    pub name: String,
    /// The upstream (a key of [`Config::upstreams`]) its requests go to.
    pub upstream: String,
    /// Its share of new units, in basis points; an experiment's weights sum
    /// to exactly 100 %, and 0 closes it to new units.
    pub weight: Weight,
    /// Instant rollback of one arm: its units are served the first variant.
    pub disabled: bool,
    /// The upstream that serves it while every endpoint of its own is down
    /// (never implied: another variant's upstream would mix cohorts).
    pub fallback: Option<String>,
}

/// What to do with a request whose unit header is missing or invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingUnitPolicy {
    /// Serve the first variant, stamped epoch 0, never stored.
    Control,
    /// 400 with a JSON body.
    Reject,
}

/// An exact path, or a prefix (written with a trailing `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The path must equal this (the query string is not part of it).
    Exact(String),
    /// The path must start with this (the route without its `*`); the
    /// longest matching prefix wins, and any exact route beats it.
    Prefix(String),
}

/// TLS termination on the proxy listener (`tls`). The paths are resolved
/// against the config's folder; the files are read at start-up and re-read
/// whenever their content changes ([`crate::proxy::tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates: when set, every client must present a
    /// certificate they signed (mTLS), or the handshake fails.
    pub client_ca_file: Option<PathBuf>,
}

/// The admin API's own listener. Never started without a token.
#[derive(Clone)]
pub struct AdminConfig {
    /// The admin listener's address (plain HTTP: keep it private).
    pub listen: SocketAddr,
    /// The bearer token every `/admin/*` call must present, from
    /// `token_file` or `COHORT_ADMIN_TOKEN`; never empty, never logged.
    pub token: String,
    /// Part of the config version, so a rotated token is a change.
    pub token_digest: String,
    /// `GET /metrics` needs the token too (default: it does not).
    pub metrics_auth: bool,
}

// Secrets stay out of Debug output, so no log line can carry them.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .field("metrics_auth", &self.metrics_auth)
            .finish()
    }
}

impl std::fmt::Debug for LogUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogUnit::Raw => f.write_str("Raw"),
            LogUnit::Hashed { .. } => f.write_str("Hashed { key: <redacted> }"),
        }
    }
}

/// The `runtime` block: process settings, applied at start-up only (a
/// reload that changes one warns that it needs a restart).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Tokio worker threads; none means one per usable CPU
    /// ([`RuntimeConfig::workers`]).
    pub worker_threads: Option<usize>,
    /// Serve plain HTTP/1.1 requests on the lean path (`proxy::lean`);
    /// `false` sends every connection through hyper.
    pub http1_fast_path: bool,
    /// Lean path: how long a keep-alive connection may idle between requests.
    pub client_idle_timeout: Duration,
    /// Both paths: how long a request head may take from its first byte.
    pub client_header_timeout: Duration,
    /// Lean path: how long a buffered request body may take after its head.
    pub client_body_timeout: Duration,
    /// Both paths: the most bytes a request head may take (431 past it).
    pub max_request_head: usize,
    /// Both paths: the most header fields a request head may carry (431
    /// past it).
    pub max_header_count: usize,
    /// Both paths: the largest request body accepted (413 past it); none
    /// means no limit.
    pub max_body_bytes: Option<u64>,
    /// The most client connections served at once; past it new ones wait
    /// in the kernel's backlog. None means no limit of cohort's own.
    pub max_connections: Option<usize>,
    /// On SIGTERM or SIGINT, how long in-flight requests may take to finish
    /// before their connections are cut.
    pub shutdown_timeout: Duration,
}

/// `runtime.max_header_count` when not set: 100 (hyper's default too).
pub const DEFAULT_MAX_HEADER_COUNT: usize = 100;

/// `runtime.max_request_head` when not set: 64 KiB.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 64 * 1024;

impl RuntimeConfig {
    /// The worker threads to run: as set, else one per CPU this process may
    /// run on (affinity and cgroup quota included).
    pub fn workers(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

impl Config {
    /// A short hash of the parsed, canonical config: comment-only edits and
    /// key re-ordering keep the version ([`record::ConfigRecord::version`]).
    pub fn version(&self) -> String {
        record::ConfigRecord::of(self).version()
    }

    pub(crate) fn experiment(&self, name: &str) -> Option<&ExperimentConfig> {
        self.experiments.iter().find(|e| e.name == name)
    }

    /// An error about the value at `path`, placed where that value (or its
    /// nearest written ancestor) sits in the file.
    pub(crate) fn error_at(
        &self,
        path: &str,
        message: String,
        hint: Option<String>,
    ) -> ConfigError {
        ConfigError {
            position: self.positions.find(path),
            path: path.to_string(),
            message,
            hint,
        }
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// The YAML path of the offending value
    /// (`experiments[0].variants[1].weight`); empty for a problem with the
    /// file as a whole (unreadable, not YAML).
    pub path: String,
    /// Where that value sits in the file (0:0 when the file could not be
    /// read).
    #[serde(skip)]
    pub position: Position,
    /// What is wrong, in a sentence.
    pub message: String,
    /// How to fix it, when there is a likely fix (a did-you-mean, the
    /// expected form).
    pub hint: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Line 0: no place in the file (it could not be read, or it is empty).
        if self.position.line == 0 {
            f.write_str(" ")?;
        } else {
            write!(f, "{}:{}: ", self.position.line, self.position.column)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The config file, as it was named.
    pub file: PathBuf,
    /// Every problem found, never empty (validation lists them in file
    /// order, each once).
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {n} error{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {}:{e}", self.file.display())?;
        }
        Ok(())
    }
}

/// Reads and validates the file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError {
            path: String::new(),
            position: Position { line: 0, column: 0 },
            message: format!("cannot read the file: {e}"),
            hint: None,
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    parse(&text, path, &base, &Env::process())
}

/// Parses `text` as if it were the file `file`; relative paths resolve
/// against `base`, and the files it names are read from disk.
pub fn parse(text: &str, file: &Path, base: &Path, env: &Env) -> Result<Config, ConfigErrors> {
    parse_with(text, file, base, env, &files::Disk)
}

/// [`parse`], reading the files the config names from `files`.
pub(crate) fn parse_with(
    text: &str,
    file: &Path,
    base: &Path,
    env: &Env,
    files: &dyn files::Files,
) -> Result<Config, ConfigErrors> {
    let sources = validate::Sources { base, env, files };
    validate::parse_and_validate(text, file, &sources).map_err(|errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    })
}

/// What loading may read from outside the file, injectable for tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `COHORT_LOG_UNIT_KEY`: the HMAC key for `log_unit: hashed` when the
    /// file names no `log_unit_key_file`.
    pub log_unit_key: Option<String>,
    /// `COHORT_ADMIN_TOKEN` (an empty one counts as unset): the admin token
    /// when the file names no `token_file`.
    pub admin_token: Option<String>,
}

impl Env {
    /// Both, read from this process's environment.
    pub fn process() -> Env {
        Env {
            log_unit_key: std::env::var("COHORT_LOG_UNIT_KEY").ok(),
            admin_token: std::env::var("COHORT_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        }
    }
}
