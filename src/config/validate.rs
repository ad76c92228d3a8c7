//! Raw config -> validated [`Config`], collecting every problem with its YAML
//! path, position and a hint. Pure but for reading the log-unit key file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::raw::{RawConfig, RawExperiment, RawUpstream};
use super::*;
use crate::assign::buckets::{BucketTable, Weight};

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

pub(super) fn parse_and_validate(
    text: &str,
    file: &Path,
    base: &Path,
    env: &Env,
) -> Result<Config, Vec<ConfigError>> {
    let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| vec![serde_error(&e)])?;
    let index = Arc::new(PositionIndex::build(text));
    let mut errs = Errors {
        index: &index,
        list: Vec::new(),
    };
    let cfg = validate(raw, base, env, &mut errs, file);
    if errs.list.is_empty() {
        let mut cfg = cfg.expect("no errors means a config");
        cfg.positions = index;
        Ok(cfg)
    } else {
        errs.list
            .sort_by_key(|e| (e.position.line, e.position.column));
        Err(errs.list)
    }
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

fn validate(raw: RawConfig, base: &Path, env: &Env, e: &mut Errors, file: &Path) -> Option<Config> {
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

    let store_path = resolve(
        base,
        raw.store.as_ref().map_or("./data", |s| s.path.as_str()),
    );
    let access_log = access_log(&raw, base, env, e);

    let mut upstreams = BTreeMap::new();
    for (name, u) in &raw.upstreams {
        if let Some(up) = upstream(name, u, e) {
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
    let known = |n: &str| raw.upstreams.contains_key(n);
    let known_list = || raw.upstreams.keys().cloned().collect::<Vec<_>>().join(", ");

    if let Some(d) = &raw.default_upstream {
        if !known(d) {
            e.push(
                "default_upstream",
                format!("unknown upstream {d:?}"),
                Some(format!("defined upstreams: {}", known_list())),
            );
        }
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
        if let Some(exp) = experiment(&p, x, base, &known, &known_list, e) {
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
    let admin = admin(&raw, base, env, e);
    Some(Config {
        admin: admin?,
        listen: listen?,
        store_path,
        access_log: access_log?,
        upstreams,
        default_upstream: raw.default_upstream.clone(),
        experiments,
        runtime: runtime?,
        positions: Arc::default(),
        source: file.to_path_buf(),
    })
}

/// `None` on error; `Some(None)` when there is no admin block.
fn admin(raw: &RawConfig, base: &Path, env: &Env, e: &mut Errors) -> Option<Option<AdminConfig>> {
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
    let token = match (&a.token_file, &env.admin_token) {
        (Some(f), _) => match std::fs::read(resolve(base, f)) {
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

fn access_log(raw: &RawConfig, base: &Path, env: &Env, e: &mut Errors) -> Option<AccessLogConfig> {
    let Some(a) = &raw.access_log else {
        return Some(AccessLogConfig {
            target: LogTarget::Stdout,
            unit: LogUnit::Raw,
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
        LogTarget::File(resolve(base, &a.path))
    };
    let unit = match a.log_unit.as_deref().unwrap_or("raw") {
        "raw" => LogUnit::Raw,
        "hashed" => {
            let key = match (&a.log_unit_key_file, &env.log_unit_key) {
                (Some(f), _) => match std::fs::read(resolve(base, f)) {
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
    Some(AccessLogConfig { target, unit })
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

fn upstream(name: &str, u: &RawUpstream, e: &mut Errors) -> Option<UpstreamConfig> {
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
    let authority = match u.url.parse::<http::Uri>() {
        Ok(uri)
            if uri.scheme_str() == Some("http")
                && uri.authority().is_some()
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none() =>
        {
            let a = uri.authority().expect("checked");
            if a.port_u16().is_some() {
                a.to_string()
            } else {
                format!("{}:80", a.host())
            }
        }
        Ok(uri) if uri.scheme_str() == Some("https") => {
            e.push(
                format!("{p}.url"),
                "https upstreams are not supported yet",
                Some("use http://host:port; TLS to upstreams is a planned feature".into()),
            );
            return None;
        }
        _ => {
            e.push(
                format!("{p}.url"),
                format!("{:?} is not an upstream URL", u.url),
                Some("write http://host:port, without a path".into()),
            );
            return None;
        }
    };
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
    Some(UpstreamConfig {
        name: name.to_string(),
        authority,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        max_idle_per_host: u.max_idle_per_host.unwrap_or(256),
    })
    .filter(|_| ok)
}

/// `500ms`, `2s`, `1m`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

fn duration(path: &str, s: Option<&str>, default: Duration, e: &mut Errors) -> Option<Duration> {
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

fn experiment(
    p: &str,
    x: &RawExperiment,
    base: &Path,
    known: &dyn Fn(&str) -> bool,
    known_list: &dyn Fn() -> String,
    e: &mut Errors,
) -> Option<ExperimentConfig> {
    let before = e.list.len();
    if !valid_name(&x.name) {
        e.push(
            format!("{p}.name"),
            format!("invalid experiment name {:?}", x.name),
            Some("use letters, digits, '-', '_' and '.' (at most 64)".into()),
        );
    }
    if x.routes.is_empty() {
        e.push(
            format!("{p}.routes"),
            "an experiment needs at least one route",
            Some("e.g. routes: [/predict]".into()),
        );
    }
    let mut routes = Vec::new();
    for (j, r) in x.routes.iter().enumerate() {
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
    let unit_header = x
        .unit_header
        .clone()
        .unwrap_or_else(|| "x-user-id".into())
        .to_ascii_lowercase();
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
    let salt = x.salt.clone().unwrap_or_else(|| x.name.clone());
    if salt.is_empty() {
        e.push(
            format!("{p}.salt"),
            "empty salt",
            Some("omit it to use the experiment name".into()),
        );
    }
    let on_missing_unit = match x.on_missing_unit.as_deref().unwrap_or("control") {
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
    };

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
        if !known(&v.upstream) {
            e.push(
                format!("{vp}.upstream"),
                format!("unknown upstream {:?}", v.upstream),
                Some(format!("defined upstreams: {}", known_list())),
            );
        }
        match Weight::from_percent(v.weight) {
            Some(w) => {
                sum += u64::from(w.0);
                variants.push(VariantConfig {
                    name: v.name.clone(),
                    upstream: v.upstream.clone(),
                    weight: w,
                    disabled: v.disabled.unwrap_or(false),
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
        if BucketTable::new(&ws).is_none() {
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
    let coverage = match x.coverage {
        None => Weight(10_000),
        Some(c) => match Weight::from_percent(c * 100.0).filter(|w| w.0 > 0) {
            Some(w) => w,
            None => {
                e.push(
                    format!("{p}.coverage"),
                    format!("coverage {c} must be a share above 0 and at most 1, with at most four decimals"),
                    Some("e.g. coverage: 0.8 lets 80% of units enter".into()),
                );
                Weight(10_000)
            }
        },
    };
    let overrides = overrides(p, x, &variants, base, e);
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
    })
}

/// Forced units, inline or from `overrides_file` (the same YAML shape:
/// `{ variant: [unit, ...] }`), as unit -> variant index.
fn overrides(
    p: &str,
    x: &RawExperiment,
    variants: &[VariantConfig],
    base: &Path,
    e: &mut Errors,
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
            let path = resolve(base, f);
            let parsed = std::fs::read_to_string(&path)
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
            let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
            e.push(
                format!("{at}.{variant}"),
                format!("overrides name unknown variant {variant:?}"),
                Some(format!("variants: {}", names.join(", "))),
            );
            continue;
        };
        for u in units {
            if !crate::assign::valid_unit(u.as_bytes()) {
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

fn runtime(raw: &RawConfig, e: &mut Errors) -> Option<RuntimeConfig> {
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
    Some(RuntimeConfig {
        worker_threads,
        shutdown_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Config, Vec<ConfigError>> {
        parse_and_validate(
            yaml,
            Path::new("t.yaml"),
            Path::new("/base"),
            &Env::default(),
        )
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

    fn one_error(yaml: &str) -> ConfigError {
        let errs = check(yaml).expect_err("should be invalid");
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().unwrap()
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
    fn weights_not_summing_to_100_name_line_and_hint() {
        let e = one_error(&GOOD.replace(
            "weight: 50 }\n      - { name: treatment",
            "weight: 60 }\n      - { name: treatment",
        ));
        assert_eq!(e.path, "experiments[0].variants");
        assert_eq!(e.position.line, 8);
        assert!(e.message.contains("sum to 110"), "{}", e.message);
        assert!(e.hint.as_deref().unwrap().contains("remove 10"));
    }

    #[test]
    fn unknown_upstream_is_located() {
        let e = one_error(&GOOD.replace("upstream: new", "upstream: newer"));
        assert_eq!(e.path, "experiments[0].variants[1].upstream");
        assert_eq!((e.position.line, e.position.column), (9, 38));
    }

    #[test]
    fn unknown_field_is_a_serde_error_with_position() {
        let e = one_error(&GOOD.replace(
            "weight: 50 }\n      - { name: treatment",
            "wieght: 50 }\n      - { name: treatment",
        ));
        assert!(
            e.message.contains("unknown field `wieght`"),
            "{}",
            e.message
        );
        assert_eq!(e.position.line, 8);
        assert_eq!(e.path, "experiments[0].variants[0]");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = one_error("upstreams:\n  old: { url: http://a\n");
        assert!(e.position.line >= 2, "{e:?}");
    }

    #[test]
    fn duplicates_are_errors_and_all_are_reported() {
        let bad = GOOD
            .replace("name: treatment", "name: control")
            .replace("weight: 50 }\n", "weight: 40 }\n");
        let errs = check(&bad).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.message.contains("duplicate variant name")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.message.contains("sum to 80")),
            "{errs:?}"
        );
    }

    #[test]
    fn too_many_decimals_rejected() {
        let e = one_error(&GOOD.replace(
            "weight: 50 }\n      - { name: treatment",
            "weight: 50.001 }\n      - { name: treatment",
        ));
        assert_eq!(e.path, "experiments[0].variants[0].weight");
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
    fn a_route_listed_twice_says_so() {
        let e = one_error(&GOOD.replace("routes: [/predict]", "routes: [/predict, /predict]"));
        assert_eq!(e.path, "experiments[0].routes[1]");
        assert!(e.message.contains("listed twice"), "{}", e.message);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("0s"), None);
    }

    #[test]
    fn comment_only_edit_keeps_the_version() {
        let a = check(GOOD).unwrap().version();
        let b = check(&format!("# a comment\n{GOOD}")).unwrap().version();
        assert_eq!(a, b);
        let c = check(&GOOD.replace("9002", "9003")).unwrap().version();
        assert_ne!(a, c);
    }
}
