//! YAML text -> raw config -> validated [`Config`], collecting every problem
//! with its YAML path, position and a hint: unknown keys (found by
//! [`super::schema`], which lets the rest of the file still be checked), then
//! serde's syntax or type error, then every semantic one. Pure: the files a
//! config names and the environment come in through [`Sources`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::files::Files;
use super::raw::{RawAccessLog, RawBucketing, RawConfig, RawExperiment, RawHealth, RawUpstream};
use super::{schema, *};
use crate::terms::{valid_unit, Bucketing, Durability, Weight, WHOLE};
use sha2::{Digest, Sha256};

const MAX_VARIANTS: usize = 255;

struct Errors<'a> {
    index: &'a PositionIndex,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>, hint: Option<String>) {
        let path = path.into();
        self.list.push(ConfigError {
            position: self.index.find(&path),
            path,
            message: message.into(),
            hint,
        });
    }
}

/// What validation may read besides the text: the environment, and the
/// files the config names (resolved against `base`, the config's folder).
pub(super) struct Sources<'a> {
    pub(super) base: &'a Path,
    pub(super) env: &'a Env,
    pub(super) files: &'a dyn Files,
}

impl Sources<'_> {
    /// `rel` resolved against the config's folder.
    fn path(&self, rel: &str) -> PathBuf {
        resolve(self.base, rel)
    }

    fn read(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        self.files.read(&self.path(rel))
    }
}

/// The upstreams a config defines, for checking names that refer to them.
struct Upstreams<'a>(&'a BTreeMap<String, RawUpstream>);

impl Upstreams<'_> {
    /// Reports `name` at `path` unless it is a defined upstream.
    fn check(&self, path: &str, name: &str, e: &mut Errors<'_>) {
        if !self.0.contains_key(name) {
            e.push(
                path,
                format!("unknown upstream {name:?}"),
                Some(names_hint(
                    name,
                    "defined upstreams",
                    self.0.keys().map(String::as_str),
                )),
            );
        }
    }
}

/// Parses and validates `text`: every unknown key, then the first type or
/// syntax error serde finds, and every semantic problem, in file order.
pub(super) fn parse_and_validate(
    text: &str,
    file: &Path,
    sources: &Sources<'_>,
) -> Result<Config, Vec<ConfigError>> {
    let index = Arc::new(PositionIndex::build(text));
    let mut errs = Errors {
        index: &index,
        list: Vec::new(),
    };
    let cfg = deserialize(text, &mut errs).and_then(|raw| validate(raw, sources, &mut errs, file));
    if errs.list.is_empty() {
        let mut cfg = cfg.expect("no errors means a config");
        cfg.positions = index;
        Ok(cfg)
    } else {
        Err(sorted_unique(errs.list))
    }
}

/// `text` as [`RawConfig`]. Unknown keys are all reported and taken out (see
/// [`schema::remove_unknown_keys`]), so that what remains is still
/// deserialized and validated; serde then reports its first error, if any.
fn deserialize(text: &str, e: &mut Errors<'_>) -> Option<RawConfig> {
    let pruned = serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|mut doc| {
            let unknown = schema::remove_unknown_keys(&mut doc, e.index);
            (!unknown.is_empty()).then(|| {
                e.list.extend(unknown);
                doc
            })
        });
    let Some(doc) = pruned else {
        // Nothing to take out (or no YAML at all): serde's own positions.
        return serde_yaml::from_str(text)
            .map_err(|err| {
                let ce = super::syntax::explain(serde_error(&err), &err.to_string(), text);
                e.list.push(ce)
            })
            .ok();
    };
    // Deserialized from text, not with from_value, so that serde's messages
    // keep the YAML path; positions in the pruned text are not the file's,
    // so the path's position in the file replaces them.
    let pruned_text = serde_yaml::to_string(&doc).ok()?;
    serde_yaml::from_str(&pruned_text)
        .map_err(|err| {
            let mut ce = serde_error(&err);
            ce.position = e.index.find(&ce.path);
            e.list.push(ce);
        })
        .ok()
}

/// Sorted by position (stably: errors at one place keep their order), each
/// path and message once.
fn sorted_unique(mut list: Vec<ConfigError>) -> Vec<ConfigError> {
    list.sort_by_key(|e| (e.position.line, e.position.column));
    let mut seen = BTreeSet::new();
    list.retain(|e| seen.insert((e.path.clone(), e.message.clone())));
    list
}

fn serde_error(e: &serde_yaml::Error) -> ConfigError {
    let pos = e
        .location()
        .map(|l| Position {
            line: l.line(),
            column: l.column(),
        })
        .unwrap_or(Position { line: 1, column: 1 });
    let message = strip_locations(&e.to_string());
    // serde_yaml prefixes the YAML path ("experiments[0]: unknown field ...").
    let (path, message) = match message.split_once(": ") {
        Some((p, m)) if !p.contains(' ') => (p.to_string(), m.to_string()),
        _ => (String::new(), message),
    };
    let hint = message
        .contains("unknown field")
        .then(|| "check the spelling; config/reference.yaml lists every field".to_string());
    ConfigError {
        path,
        position: pos,
        message,
        hint,
    }
}

/// Removes serde_yaml's " at line N column M" phrases: the position is
/// reported once, in front, in `file:line:col` form.
fn strip_locations(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n = digits(after);
        match after[n..].strip_prefix(" column ") {
            Some(col) if n > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn validate(
    raw: RawConfig,
    sources: &Sources<'_>,
    e: &mut Errors<'_>,
    file: &Path,
) -> Option<Config> {
    let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = match listen_text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            e.push(
                "listen",
                format!("{listen_text:?} is not an address"),
                Some("write host:port, e.g. 127.0.0.1:8080".into()),
            );
            None
        }
    };

    let store_path = sources.path(
        raw.store
            .as_ref()
            .and_then(|s| s.path.as_deref())
            .unwrap_or("./data"),
    );
    let redis = store(&raw, sources, e);
    let durability = durability(&raw, e);
    let access_log = access_log(&raw, sources, e);

    let mut upstreams = BTreeMap::new();
    for (name, u) in &raw.upstreams {
        if let Some(up) = upstream(name, u, sources, e) {
            upstreams.insert(name.clone(), up);
        }
    }
    if raw.upstreams.is_empty() {
        e.push(
            "upstreams",
            "no upstreams are defined",
            Some("add at least one `name: { url: http://host:port }`".into()),
        );
    }
    let known = Upstreams(&raw.upstreams);
    if let Some(d) = &raw.default_upstream {
        known.check("default_upstream", d, e);
    }

    let mut experiments = Vec::new();
    let mut names = BTreeSet::new();
    let mut route_owner: BTreeMap<String, String> = BTreeMap::new();
    for (i, x) in raw.experiments.iter().enumerate() {
        let p = format!("experiments[{i}]");
        if !names.insert(x.name.clone()) {
            e.push(
                format!("{p}.name"),
                format!("duplicate experiment name {:?}", x.name),
                Some("experiment names must be unique".into()),
            );
        }
        if let Some(exp) = experiment(&p, x, sources, &known, e) {
            for (j, r) in x.routes.iter().enumerate() {
                if let Some(other) = route_owner.insert(r.clone(), x.name.clone()) {
                    let (message, hint) = if other == x.name {
                        (
                            format!("route {r:?} is listed twice"),
                            "remove the duplicate",
                        )
                    } else {
                        (
                            format!("route {r:?} already belongs to experiment {other:?}"),
                            "a route can serve one experiment only",
                        )
                    };
                    e.push(format!("{p}.routes[{j}]"), message, Some(hint.into()));
                }
            }
            experiments.push(exp);
        }
    }

    let runtime = runtime(&raw, e);
    let admin = admin(&raw, sources, e);
    let tls = tls(&raw, sources, e);
    Some(Config {
        admin: admin?,
        tls: tls?,
        listen: listen?,
        store_path,
        durability: durability?,
        redis: redis?,
        access_log: access_log?,
        upstreams,
        default_upstream: raw.default_upstream.clone(),
        experiments,
        runtime: runtime?,
        positions: Arc::default(),
        source: file.to_path_buf(),
        watched: watched_files(&raw, sources.base),
    })
}

fn watched_files(raw: &RawConfig, base: &Path) -> Vec<PathBuf> {
    let token = raw.admin.as_ref().and_then(|a| a.token_file.as_deref());
    let key = raw
        .access_log
        .as_ref()
        .and_then(|a| a.log_unit_key_file.as_deref());
    let overrides = raw
        .experiments
        .iter()
        .filter_map(|x| x.overrides_file.as_deref());
    // An upstream's CA or client certificate rotated on disk reloads it.
    let upstream_tls = raw
        .upstreams
        .values()
        .filter_map(|u| u.tls.as_ref())
        .flat_map(|t| [&t.ca_file, &t.cert_file, &t.key_file])
        .filter_map(|f| f.as_deref());
    token
        .into_iter()
        .chain(key)
        .chain(overrides)
        .chain(upstream_tls)
        .map(|f| resolve(base, f))
        .collect()
}

/// `store.durability`: the embedded journal's only; `None` after an error.
fn durability(raw: &RawConfig, e: &mut Errors<'_>) -> Option<Durability> {
    let Some(s) = &raw.store else {
        return Some(Durability::Sync);
    };
    let Some(text) = s.durability.as_deref() else {
        return Some(Durability::Sync);
    };
    if s.kind.as_deref() == Some("redis") && text != "sync" {
        e.push(
            "store.durability",
            "store.durability: write is for the embedded store (Redis's own `appendfsync` decides a shared store's)",
            Some("remove it".into()),
        );
        return None;
    }
    match text {
        "sync" => Some(Durability::Sync),
        "write" => Some(Durability::Write),
        other => {
            e.push(
                "store.durability",
                format!("unknown durability {other:?}"),
                Some("write `sync` (the default: a new unit is answered once its assignment survives a power cut) or `write` (once it survives the process's death; the journal is synced every second)".into()),
            );
            None
        }
    }
}

