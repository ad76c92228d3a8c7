//! Which keys each place of the config file takes, and the check that reports
//! every other key at once, each at its line and column with a did-you-mean,
//! before serde sees the file (serde stops at the first unknown field).
//!
//! [`CONFIG`] is the one table of allowed keys; it mirrors `raw.rs` field for
//! field, and a unit test fails when the two drift apart.

use std::collections::BTreeSet;

use serde_yaml::Value;

use super::{ConfigError, PositionIndex};

/// The shape of a config value, as far as its keys go.
#[derive(Debug)]
pub(super) enum Shape {
    /// A mapping with exactly these keys: a struct of `raw.rs`.
    Fields(FieldTable),
    /// A mapping whose keys are names the user picks, each value of this shape.
    Names(&'static Shape),
    /// A list, each item of this shape.
    List(&'static Shape),
    /// A scalar: no keys to check.
    Leaf,
}

/// A struct's keys, each with the shape of its value.
pub(super) type FieldTable = &'static [(&'static str, Shape)];

use Shape::{Fields, Leaf, List, Names};

/// The whole file (`RawConfig`).
pub(super) const CONFIG: Shape = Fields(&[
    ("listen", Leaf),
    ("store", STORE),
    ("access_log", ACCESS_LOG),
    ("upstreams", Names(&UPSTREAM)),
    ("default_upstream", Leaf),
    ("experiments", List(&EXPERIMENT)),
    ("runtime", RUNTIME),
    ("admin", ADMIN),
    ("tls", TLS),
]);

/// `RawStore`.
const STORE: Shape = Fields(&[
    ("kind", Leaf),
    ("path", Leaf),
    ("durability", Leaf),
    ("url", Leaf),
    ("urls", List(&Leaf)),
    ("cluster", Leaf),
    ("key_prefix", Leaf),
    ("timeout", Leaf),
    ("on_store_error", Leaf),
    ("wait_replicas", Leaf),
    ("password_file", Leaf),
    ("tls_ca_file", Leaf),
]);

/// `RawAccessLog`.
const ACCESS_LOG: Shape = Fields(&[
    ("path", Leaf),
    ("log_unit", Leaf),
    ("log_unit_key_file", Leaf),
    ("rotate", ROTATE),
    ("compress", Leaf),
]);

/// `RawRotate`.
const ROTATE: Shape = Fields(&[("max_bytes", Leaf), ("max_age", Leaf)]);

/// `RawUpstream`, the value of `upstreams.<name>`.
const UPSTREAM: Shape = Fields(&[
    ("url", Leaf),
    ("endpoints", List(&Leaf)),
    ("connect_timeout", Leaf),
    ("timeout", Leaf),
    ("total_timeout", Leaf),
    ("max_idle_per_host", Leaf),
    ("health", HEALTH),
    ("eject_after", Leaf),
    ("eject_for", Leaf),
    ("protocol", Leaf),
    ("tls", UPSTREAM_TLS),
]);

/// `RawUpstreamTls`, TLS to an `https://` upstream.
const UPSTREAM_TLS: Shape = Fields(&[
    ("ca_file", Leaf),
    ("cert_file", Leaf),
    ("key_file", Leaf),
    ("server_name", Leaf),
]);

/// `RawHealth`, an upstream's active health check.
const HEALTH: Shape = Fields(&[
    ("path", Leaf),
    ("interval", Leaf),
    ("timeout", Leaf),
    ("unhealthy_after", Leaf),
    ("healthy_after", Leaf),
]);

/// `RawExperiment`; `overrides` maps variant names to lists of unit ids.
const EXPERIMENT: Shape = Fields(&[
    ("name", Leaf),
    ("routes", List(&Leaf)),
    ("unit_header", Leaf),
    ("salt", Leaf),
    ("variants", List(&VARIANT)),
    ("on_missing_unit", Leaf),
    ("reset", Leaf),
    ("paused", Leaf),
    ("coverage", Leaf),
    ("overrides", Names(&List(&Leaf))),
    ("overrides_file", Leaf),
    ("bucketing", BUCKETING),
]);

/// `RawBucketing`.
const BUCKETING: Shape = Fields(&[
    ("scheme", Leaf),
    ("seed", Leaf),
    ("hash_version", Leaf),
    ("flag_key", Leaf),
    ("salt", Leaf),
    ("rule_salt", Leaf),
    ("experiment_id", Leaf),
    ("group_id", Leaf),
    ("key", Leaf),
    ("vendor_weights", List(&Leaf)),
]);

