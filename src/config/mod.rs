//! Configuration: YAML text -> [`raw`] serde structs -> validated [`Config`].
//!
//! Unknown keys are found first, over the YAML itself (`schema`, with a
//! did-you-mean), then serde reads the rest and `validate` collects every
//! semantic problem, so all of a file's errors are reported at once, each
//! with the file, line, column and YAML path of the offending value. Loading
//! does no network I/O and reads only the file and the files it names
//! (overrides, admin token, log-unit key), so `cohort check`, `cohort plan`
//! and a reload share exactly this code.

pub mod positions;
pub mod raw;
pub mod reload;
mod schema;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::assign::buckets::Weight;
use crate::assign::epoch::{Rule, RuleVariant};
pub use positions::{Position, PositionIndex};

/// The config cohort runs when none is given (`cohort demo`).
pub const EMBEDDED_DEMO: &str = include_str!("../../config/example.yaml");

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub store_path: PathBuf,
    pub access_log: AccessLogConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub default_upstream: Option<String>,
    pub experiments: Vec<ExperimentConfig>,
    pub runtime: RuntimeConfig,
    pub admin: Option<AdminConfig>,
    /// Where each value sat in the file, for errors found after validation.
    #[serde(skip)]
    pub positions: Arc<PositionIndex>,
    /// The file this came from (`<embedded>` for the demo).
    #[serde(skip)]
    pub source: PathBuf,
    /// Other files the config reads (overrides, token, log-unit key): a
    /// change to any of them reloads, like a change to the config itself.
    #[serde(skip)]
    pub watched: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessLogConfig {
    pub target: LogTarget,
    pub unit: LogUnit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Clone, Serialize)]
pub enum LogUnit {
    Raw,
    /// HMAC-SHA-256 of the unit under `key`; the key itself is never logged
    /// nor part of the config version (its digest is).
    Hashed {
        #[serde(skip)]
        key: Vec<u8>,
        key_digest: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamConfig {
    pub name: String,
    /// `http://host:port`, without a path.
    pub authority: String,
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    pub max_idle_per_host: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExperimentConfig {
    pub name: String,
    pub routes: Vec<Route>,
    pub unit_header: String,
    pub salt: String,
    pub variants: Vec<VariantConfig>,
    pub on_missing_unit: MissingUnitPolicy,
    pub reset: u64,
    /// Kill switch from the file (an admin pause is kept in the store).
    pub paused: bool,
    /// Share of units that enter the experiment, in basis points (10000 = all).
    pub coverage: Weight,
    /// Forced units: unit id -> index of the variant it is forced into.
    pub overrides: BTreeMap<String, usize>,
}

impl ExperimentConfig {
    /// The part of the experiment that decides new units' variants.
    pub fn rule(&self) -> Rule {
        Rule {
            salt: self.salt.clone(),
            unit_header: self.unit_header.clone(),
            coverage: self.coverage,
            variants: self
                .variants
                .iter()
                .map(|v| RuleVariant {
                    name: v.name.clone(),
                    weight: v.weight,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VariantConfig {
    pub name: String,
    pub upstream: String,
    pub weight: Weight,
    /// Instant rollback of one arm: its units are served the first variant.
    pub disabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingUnitPolicy {
    /// Serve the first variant, stamped epoch 0, never stored.
    Control,
    /// 400 with a JSON body.
    Reject,
}

/// An exact path, or a prefix (written with a trailing `*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Route {
    Exact(String),
    Prefix(String),
}

/// The admin API's own listener. Never started without a token.
#[derive(Clone, Serialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    #[serde(skip)]
    pub token: String,
    /// Part of the config version, so a rotated token is a change.
    pub token_digest: String,
}

// Secrets stay out of Debug output, so no log line can carry them.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
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

#[derive(Debug, Clone, Serialize)]
pub struct RuntimeConfig {
    pub worker_threads: Option<usize>,
    /// Serve plain HTTP/1.1 requests on the lean path (`proxy::lean`);
    /// `false` sends every connection through hyper.
    pub http1_fast_path: bool,
    /// Lean path: how long a keep-alive connection may idle between requests.
    #[serde(with = "millis")]
    pub client_idle_timeout: Duration,
    /// Both paths: how long a request head may take from its first byte.
    #[serde(with = "millis")]
    pub client_header_timeout: Duration,
    /// Lean path: how long a buffered request body may take after its head.
    #[serde(with = "millis")]
    pub client_body_timeout: Duration,
    /// Both paths: the most bytes a request head may take (431 past it).
    pub max_request_head: usize,
    #[serde(with = "millis")]
    pub shutdown_timeout: Duration,
}

impl RuntimeConfig {
    /// The worker threads to run: as set, else one per CPU this process may
    /// run on (affinity and cgroup quota included).
    pub fn workers(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

impl Config {
    /// A short hash of the parsed, canonical config: comment-only edits and
    /// key re-ordering keep the version.
    pub fn version(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("config serializes");
        let d = Sha256::digest(&canonical);
        d[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn experiment(&self, name: &str) -> Option<&ExperimentConfig> {
        self.experiments.iter().find(|e| e.name == name)
    }

    /// Renders `path` with a message as `file:line:col: path: message`.
    pub fn error_at(&self, path: &str, message: String, hint: Option<String>) -> ConfigError {
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
    pub path: String,
    #[serde(skip)]
    pub position: Position,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.position.line, self.position.column)?;
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
    pub file: PathBuf,
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
/// against `base`.
pub fn parse(text: &str, file: &Path, base: &Path, env: &Env) -> Result<Config, ConfigErrors> {
    validate::parse_and_validate(text, file, base, env).map_err(|errors| ConfigErrors {
        file: file.to_path_buf(),
        errors,
    })
}

/// What loading may read from outside the file, injectable for tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub log_unit_key: Option<String>,
    pub admin_token: Option<String>,
}

impl Env {
    pub fn process() -> Env {
        Env {
            log_unit_key: std::env::var("COHORT_LOG_UNIT_KEY").ok(),
            admin_token: std::env::var("COHORT_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        }
    }
}