/// `None` on error; `Some(None)` when there is no admin block.
/// The `store` block's shared-store fields: `Some(None)` for the embedded
/// journal, `None` after an error.
fn store(
    raw: &RawConfig,
    sources: &Sources<'_>,
    e: &mut Errors<'_>,
) -> Option<Option<RedisStoreConfig>> {
    let Some(s) = &raw.store else {
        return Some(None);
    };
    let redis_only: [(&str, bool); 9] = [
        ("url", s.url.is_some()),
        ("urls", s.urls.is_some()),
        ("cluster", s.cluster.is_some()),
        ("key_prefix", s.key_prefix.is_some()),
        ("timeout", s.timeout.is_some()),
        ("on_store_error", s.on_store_error.is_some()),
        ("wait_replicas", s.wait_replicas.is_some()),
        ("password_file", s.password_file.is_some()),
        ("tls_ca_file", s.tls_ca_file.is_some()),
    ];
    match s.kind.as_deref().unwrap_or("embedded") {
        "embedded" => {
            let mut ok = true;
            for (field, set) in redis_only {
                if set {
                    ok = false;
                    e.push(
                        format!("store.{field}"),
                        format!("store.{field} is for the shared store only"),
                        Some("set `kind: redis`, or remove it".into()),
                    );
                }
            }
            return ok.then_some(None);
        }
        "redis" => {}
        other => {
            e.push(
                "store.kind",
                format!("unknown store kind {other:?}"),
                Some("write `embedded` (the default) or `redis`".into()),
            );
            return None;
        }
    }
    let mut ok = true;
    if s.path.is_some() {
        ok = false;
        e.push(
            "store.path",
            "store.path is the embedded journal's directory; a redis store has none",
            Some(
                "remove it (see `cohort store migrate` to move an embedded store into Redis)"
                    .into(),
            ),
        );
    }
    let urls = match (&s.url, &s.urls) {
        (Some(u), None) => vec![u.clone()],
        (None, Some(us)) if !us.is_empty() => us.clone(),
        (Some(_), Some(_)) => {
            e.push(
                "store.urls",
                "store.url and store.urls are both set",
                Some("use `url` for one server, `urls` for cluster seed nodes".into()),
            );
            return None;
        }
        _ => {
            e.push(
                "store",
                "a redis store needs `url` (or `urls` for a cluster)",
                Some("write e.g. url: redis://127.0.0.1:6379/0".into()),
            );
            return None;
        }
    };
    for (i, u) in urls.iter().enumerate() {
        let path = if s.urls.is_some() {
            format!("store.urls[{i}]")
        } else {
            "store.url".to_string()
        };
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            ok = false;
            e.push(
                path,
                format!("{:?} is not a redis:// or rediss:// URL", redact_url(u)),
                Some("write e.g. redis://HOST:6379/0, or rediss://HOST:6380 for TLS".into()),
            );
        }
    }
    let key_prefix = s.key_prefix.clone().unwrap_or_else(|| "cohort".into());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || !key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        ok = false;
        e.push(
            "store.key_prefix",
            format!("{key_prefix:?} is not a key prefix"),
            Some("use 1-64 letters, digits, `-`, `_` or `.` (no `:` and no `{}`, which would pin keys to one cluster slot)".into()),
        );
    }
    let timeout = duration(
        "store.timeout",
        s.timeout.as_deref(),
        Duration::from_millis(50),
        e,
    );
    let on_store_error = match s.on_store_error.as_deref().unwrap_or("serve_by_hash") {
        "serve_by_hash" => Some(OnStoreError::ServeByHash),
        "reject" => Some(OnStoreError::Reject),
        other => {
            e.push(
                "store.on_store_error",
                format!("unknown policy {other:?}"),
                Some("write `serve_by_hash` (the default) or `reject`".into()),
            );
            None
        }
    };
    let password = match &s.password_file {
        None => Some(None),
        Some(f) => match sources.read(f) {
            Ok(t) => match String::from_utf8(trim_key(t)) {
                Ok(p) if !p.is_empty() => Some(Some(p)),
                _ => {
                    e.push(
                        "store.password_file",
                        format!("{f:?} holds no password (empty, or not UTF-8)"),
                        None,
                    );
                    None
                }
            },
            Err(err) => {
                e.push(
                    "store.password_file",
                    format!("cannot read {f:?}: {err}"),
                    None,
                );
                None
            }
        },
    };
    let tls_ca = match &s.tls_ca_file {
        None => Some(None),
        Some(f) => match sources.read(f) {
            Ok(pem) => Some(Some(pem)),
            Err(err) => {
                e.push(
                    "store.tls_ca_file",
                    format!("cannot read {f:?}: {err}"),
                    None,
                );
                None
            }
        },
    };
    let cluster = s.cluster.unwrap_or(false) || urls.len() > 1;
    let resolve = |f: &Option<String>| f.as_ref().map(|f| sources.path(f).display().to_string());
    if !ok {
        return None;
    }
    Some(Some(RedisStoreConfig {
        urls,
        cluster,
        key_prefix,
        timeout: timeout?,
        on_store_error: on_store_error?,
        wait_replicas: s.wait_replicas.unwrap_or(0),
        password: password?,
        tls_ca: tls_ca?,
        files: (resolve(&s.password_file), resolve(&s.tls_ca_file)),
    }))
}

fn admin(
    raw: &RawConfig,
    sources: &Sources<'_>,
    e: &mut Errors<'_>,
) -> Option<Option<AdminConfig>> {
    let Some(a) = &raw.admin else {
        return Some(None);
    };
    let listen_text = a.listen.as_deref().unwrap_or("127.0.0.1:9901");
    let listen = listen_text.parse().map_err(|_| {
        e.push(
            "admin.listen",
            format!("{listen_text:?} is not an address"),
            Some("write host:port, e.g. 127.0.0.1:9901".into()),
        );
    });
    let token = match (&a.token_file, &sources.env.admin_token) {
        (Some(f), _) => match sources.read(f) {
            Ok(t) => String::from_utf8(trim_key(t))
                .ok()
                .filter(|t| !t.is_empty()),
            Err(err) => {
                e.push(
                    "admin.token_file",
                    format!("cannot read {f:?}: {err}"),
                    None,
                );
                return None;
            }
        },
        (None, Some(t)) => Some(t.clone()),
        (None, None) => None,
    };
    let Some(token) = token else {
        e.push(
            "admin",
            "the admin API needs a bearer token and none is configured",
            Some(
                "set admin.token_file (a file holding the token), or the env COHORT_ADMIN_TOKEN"
                    .into(),
            ),
        );
        return None;
    };
    Some(Some(AdminConfig {
        listen: listen.ok()?,
        token_digest: hex(&Sha256::digest(token.as_bytes())[..6]),
        token,
        metrics_auth: a.metrics_auth.unwrap_or(false),
    }))
}

/// `tls`: both files named (their content is checked when the listener
/// loads them, at start-up and on every change). `None` on error;
/// `Some(None)` when there is no tls block.
fn tls(raw: &RawConfig, sources: &Sources<'_>, e: &mut Errors<'_>) -> Option<Option<TlsConfig>> {
    let Some(t) = &raw.tls else {
        return Some(None);
    };
    let mut need = |field: &str, v: &Option<String>| {
        if v.is_none() {
            e.push(
                format!("tls.{field}"),
                format!("tls needs {field}"),
                Some("name a PEM file, e.g. certs/server.crt".into()),
            );
        }
        v.as_deref().map(|f| sources.path(f))
    };
    let cert_file = need("cert_file", &t.cert_file);
    let key_file = need("key_file", &t.key_file);
    Some(Some(TlsConfig {
        cert_file: cert_file?,
        key_file: key_file?,
        client_ca_file: t.client_ca_file.as_deref().map(|f| sources.path(f)),
    }))
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn access_log(
    raw: &RawConfig,
    sources: &Sources<'_>,
    e: &mut Errors<'_>,
) -> Option<AccessLogConfig> {
    let Some(a) = &raw.access_log else {
        return Some(AccessLogConfig {
            target: LogTarget::Stdout,
            unit: LogUnit::Raw,
            rotate: None,
            gzip: false,
        });
    };
    let target = if a.path == "-" {
        LogTarget::Stdout
    } else if a.path.is_empty() {
        e.push(
            "access_log.path",
            "empty path",
            Some("use \"-\" for stdout".into()),
        );
        return None;
    } else {
        LogTarget::File(sources.path(&a.path))
    };
    let unit = match a.log_unit.as_deref().unwrap_or("raw") {
        "raw" => LogUnit::Raw,
        "hashed" => {
            let key = match (&a.log_unit_key_file, &sources.env.log_unit_key) {
                (Some(f), _) => match sources.read(f) {
                    Ok(k) => Some(trim_key(k)),
                    Err(err) => {
                        e.push(
                            "access_log.log_unit_key_file",
                            format!("cannot read {f:?}: {err}"),
                            None,
                        );
                        return None;
                    }
                },
                (None, Some(k)) => Some(k.as_bytes().to_vec()),
                (None, None) => None,
            };
            match key {
                Some(key) if !key.is_empty() => LogUnit::Hashed {
                    key_digest: hex(&Sha256::digest(&key)[..6]),
                    key,
                },
                _ => {
                    e.push(
                        "access_log.log_unit",
                        "log_unit: hashed needs a key",
                        Some("set log_unit_key_file, or the env COHORT_LOG_UNIT_KEY".into()),
                    );
                    return None;
                }
            }
        }
        other => {
            e.push(
                "access_log.log_unit",
                format!("unknown value {other:?}"),
                Some("expected raw or hashed".into()),
            );
            return None;
        }
    };
    let (rotate, gzip) = rotation(a, &target, e)?;
    Some(AccessLogConfig {
        target,
        unit,
        rotate,
        gzip,
    })
}

/// `access_log.rotate` and `access_log.compress`: only for a file, at least
/// one bound, and compression only of files that rotation closes.
fn rotation(
    a: &RawAccessLog,
    target: &LogTarget,
    e: &mut Errors<'_>,
) -> Option<(Option<RotateConfig>, bool)> {
    let before = e.list.len();
    let rotate = a.rotate.as_ref().map(|r| {
        let max_bytes = r.max_bytes.as_deref().and_then(|b| {
            let n = parse_size(b);
            if n.is_none() {
                e.push(
                    "access_log.rotate.max_bytes",
                    format!("{b:?} is not a size"),
                    Some("write bytes (1048576) or with a unit: 64KiB, 100MiB, 1GiB".into()),
                );
            }
            n
        });
        let max_age = r.max_age.as_deref().and_then(|s| {
            let d = parse_duration(s).filter(|d| *d >= Duration::from_secs(1));
            if d.is_none() {
                e.push(
                    "access_log.rotate.max_age",
                    format!("{s:?} is not a duration of at least 1s"),
                    Some("write e.g. 30s, 15m or 24h".into()),
                );
            }
            d
        });
        if r.max_bytes.is_none() && r.max_age.is_none() {
            e.push(
                "access_log.rotate",
                "rotate needs max_bytes, max_age or both",
                Some("e.g. rotate: { max_bytes: 100MiB, max_age: 1h }".into()),
            );
        }
        if *target == LogTarget::Stdout {
            e.push(
                "access_log.rotate",
                "stdout cannot be rotated",
                Some("give access_log.path a file, or drop rotate".into()),
            );
        }
        RotateConfig { max_bytes, max_age }
    });
    let gzip = match a.compress.as_deref() {
        None | Some("none") => false,
        Some("gzip") if rotate.is_some() => true,
        Some("gzip") => {
            e.push(
                "access_log.compress",
                "compress needs rotate: it compresses the files rotation closes",
                Some(
                    "add rotate: { max_bytes: ..., max_age: ... }, or let logrotate compress"
                        .into(),
                ),
            );
            false
        }
        Some(other) => {
            e.push(
                "access_log.compress",
                format!("unknown value {other:?}"),
                Some("expected gzip or none".into()),
            );
            false
        }
    };
    (e.list.len() == before).then_some((rotate, gzip))
}

/// `1048576`, `64KiB`, `100MiB`, `1GiB`: a positive number of bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale).filter(|b| *b > 0)
}