/// `RawVariant`.
const VARIANT: Shape = Fields(&[
    ("name", Leaf),
    ("upstream", Leaf),
    ("weight", Leaf),
    ("disabled", Leaf),
    ("fallback", Leaf),
]);

/// `RawRuntime`.
const RUNTIME: Shape = Fields(&[
    ("worker_threads", Leaf),
    ("http1_fast_path", Leaf),
    ("client_idle_timeout", Leaf),
    ("client_header_timeout", Leaf),
    ("client_body_timeout", Leaf),
    ("max_request_head", Leaf),
    ("max_header_count", Leaf),
    ("max_body_bytes", Leaf),
    ("max_connections", Leaf),
    ("shutdown_timeout", Leaf),
]);

/// `RawAdmin`.
const ADMIN: Shape = Fields(&[
    ("listen", Leaf),
    ("token_file", Leaf),
    ("metrics_auth", Leaf),
]);

/// `RawTls`.
const TLS: Shape = Fields(&[
    ("cert_file", Leaf),
    ("key_file", Leaf),
    ("client_ca_file", Leaf),
]);

/// Reports every key of `doc` that [`CONFIG`] does not list, and takes it out
/// so the rest of the file can still be deserialized and validated. A key
/// with a did-you-mean whose field is not also written keeps its value under
/// that field (`wieght: 50` is checked as `weight: 50`), so a typo in a
/// required field does not hide the checks that need it.
pub(super) fn remove_unknown_keys(doc: &mut Value, index: &PositionIndex) -> Vec<ConfigError> {
    let mut out = Vec::new();
    walk(&CONFIG, doc, "", index, &mut out);
    out
}

/// Checks `value`, found at `path`, against `shape`, recursively.
fn walk(
    shape: &Shape,
    value: &mut Value,
    path: &str,
    index: &PositionIndex,
    out: &mut Vec<ConfigError>,
) {
    match (shape, value) {
        (Fields(fields), value @ Value::Mapping(_)) => {
            check_fields(fields, value, path, index, out)
        }
        (Names(inner), Value::Mapping(m)) => {
            for (k, v) in m.iter_mut() {
                walk(inner, v, &join(path, &key_text(k)), index, out);
            }
        }
        (List(inner), Value::Sequence(items)) => {
            for (i, v) in items.iter_mut().enumerate() {
                walk(inner, v, &format!("{path}[{i}]"), index, out);
            }
        }
        // A scalar, or a value of the wrong type: serde reports that.
        _ => {}
    }
}

/// A struct's mapping: known keys are walked, unknown ones reported and
/// dropped, or moved to the field they are a typo of.
fn check_fields(
    fields: FieldTable,
    value: &mut Value,
    path: &str,
    index: &PositionIndex,
    out: &mut Vec<ConfigError>,
) {
    let Value::Mapping(m) = value else { return };
    let mut taken: BTreeSet<String> = m.keys().map(key_text).collect();
    let mut moved = Vec::new();
    m.retain(|k, v| {
        let name = key_text(k);
        let key_path = join(path, &name);
        if let Some((_, inner)) = fields.iter().find(|(f, _)| *f == name) {
            walk(inner, v, &key_path, index, out);
            return true;
        }
        let guess = did_you_mean(&name, fields.iter().map(|(f, _)| *f));
        out.push(unknown_key(path, &name, &key_path, guess, fields, index));
        if let Some(field) = guess.filter(|f| taken.insert(f.to_string())) {
            let (_, inner) = fields.iter().find(|(f, _)| *f == field).expect("a field");
            // Positions are indexed under the key as written.
            walk(inner, v, &key_path, index, out);
            moved.push((field, std::mem::take(v)));
        }
        false
    });
    for (field, v) in moved {
        m.insert(Value::String(field.to_string()), v);
    }
}

/// The error for `name`, an unknown key of the mapping at `path`.
fn unknown_key(
    path: &str,
    name: &str,
    key_path: &str,
    guess: Option<&str>,
    fields: &[(&str, Shape)],
    index: &PositionIndex,
) -> ConfigError {
    let hint = match guess {
        Some(f) => format!("did you mean `{f}`?"),
        None => {
            let names: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
            format!("expected one of: {}", names.join(", "))
        }
    };
    ConfigError {
        path: path.to_string(),
        position: index.key(key_path).unwrap_or_else(|| index.find(key_path)),
        message: format!("unknown field `{name}`"),
        hint: Some(hint),
    }
}