fn trim_key(mut k: Vec<u8>) -> Vec<u8> {
    while k.last().is_some_and(|b| b.is_ascii_whitespace()) {
        k.pop();
    }
    k
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn upstream(
    name: &str,
    u: &RawUpstream,
    sources: &Sources<'_>,
    e: &mut Errors<'_>,
) -> Option<UpstreamConfig> {
    let p = format!("upstreams.{name}");
    let mut ok = true;
    if !valid_name(name) {
        e.push(
            &p,
            format!("invalid upstream name {name:?}"),
            Some("use letters, digits, '-', '_' and '.'".into()),
        );
        ok = false;
    }
    let urls: Vec<(String, &str)> = match (&u.url, &u.endpoints) {
        (Some(url), None) => vec![(format!("{p}.url"), url.as_str())],
        (None, Some(list)) if list.len() > MAX_ENDPOINTS => {
            e.push(
                format!("{p}.endpoints"),
                format!("{} endpoints; at most {MAX_ENDPOINTS}", list.len()),
                None,
            );
            return None;
        }
        (None, Some(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, url)| (format!("{p}.endpoints[{i}]"), url.as_str()))
            .collect(),
        (None, Some(_)) => {
            e.push(
                format!("{p}.endpoints"),
                "an upstream needs at least one endpoint",
                Some("list URLs, e.g. [http://10.0.0.5:9000, http://10.0.0.6:9000]".into()),
            );
            return None;
        }
        (None, None) => {
            e.push(
                &p,
                "an upstream needs `url` or `endpoints`",
                Some("write url: http://host:port".into()),
            );
            return None;
        }
        (Some(_), Some(_)) => {
            e.push(
                format!("{p}.endpoints"),
                "`url` and `endpoints` are both set",
                Some("`url` is the one-endpoint form of `endpoints`: keep one".into()),
            );
            return None;
        }
    };
    let mut endpoints = Vec::new();
    let mut https = None;
    for (at, url) in urls {
        let (a, tls) = endpoint_authority(&at, url, e)?;
        if endpoints.contains(&a) {
            e.push(at, format!("endpoint {a} is listed twice"), None);
            return None;
        }
        if *https.get_or_insert(tls) != tls {
            e.push(
                at,
                "the endpoints mix http:// and https://",
                Some("the endpoints of one upstream serve the same model the same way".into()),
            );
            return None;
        }
        endpoints.push(a);
    }
    let authority = endpoints.remove(0);
    let protocol = match u.protocol.as_deref() {
        None | Some("http/1.1") => Some(UpstreamProtocol::Http1),
        Some("h2") => Some(UpstreamProtocol::H2),
        Some(other) => {
            e.push(
                format!("{p}.protocol"),
                format!("unknown protocol {other:?}"),
                Some("write http/1.1 (the default) or h2".into()),
            );
            None
        }
    };
    let tls = upstream_tls(&p, u, https == Some(true), &authority, sources, e);
    let connect_timeout = duration(
        &format!("{p}.connect_timeout"),
        u.connect_timeout.as_deref(),
        Duration::from_secs(2),
        e,
    );
    let timeout = duration(
        &format!("{p}.timeout"),
        u.timeout.as_deref(),
        Duration::from_secs(30),
        e,
    );
    let total_timeout = match &u.total_timeout {
        None => Some(None),
        Some(t) => duration(&format!("{p}.total_timeout"), Some(t), Duration::ZERO, e).map(Some),
    };
    let eject_for = duration(
        &format!("{p}.eject_for"),
        u.eject_for.as_deref(),
        super::DEFAULT_EJECT_FOR,
        e,
    );
    let health = match &u.health {
        None => Some(None),
        Some(h) => health(&format!("{p}.health"), h, e).map(Some),
    };
    Some(UpstreamConfig {
        name: name.to_string(),
        authority,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        max_idle_per_host: u.max_idle_per_host.unwrap_or(256),
        extra_endpoints: endpoints,
        total_timeout: total_timeout?,
        health: health?,
        eject_after: u.eject_after.unwrap_or(super::DEFAULT_EJECT_AFTER),
        eject_for: eject_for?,
        protocol: protocol?,
        tls: tls?,
    })
    .filter(|_| ok)
}

/// `tls:` of an upstream: only with `https://` endpoints, which get the
/// defaults (system roots, SNI from the URL) without it. Each named file
/// is read and parsed here, and the whole set tried as a rustls client
/// config, so a bad file is reported with its field, not at the first
/// request. `None` on error; `Some(None)` for plain `http://`.
fn upstream_tls(
    p: &str,
    u: &RawUpstream,
    https: bool,
    authority: &str,
    sources: &Sources<'_>,
    e: &mut Errors<'_>,
) -> Option<Option<UpstreamTls>> {
    let raw = match (&u.tls, https) {
        (None, false) => return Some(None),
        (Some(_), false) => {
            e.push(
                format!("{p}.tls"),
                "tls is set but the endpoints are http:// URLs",
                Some("write https://host:port endpoints, or drop tls".into()),
            );
            return None;
        }
        (raw, true) => raw.as_ref(),
    };
    let field = |f: &str| format!("{p}.tls.{f}");
    let mut ok = true;
    let mut read = |f: &str, v: Option<&String>, check: fn(&[u8]) -> Result<(), String>| {
        let v = v?;
        match sources
            .read(v)
            .map_err(|err| format!("cannot read {v:?}: {err}"))
        {
            Ok(pem) => match check(&pem) {
                Ok(()) => Some(pem),
                Err(why) => {
                    e.push(field(f), format!("{v:?}: {why}"), None);
                    ok = false;
                    None
                }
            },
            Err(why) => {
                e.push(field(f), why, None);
                ok = false;
                None
            }
        }
    };
    let ca = read("ca_file", raw.and_then(|t| t.ca_file.as_ref()), pem_certs);
    let cert = read(
        "cert_file",
        raw.and_then(|t| t.cert_file.as_ref()),
        pem_certs,
    );
    let key = read("key_file", raw.and_then(|t| t.key_file.as_ref()), pem_key);
    let server_name = raw.and_then(|t| t.server_name.clone());
    if !ok {
        return None;
    }
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            e.push(
                field("cert_file"),
                "cert_file and key_file go together",
                Some("name both PEM files of the client certificate, or neither".into()),
            );
            return None;
        }
    };
    let name = server_name.as_deref().unwrap_or_else(|| {
        // The host of `host:port` (an IPv6 host keeps its brackets off).
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    });
    if rustls::pki_types::ServerName::try_from(name).is_err() {
        e.push(
            field("server_name"),
            format!("{name:?} is not a DNS name or an IP address"),
            None,
        );
        return None;
    }
    let raw_files =
        |f: fn(&super::raw::RawUpstreamTls) -> &Option<String>| raw.and_then(|t| f(t).clone());
    let client = match super::upstream_tls_client(ca.as_deref(), client_cert.as_ref()) {
        Ok(c) => Arc::new(c),
        Err(why) => {
            e.push(field("cert_file"), why, None);
            return None;
        }
    };
    Some(Some(UpstreamTls {
        ca,
        client_cert,
        server_name,
        files: [
            raw_files(|t| &t.ca_file),
            raw_files(|t| &t.cert_file),
            raw_files(|t| &t.key_file),
        ],
        client,
    }))
}

/// PEM text holding at least one certificate.
fn pem_certs(pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let n = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?
        .len();
    if n == 0 {
        return Err("no certificate in the file".into());
    }
    Ok(())
}

/// PEM text holding a private key.
fn pem_key(pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem)
        .map(|_| ())
        .map_err(|e| format!("no private key: {e}"))
}

/// The `host:port` of one endpoint URL (port 80, or 443 for `https`, when
/// it names none), and whether it is `https`.
fn endpoint_authority(at: &str, url: &str, e: &mut Errors<'_>) -> Option<(String, bool)> {
    match url.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none() =>
        {
            let https = uri.scheme_str() == Some("https");
            let a = uri.authority().expect("checked");
            let authority = if a.port_u16().is_some() {
                a.to_string()
            } else {
                format!("{}:{}", a.host(), if https { 443 } else { 80 })
            };
            Some((authority, https))
        }
        _ => {
            e.push(
                at,
                format!("{url:?} is not an upstream URL"),
                Some("write http://host:port or https://host:port, without a path".into()),
            );
            None
        }
    }
}

/// An upstream's `health:` block, with its defaults.
fn health(p: &str, h: &RawHealth, e: &mut Errors<'_>) -> Option<HealthCheck> {
    let mut ok = true;
    if !h.path.starts_with('/') || h.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        e.push(
            format!("{p}.path"),
            format!("{:?} is not a request path", h.path),
            Some("write an origin-form path, e.g. /health".into()),
        );
        ok = false;
    }
    let interval = duration(
        &format!("{p}.interval"),
        h.interval.as_deref(),
        Duration::from_secs(5),
        e,
    );
    let timeout = duration(
        &format!("{p}.timeout"),
        h.timeout.as_deref(),
        Duration::from_secs(1),
        e,
    );
    let mut count = |field: &str, v: Option<u32>, default: u32| match v {
        None => default,
        Some(0) => {
            e.push(format!("{p}.{field}"), "must be at least 1", None);
            ok = false;
            default
        }
        Some(n) => n,
    };
    let unhealthy_after = count("unhealthy_after", h.unhealthy_after, 3);
    let healthy_after = count("healthy_after", h.healthy_after, 2);
    Some(HealthCheck {
        path: h.path.clone(),
        interval: interval?,
        timeout: timeout?,
        unhealthy_after,
        healthy_after,
    })
    .filter(|_| ok)
}

/// The most endpoints one upstream may list (the proxy remembers which it
/// tried in one 64-bit mask).
const MAX_ENDPOINTS: usize = 64;

/// `500ms`, `2s`, `1m`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