/// The known key that `key` most likely is a typo of: the same but for case,
/// else the closest within two edits (swapping neighbours is one edit).
pub(super) fn did_you_mean<'a>(
    key: &str,
    known: impl Iterator<Item = &'a str> + Clone,
) -> Option<&'a str> {
    let key = key.to_lowercase();
    let same_but_case = known.clone().find(|k| k.to_lowercase() == key);
    same_but_case.or_else(|| {
        known
            .map(|k| (edit_distance(&key, &k.to_lowercase()), k))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| k)
    })
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of adjacent characters each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d: Vec<Vec<usize>> = (0..=a.len())
        .map(|i| (0..=b.len()).map(|j| if i == 0 { j } else { i }).collect())
        .collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let sub = d[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = sub.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A mapping key as text: a string as is, anything else as YAML.
fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::raw::RawConfig;
    use super::*;

    /// Every key of [`CONFIG`], each with a value of its type.
    const FULL: &str = "\
listen: 127.0.0.1:8080
store: { kind: redis, path: ./data, durability: write, url: 'redis://a:1', urls: ['redis://a:1'], cluster: false, key_prefix: c, timeout: 50ms, on_store_error: reject, wait_replicas: 1, password_file: p, tls_ca_file: ca.pem }
access_log: { path: '-', log_unit: hashed, log_unit_key_file: key, rotate: { max_bytes: 64MiB, max_age: 1h }, compress: gzip }
upstreams:
  old: { url: 'http://a:1', endpoints: ['http://b:1'], connect_timeout: 1s, timeout: 2s, total_timeout: 3s, max_idle_per_host: 3, health: { path: /h, interval: 1s, timeout: 1s, unhealthy_after: 2, healthy_after: 2 }, eject_after: 3, eject_for: 5s, protocol: h2, tls: { ca_file: ca.pem, cert_file: c.pem, key_file: k.pem, server_name: s } }
default_upstream: old
experiments:
  - name: e
    routes: [/p]
    unit_header: x-user-id
    salt: s
    variants:
      - { name: control, upstream: old, weight: 100, disabled: false, fallback: old }
    on_missing_unit: control
    reset: 1
    paused: false
    coverage: 0.5
    overrides: { control: [alice] }
    overrides_file: o.yaml
    bucketing: { scheme: growthbook, seed: a, hash_version: 2, flag_key: f, salt: s, rule_salt: r, experiment_id: '1', group_id: g, key: k, vendor_weights: [1] }
runtime: { worker_threads: 2, http1_fast_path: true, client_idle_timeout: 75s, client_header_timeout: 30s, client_body_timeout: 60s, max_request_head: 65536, max_header_count: 100, max_body_bytes: 1000000, max_connections: 100, shutdown_timeout: 1s }
admin: { listen: 127.0.0.1:9901, token_file: t, metrics_auth: true }
tls: { cert_file: c, key_file: k, client_ca_file: ca }
";

    /// Calls `f` with every struct mapping of `value` and its fields.
    fn each_struct(
        shape: &Shape,
        value: &mut Value,
        f: &mut dyn FnMut(FieldTable, &mut serde_yaml::Mapping),
    ) {
        match (shape, value) {
            (Fields(fields), Value::Mapping(m)) => {
                f(fields, m);
                for (name, inner) in fields.iter() {
                    if let Some(v) = m.get_mut(*name) {
                        each_struct(inner, v, f);
                    }
                }
            }
            (Names(inner), Value::Mapping(m)) => {
                m.values_mut().for_each(|v| each_struct(inner, v, f));
            }
            (List(inner), Value::Sequence(items)) => {
                items.iter_mut().for_each(|v| each_struct(inner, v, f));
            }
            _ => {}
        }
    }

    fn full() -> Value {
        serde_yaml::from_str(FULL).unwrap()
    }

    #[test]
    fn the_sample_writes_every_key_of_the_table_and_serde_takes_them() {
        let mut doc = full();
        let mut places = 0;
        each_struct(&CONFIG, &mut doc, &mut |fields, m| {
            places += 1;
            for (name, _) in fields {
                assert!(m.contains_key(*name), "FULL lacks `{name}`");
            }
        });
        assert_eq!(
            places, 13,
            "top, store, access_log, rotate, upstream, health, upstream tls, experiment, variant, bucketing, runtime, admin, tls"
        );
        serde_yaml::from_str::<RawConfig>(FULL).expect("raw.rs takes every key of the table");
        let index = PositionIndex::build(FULL);
        assert_eq!(remove_unknown_keys(&mut doc, &index), vec![]);
    }

    /// serde's unknown-field message lists the fields the struct has; at each
    /// place they must be exactly the table's, so a field added to raw.rs
    /// and not here fails this test.
    #[test]
    fn raw_rs_has_exactly_the_fields_of_the_table() {
        let mut count = 0;
        each_struct(&CONFIG, &mut full(), &mut |_, _| count += 1);
        for n in 0..count {
            let mut doc = full();
            let mut want = Vec::new();
            let mut seen = 0;
            each_struct(&CONFIG, &mut doc, &mut |fields, m| {
                if seen == n {
                    m.insert("zz_not_a_field".into(), Value::Null);
                    want = fields.iter().map(|(f, _)| f.to_string()).collect();
                }
                seen += 1;
            });
            let text = serde_yaml::to_string(&doc).unwrap();
            let err = serde_yaml::from_str::<RawConfig>(&text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown field `zz_not_a_field`"), "{err}");
            let listed = err.split_once("expected").expect("a field list").1;
            let got: Vec<String> = listed
                .split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect();
            want.sort();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            assert_eq!(
                got_sorted, want,
                "raw.rs and the schema table differ: {err}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_reported_where_written_and_removed() {
        let text = "\
listn: 1.2.3.4:5
upstreams:
  a: { url: 'http://a:1', timout: 2s }
experiments:
  - name: e
    Salt: s
    colour: blue
    overrides: { anything: [u] }
";
        let mut doc: Value = serde_yaml::from_str(text).unwrap();
        let errs = remove_unknown_keys(&mut doc, &PositionIndex::build(text));
        let got: Vec<_> = errs
            .iter()
            .map(|e| {
                (
                    e.path.as_str(),
                    e.position.line,
                    e.position.column,
                    e.hint.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("", 1, 1, "did you mean `listen`?"),
                ("upstreams.a", 3, 27, "did you mean `timeout`?"),
                ("experiments[0]", 6, 5, "did you mean `salt`?"),
                ("experiments[0]", 7, 5, "expected one of: name, routes, unit_header, salt, variants, on_missing_unit, reset, paused, coverage, overrides, overrides_file, bucketing"),
            ]
        );
        assert_eq!(errs[3].message, "unknown field `colour`");
        let x = &doc["experiments"][0];
        assert_eq!(x["salt"], Value::from("s"));
        assert!(x.get("Salt").is_none() && x.get("colour").is_none());
        assert_eq!(doc["listen"], Value::from("1.2.3.4:5"));
    }

    #[test]
    fn a_typo_of_a_field_that_is_also_written_is_only_dropped() {
        let text = "listen: a\nlistn: b\n";
        let mut doc: Value = serde_yaml::from_str(text).unwrap();
        let errs = remove_unknown_keys(&mut doc, &PositionIndex::build(text));
        assert_eq!(errs.len(), 1);
        assert_eq!(doc, serde_yaml::from_str::<Value>("listen: a").unwrap());
    }

    #[test]
    fn did_you_mean_takes_case_and_small_typos() {
        let variant = ["name", "upstream", "weight", "disabled"];
        assert_eq!(did_you_mean("wieght", variant.into_iter()), Some("weight"));
        assert_eq!(did_you_mean("WEIGHT", variant.into_iter()), Some("weight"));
        assert_eq!(
            did_you_mean("upstreams", variant.into_iter()),
            Some("upstream")
        );
        assert_eq!(did_you_mean("colour", variant.into_iter()), None);
        let experiment = ["name", "salt", "variants"];
        assert_eq!(did_you_mean("Salt", experiment.into_iter()), Some("salt"));
        assert_eq!(
            did_you_mean("variant", experiment.into_iter()),
            Some("variants")
        );
        assert_eq!(edit_distance("wieght", "weight"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