fn duration(
    path: &str,
    s: Option<&str>,
    default: Duration,
    e: &mut Errors<'_>,
) -> Option<Duration> {
    match s {
        None => Some(default),
        Some(s) => match parse_duration(s) {
            Some(d) => Some(d),
            None => {
                e.push(
                    path,
                    format!("{s:?} is not a duration"),
                    Some("write e.g. 500ms, 2s or 1m".into()),
                );
                None
            }
        },
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// One experiment, validated piece by piece; `None` if any piece failed
/// (every failure is in `e`).
fn experiment(
    p: &str,
    x: &RawExperiment,
    sources: &Sources<'_>,
    upstreams: &Upstreams<'_>,
    e: &mut Errors<'_>,
) -> Option<ExperimentConfig> {
    let before = e.list.len();
    if !valid_name(&x.name) {
        e.push(
            format!("{p}.name"),
            format!("invalid experiment name {:?}", x.name),
            Some("use letters, digits, '-', '_' and '.' (at most 64)".into()),
        );
    }
    let routes = routes(p, &x.routes, e);
    let unit_header = unit_header(p, x.unit_header.as_deref(), e);
    let salt = x.salt.clone().unwrap_or_else(|| x.name.clone());
    if salt.is_empty() {
        e.push(
            format!("{p}.salt"),
            "empty salt",
            Some("omit it to use the experiment name".into()),
        );
    }
    let on_missing_unit = on_missing_unit(p, x.on_missing_unit.as_deref(), e);
    let variants = variants(p, x, upstreams, e);
    let coverage = coverage(p, x.coverage, e);
    let overrides = overrides(p, x, &variants, sources, e);
    let bucketing = match &x.bucketing {
        None => Bucketing::Cohort,
        Some(b) => bucketing(p, b, &salt, &variants, coverage, e),
    };
    (e.list.len() == before).then(|| ExperimentConfig {
        name: x.name.clone(),
        routes,
        unit_header,
        salt,
        variants,
        on_missing_unit,
        reset: x.reset.unwrap_or(0),
        paused: x.paused.unwrap_or(false),
        coverage,
        overrides,
        bucketing,
    })
}

/// `bucketing:`: the scheme, the parameters it takes (by the vendor's own
/// names; any other is an error), their defaults, and the limits of what
/// the vendor can express (its coverage, its weights' scale). Mirrors the
/// checks `assign::schemes::Chooser::new` relies on.
fn bucketing(
    p: &str,
    raw: &RawBucketing,
    salt: &str,
    variants: &[VariantConfig],
    coverage: Weight,
    e: &mut Errors<'_>,
) -> Bucketing {
    let n_variants = variants.len();
    let bp = format!("{p}.bucketing");
    let given: [(&str, bool); 9] = [
        ("seed", raw.seed.is_some()),
        ("hash_version", raw.hash_version.is_some()),
        ("flag_key", raw.flag_key.is_some()),
        ("salt", raw.salt.is_some()),
        ("rule_salt", raw.rule_salt.is_some()),
        ("experiment_id", raw.experiment_id.is_some()),
        ("group_id", raw.group_id.is_some()),
        ("key", raw.key.is_some()),
        ("vendor_weights", raw.vendor_weights.is_some()),
    ];
    let takes: &[&str] = match raw.scheme.as_str() {
        "cohort" => &[],
        "growthbook" => &["seed", "hash_version", "vendor_weights"],
        "launchdarkly" => &["flag_key", "salt", "seed", "vendor_weights"],
        "statsig" => &["salt", "rule_salt", "vendor_weights"],
        "optimizely" => &["experiment_id", "vendor_weights"],
        "unleash" => &["group_id", "vendor_weights"],
        "nginx" => &["key", "vendor_weights"],
        other => {
            e.push(
                format!("{bp}.scheme"),
                format!("unknown bucketing scheme {other:?}"),
                Some(
                    "one of: cohort, growthbook, launchdarkly, statsig, optimizely, unleash, nginx"
                        .into(),
                ),
            );
            return Bucketing::Cohort;
        }
    };
    let scheme = raw.scheme.as_str();
    for (name, set) in given {
        if set && !takes.contains(&name) {
            e.push(
                format!("{bp}.{name}"),
                format!("`{name}` is not a parameter of the {scheme} scheme"),
                Some(if takes.is_empty() {
                    format!("{scheme} takes no parameters")
                } else {
                    format!("{scheme} takes: {}", takes.join(", "))
                }),
            );
        }
    }
    let required = |e: &mut Errors<'_>, name: &str, v: &Option<String>, hint: &str| -> String {
        match v {
            Some(s) if !s.is_empty() => s.clone(),
            _ => {
                e.push(
                    format!("{bp}.{name}"),
                    format!("the {scheme} scheme needs a non-empty `{name}`"),
                    Some(hint.into()),
                );
                String::new()
            }
        }
    };
    let full = coverage.0 >= WHOLE;
    let b = match scheme {
        "growthbook" => {
            let hash_version = raw.hash_version.unwrap_or(1);
            if !matches!(hash_version, 1 | 2) {
                e.push(
                    format!("{bp}.hash_version"),
                    format!("GrowthBook hash_version {hash_version} does not exist"),
                    Some("1 (the SDKs' default) or 2".into()),
                );
            }
            Bucketing::Growthbook {
                seed: raw.seed.clone().unwrap_or_else(|| salt.to_string()),
                hash_version,
                vendor_weights: None,
            }
        }
        "launchdarkly" => {
            let flag_key = required(
                e,
                "flag_key",
                &raw.flag_key,
                "the flag's key, e.g. flag_key: my-flag",
            );
            let seed = match &raw.seed {
                None => None,
                Some(s) => match s.parse::<i64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        e.push(
                            format!("{bp}.seed"),
                            format!("seed {s:?} is not an integer"),
                            Some("LaunchDarkly rollout seeds are integers, e.g. seed: 61".into()),
                        );
                        None
                    }
                },
            };
            let salt = if raw.seed.is_some() {
                raw.salt.clone().unwrap_or_default()
            } else {
                required(
                    e,
                    "salt",
                    &raw.salt,
                    "the flag's salt (from its JSON), or a rollout `seed`",
                )
            };
            if !full {
                e.push(
                    format!("{p}.coverage"),
                    "LaunchDarkly rollouts have no coverage: it must stay 1 with scheme launchdarkly",
                    Some("give the excluded share its own variant (weight) instead".into()),
                );
            }
            Bucketing::Launchdarkly {
                flag_key,
                salt,
                seed,
                vendor_weights: None,
            }
        }
        "statsig" => {
            if !full && raw.rule_salt.is_none() {
                e.push(
                    format!("{bp}.rule_salt"),
                    "coverage below 1 is Statsig's pass percentage, which hashes the rule's salt",
                    Some("copy the rule's salt (or id) from the Statsig export".into()),
                );
            }
            Bucketing::Statsig {
                salt: raw.salt.clone().unwrap_or_else(|| salt.to_string()),
                rule_salt: raw.rule_salt.clone(),
                vendor_weights: None,
            }
        }
        "optimizely" => Bucketing::Optimizely {
            experiment_id: required(
                e,
                "experiment_id",
                &raw.experiment_id,
                "the experiment's id from the datafile, e.g. experiment_id: \"12345\"",
            ),
            vendor_weights: None,
        },
        "unleash" => {
            if !coverage.0.is_multiple_of(100) {
                e.push(
                    format!("{p}.coverage"),
                    "Unleash's rollout is a whole percentage: coverage must have at most two decimals with scheme unleash",
                    Some("e.g. coverage: 0.25".into()),
                );
            }
            Bucketing::Unleash {
                group_id: raw.group_id.clone().unwrap_or_else(|| salt.to_string()),
                vendor_weights: None,
            }
        }
        "nginx" => {
            let key = required(
                e,
                "key",
                &raw.key,
                "the split_clients string, e.g. key: \"${unit}AAA\"",
            );
            if !key.is_empty() && !key.contains("${unit}") {
                e.push(
                    format!("{bp}.key"),
                    "the split_clients string must contain ${unit} (where the unit id goes)",
                    Some("e.g. key: \"${unit}AAA\" for split_clients \"${cookie_uid}AAA\"".into()),
                );
            }
            Bucketing::Nginx {
                key,
                vendor_weights: None,
            }
        }
        _ => Bucketing::Cohort,
    };
    let Some(raw_w) = &raw.vendor_weights else {
        return b;
    };
    let wp = format!("{bp}.vendor_weights");
    if raw_w.len() != n_variants {
        e.push(
            &wp,
            format!("{} vendor weights for {n_variants} variants", raw_w.len()),
            Some("one per variant, in the variants' order".into()),
        );
    }
    let scale = b.scale();
    let bad = raw_w
        .iter()
        .any(|w| !w.is_finite() || *w < 0.0 || (scale.is_some() && w.fract() != 0.0));
    if bad {
        e.push(
            &wp,
            "vendor weights must be numbers >= 0 (whole numbers for every scheme but growthbook)",
            None,
        );
    } else if let Some(scale) = scale {
        let sum: u64 = raw_w.iter().map(|w| *w as u64).sum();
        let unleash = matches!(b, Bucketing::Unleash { .. });
        if (sum > scale && !unleash) || sum == 0 {
            e.push(
                &wp,
                format!("vendor weights sum to {sum}; the {scheme} scale is {scale}"),
                None,
            );
        }
        if matches!(
            b,
            Bucketing::Launchdarkly { .. } | Bucketing::Statsig { .. }
        ) && sum != scale
        {
            e.push(
                &wp,
                format!("vendor weights sum to {sum}; {scheme} weights must sum to {scale}"),
                None,
            );
        }
        if matches!(b, Bucketing::Optimizely { .. } | Bucketing::Nginx { .. }) && !full {
            e.push(
                format!("{p}.coverage"),
                format!("with vendor_weights, the {scheme} weights' sum is the covered share: leave coverage at 1"),
                None,
            );
        }
    } else {
        let sum: f64 = raw_w.iter().sum();
        if (sum - 1.0).abs() > 0.01 {
            e.push(
                &wp,
                format!("growthbook weights sum to {sum}; they must sum to 1"),
                Some("GrowthBook weights are fractions, e.g. [0.5, 0.5]".into()),
            );
        }
    }
    // The percentages still give the log's `share` (and so SRM): they must
    // say what the vendor weights do, to the percentages' precision.
    let total: f64 = raw_w.iter().sum();
    if raw_w.len() == n_variants && !bad && total > 0.0 {
        for (j, (w, v)) in raw_w.iter().zip(variants).enumerate() {
            let vendor = w / total;
            let pct = f64::from(v.weight.0) / f64::from(WHOLE);
            if (vendor - pct).abs() > 1e-4 + 1e-12 {
                e.push(
                    format!("{p}.variants[{j}].weight"),
                    format!(
                        "weight {} disagrees with vendor_weights, which give {:.4}%",
                        v.weight,
                        vendor * 100.0
                    ),
                    Some("set each weight to its vendor share rounded to two decimals (the log's share and SRM use the weights)".into()),
                );
            }
        }
    }
    let vw = Some(
        raw_w
            .iter()
            .map(|w| crate::terms::VendorWeight(*w))
            .collect(),
    );
    match b {
        Bucketing::Growthbook {
            seed, hash_version, ..
        } => Bucketing::Growthbook {
            seed,
            hash_version,
            vendor_weights: vw,
        },
        Bucketing::Launchdarkly {
            flag_key,
            salt,
            seed,
            ..
        } => Bucketing::Launchdarkly {
            flag_key,
            salt,
            seed,
            vendor_weights: vw,
        },
        Bucketing::Statsig {
            salt, rule_salt, ..
        } => Bucketing::Statsig {
            salt,
            rule_salt,
            vendor_weights: vw,
        },
        Bucketing::Optimizely { experiment_id, .. } => Bucketing::Optimizely {
            experiment_id,
            vendor_weights: vw,
        },
        Bucketing::Unleash { group_id, .. } => Bucketing::Unleash {
            group_id,
            vendor_weights: vw,
        },
        Bucketing::Nginx { key, .. } => Bucketing::Nginx {
            key,
            vendor_weights: vw,
        },
        Bucketing::Cohort => Bucketing::Cohort,
    }
}

/// Exact paths, or prefixes written with a trailing `*`.
fn routes(p: &str, raw: &[String], e: &mut Errors<'_>) -> Vec<Route> {
    if raw.is_empty() {
        e.push(
            format!("{p}.routes"),
            "an experiment needs at least one route",
            Some("e.g. routes: [/predict]".into()),
        );
    }
    let mut routes = Vec::new();
    for (j, r) in raw.iter().enumerate() {
        if !r.starts_with('/') {
            e.push(
                format!("{p}.routes[{j}]"),
                format!("route {r:?} must start with '/'"),
                None,
            );
        } else if let Some(prefix) = r.strip_suffix('*') {
            routes.push(Route::Prefix(prefix.to_string()));
        } else if r.contains('*') {
            e.push(
                format!("{p}.routes[{j}]"),
                format!("route {r:?}: '*' is allowed only at the end"),
                Some("write /v2/models/ranker/* for a prefix".into()),
            );
        } else {
            routes.push(Route::Exact(r.clone()));
        }
    }
    routes
}

/// The unit header, lower-cased (default `x-user-id`).
fn unit_header(p: &str, raw: Option<&str>, e: &mut Errors<'_>) -> String {
    let unit_header = raw.unwrap_or("x-user-id").to_ascii_lowercase();
    if http::HeaderName::from_bytes(unit_header.as_bytes()).is_err() {
        e.push(
            format!("{p}.unit_header"),
            format!("{unit_header:?} is not a header name"),
            None,
        );
    } else if unit_header.starts_with("x-cohort-") {
        e.push(
            format!("{p}.unit_header"),
            "x-cohort-* headers are set by the proxy",
            Some("use the header your clients send, e.g. x-user-id".into()),
        );
    }
    unit_header
}

fn on_missing_unit(p: &str, raw: Option<&str>, e: &mut Errors<'_>) -> MissingUnitPolicy {
    match raw.unwrap_or("control") {
        "control" => MissingUnitPolicy::Control,
        "reject" => MissingUnitPolicy::Reject,
        other => {
            e.push(
                format!("{p}.on_missing_unit"),
                format!("unknown policy {other:?}"),
                Some("expected control or reject".into()),
            );
            MissingUnitPolicy::Control
        }
    }
}

/// The variants with valid weights; names, upstreams, the weights' sum and
/// the first variant's `disabled` are checked here.
fn variants(
    p: &str,
    x: &RawExperiment,
    upstreams: &Upstreams<'_>,
    e: &mut Errors<'_>,
) -> Vec<VariantConfig> {
    if x.variants.is_empty() {
        e.push(
            format!("{p}.variants"),
            "an experiment needs at least one variant",
            None,
        );
    }
    if x.variants.len() > MAX_VARIANTS {
        e.push(
            format!("{p}.variants"),
            format!("{} variants; at most {MAX_VARIANTS}", x.variants.len()),
            None,
        );
    }
    let mut variants = Vec::new();
    let mut seen = BTreeSet::new();
    let mut sum = 0u64;
    let mut weights_ok = true;
    for (j, v) in x.variants.iter().enumerate() {
        let vp = format!("{p}.variants[{j}]");
        if !valid_name(&v.name) || v.name == "none" {
            e.push(
                format!("{vp}.name"),
                format!("invalid variant name {:?}", v.name),
                Some("use letters, digits, '-', '_' and '.'; \"none\" is reserved".into()),
            );
        }
        if !seen.insert(v.name.clone()) {
            e.push(
                format!("{vp}.name"),
                format!("duplicate variant name {:?}", v.name),
                None,
            );
        }
        upstreams.check(&format!("{vp}.upstream"), &v.upstream, e);
        if let Some(f) = &v.fallback {
            upstreams.check(&format!("{vp}.fallback"), f, e);
            if *f == v.upstream {
                e.push(
                    format!("{vp}.fallback"),
                    format!("the fallback is the variant's own upstream {f:?}"),
                    Some("name another upstream, or remove `fallback`".into()),
                );
            }
        }
        match Weight::from_percent(v.weight) {
            Some(w) => {
                sum += u64::from(w.0);
                variants.push(VariantConfig {
                    name: v.name.clone(),
                    upstream: v.upstream.clone(),
                    weight: w,
                    disabled: v.disabled.unwrap_or(false),
                    fallback: v.fallback.clone(),
                });
            }
            None => {
                weights_ok = false;
                e.push(
                    format!("{vp}.weight"),
                    format!(
                        "weight {} is not a percentage with at most two decimals",
                        v.weight
                    ),
                    Some("weights are percentages from 0 to 100, e.g. 33.33".into()),
                );
            }
        }
    }
    if weights_ok && !x.variants.is_empty() {
        let ws: Vec<Weight> = variants.iter().map(|v| v.weight).collect();
        if !Weight::sum_to_whole(&ws) {
            let shown = Weight(sum.min(u64::from(u32::MAX)) as u32);
            e.push(
                format!("{p}.variants"),
                format!("weights sum to {shown}; they must sum to 100"),
                Some(weight_hint(sum)),
            );
        }
    }
    if variants.first().is_some_and(|v| v.disabled) {
        e.push(
            format!("{p}.variants[0].disabled"),
            "the first variant is where disabled, paused and uncovered units go; it cannot be disabled",
            Some("pause the experiment instead (paused: true)".into()),
        );
    }
    variants
}

/// The share of units that enter, in basis points (default: everyone).
fn coverage(p: &str, raw: Option<f64>, e: &mut Errors<'_>) -> Weight {
    let Some(c) = raw else {
        return Weight(WHOLE);
    };
    match Weight::from_percent(c * 100.0).filter(|w| w.0 > 0) {
        Some(w) => w,
        None => {
            e.push(
                format!("{p}.coverage"),
                format!("coverage {c} must be a share above 0 and at most 1, with at most four decimals"),
                Some("e.g. coverage: 0.8 lets 80% of units enter".into()),
            );
            Weight(WHOLE)
        }
    }
}

/// Forced units, inline or from `overrides_file` (the same YAML shape:
/// `{ variant: [unit, ...] }`), as unit -> variant index.
fn overrides(
    p: &str,
    x: &RawExperiment,
    variants: &[VariantConfig],
    sources: &Sources<'_>,
    e: &mut Errors<'_>,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let (lists, at) = match (&x.overrides, &x.overrides_file) {
        (Some(_), Some(_)) => {
            e.push(
                format!("{p}.overrides_file"),
                "both overrides and overrides_file are set",
                Some("keep one of them".into()),
            );
            return out;
        }
        (Some(o), None) => (o.clone(), format!("{p}.overrides")),
        (None, Some(f)) => {
            let path = sources.path(f);
            let parsed = sources
                .files
                .read(&path)
                .and_then(|b| {
                    String::from_utf8(b)
                        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
                })
                .map_err(|err| format!("cannot read {}: {err}", path.display()))
                .and_then(|t| {
                    serde_yaml::from_str::<BTreeMap<String, Vec<String>>>(&t).map_err(|err| {
                        format!("{}: {}", path.display(), strip_locations(&err.to_string()))
                    })
                });
            match parsed {
                Ok(o) => (o, format!("{p}.overrides_file")),
                Err(msg) => {
                    e.push(
                        format!("{p}.overrides_file"),
                        msg,
                        Some("the file maps variant names to lists of unit ids".into()),
                    );
                    return out;
                }
            }
        }
        (None, None) => return out,
    };
    for (variant, units) in lists {
        let Some(idx) = variants.iter().position(|v| v.name == variant) else {
            let names = variants.iter().map(|v| v.name.as_str());
            e.push(
                format!("{at}.{variant}"),
                format!("overrides name unknown variant {variant:?}"),
                Some(names_hint(&variant, "variants", names)),
            );
            continue;
        };
        for u in units {
            if !valid_unit(u.as_bytes()) {
                e.push(
                    format!("{at}.{variant}"),
                    format!("{u:?} is not a valid unit id"),
                    Some("1-256 bytes, no control characters".into()),
                );
            } else if let Some(prev) = out.insert(u.clone(), idx) {
                if prev != idx {
                    e.push(
                        format!("{at}.{variant}"),
                        format!(
                            "unit {u:?} is forced into both {:?} and {variant:?}",
                            variants[prev].name
                        ),
                        None,
                    );
                }
            }
        }
    }
    out
}

/// `what: a, b, c` listing `names`, led by a did-you-mean when one of them is
/// close to `name`.
fn names_hint<'a>(name: &str, what: &str, names: impl Iterator<Item = &'a str> + Clone) -> String {
    let list = names.clone().collect::<Vec<_>>().join(", ");
    match schema::did_you_mean(name, names) {
        Some(close) => format!("did you mean {close:?}? {what}: {list}"),
        None => format!("{what}: {list}"),
    }
}

fn weight_hint(sum_bp: u64) -> String {
    if sum_bp > 10_000 {
        format!(
            "remove {} from some weights",
            Weight((sum_bp - 10_000) as u32)
        )
    } else {
        format!("add {} to some weights", Weight((10_000 - sum_bp) as u32))
    }
}

/// `runtime.max_request_head`: 64 KiB unless set, within 1 KiB..=1 MiB.
fn max_request_head(v: Option<usize>, e: &mut Errors<'_>) -> usize {
    const DEFAULT: usize = super::DEFAULT_MAX_REQUEST_HEAD;
    match v {
        Some(n) if !(1024..=1024 * 1024).contains(&n) => {
            e.push(
                "runtime.max_request_head",
                "must be between 1024 and 1048576 bytes",
                Some("the default, 65536, fits any browser or model client".into()),
            );
            DEFAULT
        }
        Some(n) => n,
        None => DEFAULT,
    }
}

/// `runtime.max_header_count`: 100 unless set, within 1..=1000.
fn max_header_count(v: Option<usize>, e: &mut Errors<'_>) -> usize {
    const DEFAULT: usize = super::DEFAULT_MAX_HEADER_COUNT;
    match v {
        Some(n) if !(1..=1000).contains(&n) => {
            e.push(
                "runtime.max_header_count",
                "must be between 1 and 1000",
                Some("the default, 100, fits any browser or model client".into()),
            );
            DEFAULT
        }
        Some(n) => n,
        None => DEFAULT,
    }
}

/// A limit that must be at least 1 when set.
fn at_least_one<T: PartialEq + From<u8>>(
    path: &str,
    v: Option<T>,
    e: &mut Errors<'_>,
) -> Option<T> {
    if v == Some(T::from(0)) {
        e.push(
            path,
            "must be at least 1",
            Some("omit it for no limit".into()),
        );
        return None;
    }
    v
}

fn runtime(raw: &RawConfig, e: &mut Errors<'_>) -> Option<RuntimeConfig> {
    let r = raw.runtime.as_ref();
    let worker_threads = r.and_then(|r| r.worker_threads);
    if worker_threads == Some(0) {
        e.push(
            "runtime.worker_threads",
            "must be at least 1",
            Some("omit it to use one per core".into()),
        );
    }
    let shutdown_timeout = duration(
        "runtime.shutdown_timeout",
        r.and_then(|r| r.shutdown_timeout.as_deref()),
        Duration::from_secs(10),
        e,
    )?;
    let client_idle_timeout = duration(
        "runtime.client_idle_timeout",
        r.and_then(|r| r.client_idle_timeout.as_deref()),
        Duration::from_secs(75),
        e,
    );
    let client_header_timeout = duration(
        "runtime.client_header_timeout",
        r.and_then(|r| r.client_header_timeout.as_deref()),
        Duration::from_secs(30),
        e,
    );
    let client_body_timeout = duration(
        "runtime.client_body_timeout",
        r.and_then(|r| r.client_body_timeout.as_deref()),
        Duration::from_secs(60),
        e,
    );
    Some(RuntimeConfig {
        worker_threads,
        client_idle_timeout: client_idle_timeout?,
        client_header_timeout: client_header_timeout?,
        client_body_timeout: client_body_timeout?,
        http1_fast_path: r.and_then(|r| r.http1_fast_path).unwrap_or(true),
        max_request_head: max_request_head(r.and_then(|r| r.max_request_head), e),
        max_header_count: max_header_count(r.and_then(|r| r.max_header_count), e),
        max_body_bytes: at_least_one(
            "runtime.max_body_bytes",
            r.and_then(|r| r.max_body_bytes),
            e,
        ),
        max_connections: at_least_one(
            "runtime.max_connections",
            r.and_then(|r| r.max_connections),
            e,
        ),
        shutdown_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::files::InMemory;

    fn check(yaml: &str) -> Result<Config, Vec<ConfigError>> {
        check_with(yaml, &Env::default())
    }

    fn check_with(yaml: &str, env: &Env) -> Result<Config, Vec<ConfigError>> {
        check_files(yaml, env, &InMemory::default())
    }

    /// Validation is pure: the files a config names come from `files`.
    fn check_files(yaml: &str, env: &Env, files: &InMemory) -> Result<Config, Vec<ConfigError>> {
        let sources = Sources {
            base: Path::new("/base"),
            env,
            files,
        };
        parse_and_validate(yaml, Path::new("t.yaml"), &sources)
    }

    const GOOD: &str = "\
upstreams:
  old: { url: http://127.0.0.1:9001 }
  new: { url: http://127.0.0.1:9002 }
experiments:
  - name: e
    routes: [/predict]
    variants:
      - { name: control, upstream: old, weight: 50 }
      - { name: treatment, upstream: new, weight: 50 }
";

    /// GOOD with `line` added to the experiment, after its routes (line 7).
    fn with_experiment_line(line: &str) -> String {
        GOOD.replace("[/predict]\n", &format!("[/predict]\n    {line}\n"))
    }

    fn one_error(yaml: &str) -> ConfigError {
        let errs = check(yaml).expect_err("should be invalid");
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().unwrap()
    }

    /// Asserts the path, `(line, column)`, a phrase of the message and of
    /// the hint (`None`: there is no hint).
    fn assert_error(
        e: &ConfigError,
        path: &str,
        at: (usize, usize),
        message: &str,
        hint: Option<&str>,
    ) {
        assert_eq!(e.path, path, "{e}");
        assert_eq!((e.position.line, e.position.column), at, "{e}");
        assert!(e.message.contains(message), "{e}");
        match hint {
            Some(h) => assert!(e.hint.as_deref().is_some_and(|x| x.contains(h)), "{e}"),
            None => assert_eq!(e.hint, None, "{e}"),
        }
    }

    #[test]
    fn good_config_validates_with_defaults() {
        let c = check(GOOD).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.store_path, PathBuf::from("/base/./data"));
        let x = &c.experiments[0];
        assert_eq!(x.salt, "e");
        assert_eq!(x.unit_header, "x-user-id");
        assert_eq!(x.on_missing_unit, MissingUnitPolicy::Control);
        assert_eq!(x.routes, vec![Route::Exact("/predict".into())]);
        assert_eq!(c.upstreams["old"].authority, "127.0.0.1:9001");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = one_error(&GOOD.replace("9002 }", "9002"));
        assert_error(
            &e,
            "upstreams.new",
            (4, 12),
            "did not find expected ',' or '}'",
            Some("the `{` at line 3, column 8 is not closed"),
        );
    }

    #[test]
    fn unknown_field_has_position_and_did_you_mean() {
        let e = one_error(&GOOD.replace(
            "weight: 50 }\n      - { name: treatment",
            "wieght: 50 }\n      - { name: treatment",
        ));
        assert_error(
            &e,
            "experiments[0].variants[0]",
            (8, 41),
            "unknown field `wieght`",
            Some("did you mean `weight`?"),
        );
        assert_eq!(
            e.to_string(),
            "8:41: experiments[0].variants[0]: unknown field `wieght` (hint: did you mean `weight`?)"
        );
    }

    #[test]
    fn unknown_field_without_a_close_name_lists_the_fields() {
        let e = one_error(&GOOD.replace("new, weight: 50 }", "new, weight: 50, colour: red }"));
        assert_error(
            &e,
            "experiments[0].variants[1]",
            (9, 55),
            "unknown field `colour`",
            Some("expected one of: name, upstream, weight, disabled"),
        );
    }

    #[test]
    fn unknown_fields_differing_in_case_or_plural_are_suggested() {
        let errs =
            check(&with_experiment_line("Salt: abc").replace("variants:", "variant:")).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_error(
            &errs[0],
            "experiments[0]",
            (7, 5),
            "unknown field `Salt`",
            Some("did you mean `salt`?"),
        );
        assert_error(
            &errs[1],
            "experiments[0]",
            (8, 5),
            "unknown field `variant`",
            Some("did you mean `variants`?"),
        );
    }

    #[test]
    fn several_unknown_fields_are_reported_with_a_weights_error() {
        let yaml = "\
upstreams:
  old: { url: http://127.0.0.1:9001 }
  new: { url: http://127.0.0.1:9002, timout: 2s }
experiments:
  - name: e
    Salt: abc
    routes: [/predict]
    variants:
      - { name: control, upstream: old, weight: 60 }
      - { name: treatment, upstream: new, wieght: 50 }
";
        let errs = check(yaml).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert_error(
            &errs[0],
            "upstreams.new",
            (3, 38),
            "unknown field `timout`",
            Some("did you mean `timeout`?"),
        );
        assert_error(
            &errs[1],
            "experiments[0]",
            (6, 5),
            "unknown field `Salt`",
            Some("did you mean `salt`?"),
        );
        assert_error(
            &errs[2],
            "experiments[0].variants",
            (9, 7),
            "weights sum to 110; they must sum to 100",
            Some("remove 10"),
        );
        assert_error(
            &errs[3],
            "experiments[0].variants[1]",
            (10, 43),
            "unknown field `wieght`",
            Some("did you mean `weight`?"),
        );
    }

    #[test]
    fn type_error_is_located() {
        let e = one_error(&GOOD.replacen("weight: 50", "weight: fifty", 1));
        assert_error(
            &e,
            "experiments[0].variants[0].weight",
            (8, 49),
            "invalid type: string \"fifty\", expected f64",
            None,
        );
    }

    #[test]
    fn type_error_next_to_an_unknown_field_is_located_by_its_path() {
        let errs =
            check(&with_experiment_line("colour: red").replacen("weight: 50", "weight: fifty", 1))
                .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_error(
            &errs[0],
            "experiments[0]",
            (7, 5),
            "unknown field `colour`",
            Some("expected one of"),
        );
        assert_error(
            &errs[1],
            "experiments[0].variants[0].weight",
            (9, 49),
            "invalid type: string \"fifty\", expected f64",
            None,
        );
    }

    #[test]
    fn weights_not_summing_to_100_name_line_and_hint() {
        let e = one_error(&GOOD.replace(
            "weight: 50 }\n      - { name: treatment",
            "weight: 60 }\n      - { name: treatment",
        ));
        assert_error(
            &e,
            "experiments[0].variants",
            (8, 7),
            "weights sum to 110; they must sum to 100",
            Some("remove 10 from some weights"),
        );
        let e = one_error(&GOOD.replacen("weight: 50", "weight: 30", 1));
        assert_error(
            &e,
            "experiments[0].variants",
            (8, 7),
            "weights sum to 80; they must sum to 100",
            Some("add 20 to some weights"),
        );
    }

    #[test]
    fn too_many_decimals_rejected() {
        let e = one_error(&GOOD.replace(
            "weight: 50 }\n      - { name: treatment",
            "weight: 50.001 }\n      - { name: treatment",
        ));
        assert_error(
            &e,
            "experiments[0].variants[0].weight",
            (8, 49),
            "weight 50.001 is not a percentage with at most two decimals",
            Some("e.g. 33.33"),
        );
    }

    #[test]
    fn unknown_upstream_is_located() {
        let e = one_error(&GOOD.replace("upstream: new", "upstream: newer"));
        assert_error(
            &e,
            "experiments[0].variants[1].upstream",
            (9, 38),
            "unknown upstream \"newer\"",
            Some("did you mean \"new\"? defined upstreams: new, old"),
        );
        let e = one_error(&format!("default_upstream: olt\n{GOOD}"));
        assert_error(
            &e,
            "default_upstream",
            (1, 19),
            "unknown upstream \"olt\"",
            Some("did you mean \"old\"?"),
        );
    }

    #[test]
    fn duplicates_are_errors_and_all_are_reported() {
        let bad = GOOD
            .replace("name: treatment", "name: control")
            .replace("weight: 50 }\n", "weight: 40 }\n");
        let errs = check(&bad).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_error(
            &errs[0],
            "experiments[0].variants",
            (8, 7),
            "weights sum to 80",
            Some("add 20"),
        );
        assert_error(
            &errs[1],
            "experiments[0].variants[1].name",
            (9, 17),
            "duplicate variant name \"control\"",
            None,
        );
    }

    #[test]
    fn duplicate_experiment_name_is_located() {
        let second = "  - name: e\n    routes: [/other]\n    variants:\n      - { name: control, upstream: old, weight: 100 }\n";
        let e = one_error(&format!("{GOOD}{second}"));
        assert_error(
            &e,
            "experiments[1].name",
            (10, 11),
            "duplicate experiment name \"e\"",
            Some("experiment names must be unique"),
        );
    }

    #[test]
    fn a_route_listed_twice_says_so() {
        let e = one_error(&GOOD.replace("routes: [/predict]", "routes: [/predict, /predict]"));
        assert_error(
            &e,
            "experiments[0].routes[1]",
            (6, 24),
            "route \"/predict\" is listed twice",
            Some("remove the duplicate"),
        );
    }

    #[test]
    fn a_route_of_two_experiments_is_an_error() {
        let second = "  - name: f\n    routes: [/predict]\n    variants:\n      - { name: control, upstream: old, weight: 100 }\n";
        let e = one_error(&format!("{GOOD}{second}"));
        assert_error(
            &e,
            "experiments[1].routes[0]",
            (11, 14),
            "route \"/predict\" already belongs to experiment \"e\"",
            Some("a route can serve one experiment only"),
        );
    }

    #[test]
    fn bad_routes_are_located() {
        let errs = check(&GOOD.replace("[/predict]", "[predict, /a*b]")).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_error(
            &errs[0],
            "experiments[0].routes[0]",
            (6, 14),
            "route \"predict\" must start with '/'",
            None,
        );
        assert_error(
            &errs[1],
            "experiments[0].routes[1]",
            (6, 23),
            "'*' is allowed only at the end",
            Some("for a prefix"),
        );
    }

    #[test]
    fn bad_duration_is_located() {
        let e = one_error(&GOOD.replace("9001 }", "9001, timeout: 5 seconds }"));
        assert_error(
            &e,
            "upstreams.old.timeout",
            (2, 47),
            "\"5 seconds\" is not a duration",
            Some("500ms, 2s or 1m"),
        );
    }

    #[test]
    fn bad_listen_addresses_are_located() {
        let e = one_error(&format!("listen: \"8080\"\n{GOOD}"));
        assert_error(
            &e,
            "listen",
            (1, 9),
            "\"8080\" is not an address",
            Some("host:port"),
        );
        let env = Env {
            admin_token: Some("t".into()),
            ..Env::default()
        };
        let errs = check_with(&format!("{GOOD}admin: {{ listen: nowhere }}\n"), &env).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_error(
            &errs[0],
            "admin.listen",
            (10, 18),
            "\"nowhere\" is not an address",
            Some("host:port"),
        );
    }

    #[test]
    fn unknown_on_missing_unit_is_located() {
        let e = one_error(&with_experiment_line("on_missing_unit: drop"));
        assert_error(
            &e,
            "experiments[0].on_missing_unit",
            (7, 22),
            "unknown policy \"drop\"",
            Some("expected control or reject"),
        );
    }

    #[test]
    fn coverage_out_of_range_is_located() {
        for bad in ["1.5", "0", "0.00001"] {
            let e = one_error(&with_experiment_line(&format!("coverage: {bad}")));
            assert_error(
                &e,
                "experiments[0].coverage",
                (7, 15),
                &format!("coverage {bad} must be a share above 0 and at most 1"),
                Some("coverage: 0.8"),
            );
        }
    }

    #[test]
    fn override_naming_an_unknown_variant_is_located() {
        let e = one_error(&with_experiment_line("overrides: { treatmnt: [alice] }"));
        assert_error(
            &e,
            "experiments[0].overrides.treatmnt",
            (7, 28),
            "overrides name unknown variant \"treatmnt\"",
            Some("did you mean \"treatment\"? variants: control, treatment"),
        );
    }

    #[test]
    fn tls_needs_both_files_and_resolves_them_against_the_config_folder() {
        let e = one_error(&format!("{GOOD}tls: {{ cert_file: c.pem }}\n"));
        assert_eq!(e.path, "tls.key_file", "{e}");
        assert!(e.message.contains("tls needs key_file"), "{e}");
        let c = check(&format!(
            "{GOOD}tls: {{ cert_file: certs/c.pem, key_file: /keys/k.pem, client_ca_file: ca.pem }}\n"
        ))
        .unwrap();
        assert_eq!(
            c.tls,
            Some(TlsConfig {
                cert_file: PathBuf::from("/base/certs/c.pem"),
                key_file: PathBuf::from("/keys/k.pem"),
                client_ca_file: Some(PathBuf::from("/base/ca.pem")),
            })
        );
        assert_eq!(check(GOOD).unwrap().tls, None);
    }

    #[test]
    fn admin_block_without_token_is_an_error() {
        let yaml = format!("{GOOD}admin: {{ listen: 127.0.0.1:9901 }}\n");
        let e = one_error(&yaml);
        assert_error(
            &e,
            "admin",
            (10, 8),
            "the admin API needs a bearer token",
            Some("COHORT_ADMIN_TOKEN"),
        );
        let env = Env {
            admin_token: Some("t".into()),
            ..Env::default()
        };
        assert!(check_with(&yaml, &env).is_ok());
    }

    #[test]
    fn rotation_and_compression_validate() {
        let yaml = format!(
            "access_log: {{ path: ./a.jsonl, rotate: {{ max_bytes: 64MiB, max_age: 1h }}, compress: gzip }}\n{GOOD}"
        );
        let c = check(&yaml).unwrap();
        let r = c.access_log.rotate.unwrap();
        assert_eq!(r.max_bytes, Some(64 << 20));
        assert_eq!(r.max_age, Some(Duration::from_secs(3600)));
        assert!(c.access_log.gzip);
        let plain =
            format!("access_log: {{ path: ./a.jsonl, rotate: {{ max_bytes: 4096 }} }}\n{GOOD}");
        let c = check(&plain).unwrap();
        assert_eq!(c.access_log.rotate.unwrap().max_bytes, Some(4096));
        assert!(!c.access_log.gzip);

        let bad = |log: &str| one_error(&format!("access_log: {log}\n{GOOD}"));
        assert_error(
            &bad("{ path: ./a, rotate: { max_bytes: 12XB } }"),
            "access_log.rotate.max_bytes",
            (1, 47),
            "not a size",
            Some("64KiB"),
        );
        assert_error(
            &bad("{ path: ./a, rotate: { max_age: 10ms } }"),
            "access_log.rotate.max_age",
            (1, 45),
            "at least 1s",
            Some("24h"),
        );
        assert_error(
            &bad("{ path: ./a, rotate: {} }"),
            "access_log.rotate",
            (1, 34),
            "needs max_bytes, max_age or both",
            Some("max_bytes"),
        );
        assert_error(
            &bad("{ path: '-', rotate: { max_bytes: 1 } }"),
            "access_log.rotate",
            (1, 34),
            "stdout cannot be rotated",
            Some("drop rotate"),
        );
        assert_error(
            &bad("{ path: ./a, compress: gzip }"),
            "access_log.compress",
            (1, 36),
            "compress needs rotate",
            Some("logrotate"),
        );
        assert_error(
            &bad("{ path: ./a, rotate: { max_age: 1h }, compress: zstd }"),
            "access_log.compress",
            (1, 61),
            "unknown value \"zstd\"",
            Some("gzip or none"),
        );
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("1.5MiB"), None);
    }

    #[test]
    fn hashed_log_unit_without_key_is_an_error() {
        let yaml = format!("access_log: {{ path: '-', log_unit: hashed }}\n{GOOD}");
        let e = one_error(&yaml);
        assert_error(
            &e,
            "access_log.log_unit",
            (1, 36),
            "log_unit: hashed needs a key",
            Some("COHORT_LOG_UNIT_KEY"),
        );
        let env = Env {
            log_unit_key: Some("k".into()),
            ..Env::default()
        };
        assert!(check_with(&yaml, &env).is_ok());
    }

    #[test]
    fn first_variant_disabled_is_an_error() {
        let e = one_error(&GOOD.replacen("weight: 50 }", "weight: 50, disabled: true }", 1));
        assert_error(
            &e,
            "experiments[0].variants[0].disabled",
            (8, 63),
            "it cannot be disabled",
            Some("paused: true"),
        );
    }

    #[test]
    fn errors_are_sorted_and_each_reported_once() {
        let at = |line, path: &str, message: &str| ConfigError {
            path: path.into(),
            position: Position { line, column: 1 },
            message: message.into(),
            hint: None,
        };
        let list = vec![
            at(3, "b", "x"),
            at(1, "a", "x"),
            at(3, "b", "x"),
            at(3, "b", "y"),
        ];
        let got: Vec<_> = sorted_unique(list)
            .into_iter()
            .map(|e| (e.position.line, e.message))
            .collect();
        assert_eq!(got, vec![(1, "x".into()), (3, "x".into()), (3, "y".into())]);
    }

    #[test]
    fn serde_positions_are_not_repeated_in_the_message() {
        assert_eq!(
            strip_locations("did not find expected ',' or '}' at line 5 column 12, while parsing a flow mapping at line 4 column 3"),
            "did not find expected ',' or '}', while parsing a flow mapping"
        );
        assert_eq!(
            strip_locations("unknown field `x` at line 2"),
            "unknown field `x` at line 2"
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("0s"), None);
    }

    #[test]
    fn endpoints_health_and_fallback_validate_with_defaults() {
        let c = check(&GOOD.replace(
            "new: { url: http://127.0.0.1:9002 }",
            "new: { endpoints: [http://127.0.0.1:9002, 'http://10.0.0.6'], health: { path: /ready } }",
        ).replace("upstream: new, weight: 50 }", "upstream: new, weight: 50, fallback: old }"))
        .unwrap();
        let u = &c.upstreams["new"];
        assert_eq!(u.authority, "127.0.0.1:9002");
        assert_eq!(u.extra_endpoints, ["10.0.0.6:80"]);
        let h = u.health.as_ref().unwrap();
        assert_eq!(
            (
                h.path.as_str(),
                h.interval,
                h.timeout,
                h.unhealthy_after,
                h.healthy_after
            ),
            (
                "/ready",
                Duration::from_secs(5),
                Duration::from_secs(1),
                3,
                2
            )
        );
        assert_eq!((u.eject_after, u.eject_for), (5, Duration::from_secs(10)));
        assert_eq!(u.total_timeout, None);
        assert_eq!(
            c.experiments[0].variants[1].fallback.as_deref(),
            Some("old")
        );
    }

    #[test]
    fn endpoint_and_fallback_errors_are_located() {
        let both = GOOD.replace(
            "new: { url: http://127.0.0.1:9002 }",
            "new: { url: http://127.0.0.1:9002, endpoints: [http://127.0.0.1:9003] }",
        );
        assert_error(
            &one_error(&both),
            "upstreams.new.endpoints",
            (3, 49),
            "both set",
            Some("keep one"),
        );
        let neither = GOOD.replace(
            "new: { url: http://127.0.0.1:9002 }",
            "new: { timeout: 1s }",
        );
        assert!(one_error(&neither)
            .message
            .contains("needs `url` or `endpoints`"));
        let bad = GOOD.replace(
            "new: { url: http://127.0.0.1:9002 }",
            "new: { endpoints: [http://127.0.0.1:9002, ftp://x] }",
        );
        assert_eq!(one_error(&bad).path, "upstreams.new.endpoints[1]");
        let twice = GOOD.replace(
            "new: { url: http://127.0.0.1:9002 }",
            "new: { endpoints: [http://127.0.0.1:9002, http://127.0.0.1:9002] }",
        );
        assert!(one_error(&twice).message.contains("listed twice"));
        let zero = GOOD.replace(
            "new: { url: http://127.0.0.1:9002 }",
            "new: { url: http://127.0.0.1:9002, health: { path: /h, unhealthy_after: 0 } }",
        );
        assert_eq!(
            one_error(&zero).path,
            "upstreams.new.health.unhealthy_after"
        );
        let own = GOOD.replace(
            "upstream: new, weight: 50 }",
            "upstream: new, weight: 50, fallback: new }",
        );
        assert_eq!(one_error(&own).path, "experiments[0].variants[1].fallback");
        let unknown = GOOD.replace(
            "upstream: new, weight: 50 }",
            "upstream: new, weight: 50, fallback: nwe }",
        );
        assert!(one_error(&unknown)
            .message
            .contains("unknown upstream \"nwe\""));
    }

    #[test]
    fn the_new_upstream_fields_absent_or_default_keep_the_version() {
        let a = check(GOOD).unwrap().version();
        let same = GOOD.replace(
            "new: { url: http://127.0.0.1:9002 }",
            "new: { endpoints: [http://127.0.0.1:9002], eject_after: 5, eject_for: 10s }",
        );
        assert_eq!(check(&same).unwrap().version(), a);
        for changed in [
            "new: { endpoints: [http://127.0.0.1:9002, http://127.0.0.1:9003] }",
            "new: { url: http://127.0.0.1:9002, health: { path: /h } }",
            "new: { url: http://127.0.0.1:9002, total_timeout: 1m }",
            "new: { url: http://127.0.0.1:9002, eject_after: 2 }",
        ] {
            let y = GOOD.replace("new: { url: http://127.0.0.1:9002 }", changed);
            assert_ne!(check(&y).unwrap().version(), a, "{changed}");
        }
        let fb = GOOD.replace(
            "upstream: new, weight: 50 }",
            "upstream: new, weight: 50, fallback: old }",
        );
        assert_ne!(check(&fb).unwrap().version(), a);
    }

    #[test]
    fn comment_only_edit_keeps_the_version() {
        let a = check(GOOD).unwrap().version();
        let b = check(&format!("# a comment\n{GOOD}")).unwrap().version();
        assert_eq!(a, b);
        let c = check(&GOOD.replace("9002", "9003")).unwrap().version();
        assert_ne!(a, c);
    }

    #[test]
    fn upstream_protocol_and_tls_are_checked_with_their_files() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let files = InMemory::default()
            .with("/base/ca.pem", ca.cert.pem())
            .with("/base/c.pem", ca.cert.pem())
            .with("/base/k.pem", ca.key_pair.serialize_pem())
            .with("/base/bad.pem", "not PEM");
        let slot = "new: { url: http://127.0.0.1:9002 }";
        let good = GOOD.replace(slot, "new: { url: 'https://models.internal', protocol: h2, tls: { ca_file: ca.pem, cert_file: c.pem, key_file: k.pem, server_name: m.internal } }");
        let c = check_files(&good, &Env::default(), &files).unwrap();
        let u = &c.upstreams["new"];
        assert_eq!(u.authority, "models.internal:443");
        assert_eq!(u.protocol, UpstreamProtocol::H2);
        let t = u.tls.as_ref().unwrap();
        assert_eq!(t.ca.as_deref(), Some(ca.cert.pem().as_bytes()));
        assert!(t.client_cert.is_some());
        assert_eq!(t.server_name.as_deref(), Some("m.internal"));
        assert!(!format!("{t:?}").contains("PRIVATE"), "no key in Debug");
        assert_eq!(c.upstreams["old"].protocol, UpstreamProtocol::Http1);
        assert!(c.upstreams["old"].tls.is_none());
        for (changed, path, phrase) in [
            (
                "new: { url: http://127.0.0.1:9002, protocol: h3 }",
                "upstreams.new.protocol",
                "unknown protocol",
            ),
            (
                "new: { url: http://127.0.0.1:9002, tls: { ca_file: ca.pem } }",
                "upstreams.new.tls",
                "http:// URLs",
            ),
            (
                "new: { endpoints: ['https://a:1', 'http://b:1'] }",
                "upstreams.new.endpoints[1]",
                "mix http:// and https://",
            ),
            (
                "new: { url: 'https://a:1', tls: { ca_file: bad.pem } }",
                "upstreams.new.tls.ca_file",
                "no certificate",
            ),
            (
                "new: { url: 'https://a:1', tls: { ca_file: missing.pem } }",
                "upstreams.new.tls.ca_file",
                "cannot read",
            ),
            (
                "new: { url: 'https://a:1', tls: { ca_file: ca.pem, cert_file: c.pem } }",
                "upstreams.new.tls.cert_file",
                "go together",
            ),
            (
                "new: { url: 'https://a:1', tls: { ca_file: ca.pem, server_name: 'a b' } }",
                "upstreams.new.tls.server_name",
                "not a DNS name",
            ),
        ] {
            let errs =
                check_files(&GOOD.replace(slot, changed), &Env::default(), &files).unwrap_err();
            assert_eq!(errs.len(), 1, "{changed}: {errs:?}");
            assert_eq!(errs[0].path, path, "{changed}: {errs:?}");
            assert!(errs[0].message.contains(phrase), "{changed}: {errs:?}");
        }
    }

    #[test]
    fn a_redis_store_block_is_read_with_its_defaults_and_secrets_from_files() {
        let yaml = format!("store: {{ kind: redis, url: 'redis://u:secret@r:6379/2', password_file: pw, tls_ca_file: /ca.pem }}\n{GOOD}");
        let files = InMemory::default()
            .with("/base/pw", "from-file\n")
            .with("/ca.pem", "PEM");
        let c = check_files(&yaml, &Env::default(), &files).unwrap();
        let r = c.redis.as_ref().unwrap();
        assert_eq!(r.urls, ["redis://u:secret@r:6379/2"]);
        assert!(!r.cluster);
        assert_eq!(r.key_prefix, "cohort");
        assert_eq!(r.timeout, Duration::from_millis(50));
        assert_eq!(r.on_store_error, OnStoreError::ServeByHash);
        assert_eq!(r.wait_replicas, 0);
        assert_eq!(r.password.as_deref(), Some("from-file"));
        assert_eq!(r.tls_ca.as_deref(), Some(&b"PEM"[..]));
        // Neither the password nor the URL's reaches Debug or the record.
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("from-file"),
            "{shown}"
        );
        let record = serde_json::to_string(&crate::config::record::ConfigRecord::of(&c)).unwrap();
        assert!(
            !record.contains("secret") && !record.contains("from-file"),
            "{record}"
        );
        assert!(record.contains("redis://u:***@r:6379/2"), "{record}");
        // Several urls mean a cluster.
        let yaml = format!("store: {{ kind: redis, urls: ['redis://a:1', 'redis://b:1'], key_prefix: exp-1, on_store_error: reject, timeout: 20ms, wait_replicas: 1 }}\n{GOOD}");
        let c = check(&yaml).unwrap();
        let r = c.redis.unwrap();
        assert!(r.cluster);
        assert_eq!(r.on_store_error, OnStoreError::Reject);
        assert_eq!((r.timeout, r.wait_replicas), (Duration::from_millis(20), 1));
        // The embedded store stays the default, `store: { path }` as before.
        let c = check(&format!("store: {{ path: ./d }}\n{GOOD}")).unwrap();
        assert!(c.redis.is_none());
        assert_eq!(c.store_path, PathBuf::from("/base/./d"));
        assert_eq!(c.durability, Durability::Sync);
        let c = check(&format!(
            "store: {{ path: ./d, durability: write }}\n{GOOD}"
        ))
        .unwrap();
        assert_eq!(c.durability, Durability::Write);
        // `sync`, the default, may be spelled out on a redis store too
        // (one template for both); only `write` is the journal's alone.
        check(&format!(
            "store: {{ kind: redis, url: 'redis://x', durability: sync }}\n{GOOD}"
        ))
        .unwrap();
        // Only a non-default durability shows in the record (and version).
        let plain = crate::config::record::ConfigRecord::of(
            &check(&format!("store: {{ path: ./d }}\n{GOOD}")).unwrap(),
        );
        let synced = crate::config::record::ConfigRecord::of(
            &check(&format!("store: {{ path: ./d, durability: sync }}\n{GOOD}")).unwrap(),
        );
        let written = crate::config::record::ConfigRecord::of(&c);
        assert_eq!(plain.version(), synced.version());
        assert_ne!(plain.version(), written.version());
    }

    #[test]
    fn store_block_errors_are_each_reported_with_their_path() {
        let cases = [
            ("kind: postgres", "store.kind"),
            ("kind: redis", "store"),
            ("kind: redis, url: 'http://x'", "store.url"),
            ("kind: redis, url: 'redis://x', path: ./d", "store.path"),
            (
                "kind: redis, url: 'redis://x', key_prefix: 'a{b}'",
                "store.key_prefix",
            ),
            (
                "kind: redis, url: 'redis://x', timeout: fast",
                "store.timeout",
            ),
            (
                "kind: redis, url: 'redis://x', on_store_error: retry",
                "store.on_store_error",
            ),
            (
                "kind: redis, url: 'redis://x', password_file: nope",
                "store.password_file",
            ),
            ("url: 'redis://x'", "store.url"),
            ("durability: eventually", "store.durability"),
            (
                "kind: redis, url: 'redis://x', durability: write",
                "store.durability",
            ),
            (
                "kind: redis, url: 'redis://x', urls: ['redis://y']",
                "store.urls",
            ),
        ];
        for (block, path) in cases {
            let errs = check(&format!("store: {{ {block} }}\n{GOOD}")).unwrap_err();
            assert!(errs.iter().any(|e| e.path == path), "{block}: {errs:?}");
        }
    }

    #[test]
    fn named_files_are_read_relative_to_the_config_through_the_source() {
        let yaml = GOOD
            .replace(
                "upstreams:",
                "admin: { token_file: secret/token }\naccess_log: { path: -, log_unit: hashed, log_unit_key_file: /keys/k }\nupstreams:",
            )
            .replace("    routes: [/predict]\n", "    routes: [/predict]\n    overrides_file: qa.yaml\n");
        let files = InMemory::default()
            .with("/base/secret/token", "tok\n")
            .with("/keys/k", "key \n")
            .with("/base/qa.yaml", "treatment: [qa-1, qa-2]\n");
        let c = check_files(&yaml, &Env::default(), &files).unwrap();
        assert_eq!(c.admin.as_ref().unwrap().token, "tok");
        assert!(matches!(&c.access_log.unit, LogUnit::Hashed { key, .. } if key == b"key"));
        assert_eq!(c.experiments[0].overrides.get("qa-2"), Some(&1));
        assert_eq!(
            c.watched,
            vec![
                PathBuf::from("/base/secret/token"),
                PathBuf::from("/keys/k"),
                PathBuf::from("/base/qa.yaml")
            ]
        );
        // Each missing file is its own located error; nothing touches the disk.
        let errs = check_files(&yaml, &Env::default(), &InMemory::default()).unwrap_err();
        let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "access_log.log_unit_key_file",
                "admin.token_file",
                "experiments[0].overrides_file"
            ],
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.message == "cannot read /base/qa.yaml: No such file or directory"),
            "{errs:?}"
        );
    }

    #[test]
    fn bucketing_takes_each_vendors_parameters_with_defaults() {
        let x = |line: &str| {
            check(&with_experiment_line(line)).unwrap().experiments[0]
                .bucketing
                .clone()
        };
        assert_eq!(x("salt: s"), Bucketing::Cohort);
        assert_eq!(x("bucketing: { scheme: cohort }"), Bucketing::Cohort);
        assert_eq!(
            x("bucketing: { scheme: growthbook }"),
            Bucketing::Growthbook {
                seed: "e".into(),
                hash_version: 1,
                vendor_weights: None
            }
        );
        // An unquoted integer seed and experiment id are read as text.
        assert_eq!(
            x("bucketing: { scheme: launchdarkly, flag_key: f, seed: 61 }"),
            Bucketing::Launchdarkly {
                flag_key: "f".into(),
                salt: String::new(),
                seed: Some(61),
                vendor_weights: None
            }
        );
        assert_eq!(
            x("bucketing: { scheme: optimizely, experiment_id: 12345, vendor_weights: [5000, 5000] }"),
            Bucketing::Optimizely {
                experiment_id: "12345".into(),
                vendor_weights: Some(vec![
                    crate::terms::VendorWeight(5000.0),
                    crate::terms::VendorWeight(5000.0)
                ])
            }
        );
        // Vendor weights that the percentages round to are accepted.
        let ld = with_experiment_line("bucketing: { scheme: launchdarkly, flag_key: f, salt: s, vendor_weights: [42157, 57843] }")
            .replace("weight: 50 }\n      - { name: treatment, upstream: new, weight: 50 }", "weight: 42.16 }\n      - { name: treatment, upstream: new, weight: 57.84 }");
        assert!(check(&ld).is_ok(), "{:?}", check(&ld).err());
        assert_eq!(
            x("bucketing: { scheme: unleash }"),
            Bucketing::Unleash {
                group_id: "e".into(),
                vendor_weights: None
            }
        );
    }

    #[test]
    fn bucketing_errors_name_the_parameter() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "bucketing: { scheme: split }",
                "experiments[0].bucketing.scheme",
                "unknown bucketing scheme",
            ),
            (
                "bucketing: { scheme: launchdarkly, salt: a }",
                "experiments[0].bucketing.flag_key",
                "needs a non-empty `flag_key`",
            ),
            (
                "bucketing: { scheme: growthbook, flag_key: a }",
                "experiments[0].bucketing.flag_key",
                "not a parameter of the growthbook scheme",
            ),
            (
                "bucketing: { scheme: growthbook, hash_version: 3 }",
                "experiments[0].bucketing.hash_version",
                "does not exist",
            ),
            (
                "bucketing: { scheme: nginx, key: AAA }",
                "experiments[0].bucketing.key",
                "must contain ${unit}",
            ),
            (
                "bucketing: { scheme: optimizely, experiment_id: '1', vendor_weights: [1] }",
                "experiments[0].bucketing.vendor_weights",
                "1 vendor weights for 2 variants",
            ),
            (
                "bucketing: { scheme: launchdarkly, flag_key: f, salt: s, vendor_weights: [1, 2] }",
                "experiments[0].bucketing.vendor_weights",
                "must sum to 100000",
            ),
            (
                "bucketing: { scheme: unleash, vendor_weights: [0.5, 499.5] }",
                "experiments[0].bucketing.vendor_weights",
                "whole numbers",
            ),
            (
                "bucketing: { scheme: launchdarkly, flag_key: f, salt: s }\n    coverage: 0.5",
                "experiments[0].coverage",
                "no coverage",
            ),
            (
                "bucketing: { scheme: statsig }\n    coverage: 0.5",
                "experiments[0].bucketing.rule_salt",
                "pass percentage",
            ),
            (
                "bucketing: { scheme: unleash }\n    coverage: 0.255",
                "experiments[0].coverage",
                "whole percentage",
            ),
            (
                "bucketing: { scheme: launchdarkly, flag_key: f, salt: s, vendor_weights: [42157, 57843] }",
                "experiments[0].variants[0].weight",
                "disagrees with vendor_weights, which give 42.1570%",
            ),
        ];
        for (line, path, msg) in cases {
            let errs = check(&with_experiment_line(line)).unwrap_err();
            assert!(
                errs.iter()
                    .any(|e| e.path == *path && e.message.contains(msg) && e.position.line > 0),
                "{line}: {errs:?}"
            );
        }
    }
}
