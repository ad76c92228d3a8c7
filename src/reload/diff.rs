//! The typed config diff: every setting of two applied configs compared,
//! and each difference sorted by how it takes effect.
//!
//! - **rule** settings (salt, unit header, coverage, variant names, order and
//!   weights, bucketing, reset) are judged against the epoch ledger, not here:
//!   [`crate::assign::epoch::diff`] and [`super::plan`] decide the epoch;
//! - **live** settings (routes, upstreams, pause, overrides, disabled, ...)
//!   apply with the next snapshot and keep the epoch: named in the plan as
//!   routing changes;
//! - **restart** settings (sockets, files, threads) are bound at start-up:
//!   reported as needing a restart.
//!
//! [`diff`] destructures every record struct without `..`, so a field added
//! to or renamed in [`ConfigRecord`] does not compile until it is sorted
//! here: no change can silently vanish from a plan.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::record::{
    AccessLogRecord, AdminRecord, ConfigRecord, ExperimentRecord, RuntimeRecord, UpstreamRecord,
    VariantRecord,
};

/// What differs between two configs, beside the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConfigDiff {
    /// Settings bound at start-up that changed: they wait for a restart.
    pub(crate) restart_needed: Vec<&'static str>,
    /// Upstreams added, removed or changed (live).
    pub(crate) upstreams: Vec<String>,
    /// Other config-wide settings that changed (live).
    pub(crate) settings: Vec<String>,
    /// Live changes of each experiment present in both, by name.
    pub(crate) experiments: BTreeMap<String, Vec<String>>,
}

/// `field: old -> new`, values as compact JSON (strings quoted).
fn change<T: Serialize + ?Sized>(field: &str, old: &T, new: &T) -> String {
    let json = |v: &T| serde_json::to_string(v).expect("a config value serializes");
    format!("{field}: {} -> {}", json(old), json(new))
}

/// Every live and restart-only difference from `old` to `new`.
pub(crate) fn diff(old: &ConfigRecord, new: &ConfigRecord) -> ConfigDiff {
    let ConfigRecord {
        listen: listen_a,
        store_path: store_a,
        access_log: log_a,
        upstreams: upstreams_a,
        default_upstream: default_a,
        experiments: experiments_a,
        runtime: runtime_a,
        admin: admin_a,
        store: shared_a,
        tls: tls_a,
        durability: durability_a,
    } = old;
    let ConfigRecord {
        listen: listen_b,
        store_path: store_b,
        access_log: log_b,
        upstreams: upstreams_b,
        default_upstream: default_b,
        experiments: experiments_b,
        runtime: runtime_b,
        admin: admin_b,
        store: shared_b,
        tls: tls_b,
        durability: durability_b,
    } = new;
    let mut d = ConfigDiff::default();
    if listen_a != listen_b {
        d.restart_needed.push("listen");
    }
    if store_a != store_b {
        d.restart_needed.push("store.path");
    }
    if shared_a != shared_b {
        d.restart_needed.push("store");
    }
    if durability_a != durability_b {
        d.restart_needed.push("store.durability");
    }
    // The listener's acceptor re-reads the files' content by itself; which
    // files (and whether there is TLS at all) is fixed at start-up.
    if tls_a != tls_b {
        d.restart_needed.push("tls");
    }
    access_log(log_a, log_b, &mut d);
    runtime(runtime_a, runtime_b, &mut d);
    admin(admin_a.as_ref(), admin_b.as_ref(), &mut d);
    if default_a != default_b {
        d.settings
            .push(change("default_upstream", default_a, default_b));
    }
    for (k, b) in upstreams_b {
        match upstreams_a.get(k) {
            None => d.upstreams.push(format!("upstream {k} added")),
            Some(a) if upstream_changed(a, b) => d.upstreams.push(format!("upstream {k} changed")),
            Some(_) => {}
        }
    }
    for k in upstreams_a.keys().filter(|k| !upstreams_b.contains_key(*k)) {
        d.upstreams.push(format!("upstream {k} removed"));
    }
    for b in experiments_b {
        if let Some(a) = experiments_a.iter().find(|a| a.name == b.name) {
            d.experiments.insert(b.name.clone(), experiment(a, b));
        }
    }
    d
}

fn access_log(a: &AccessLogRecord, b: &AccessLogRecord, d: &mut ConfigDiff) {
    let AccessLogRecord {
        target: target_a,
        unit: unit_a,
        rotate: rotate_a,
        gzip: gzip_a,
    } = a;
    let AccessLogRecord {
        target: target_b,
        unit: unit_b,
        rotate: rotate_b,
        gzip: gzip_b,
    } = b;
    if target_a != target_b {
        d.restart_needed.push("access_log.path");
    }
    // The writer thread owns the file and its rotation from start-up.
    if rotate_a != rotate_b {
        d.restart_needed.push("access_log.rotate");
    }
    if gzip_a != gzip_b {
        d.restart_needed.push("access_log.compress");
    }
    if unit_a != unit_b {
        d.settings
            .push(change("access_log.log_unit", unit_a, unit_b));
    }
}

fn runtime(a: &RuntimeRecord, b: &RuntimeRecord, d: &mut ConfigDiff) {
    let RuntimeRecord {
        worker_threads: workers_a,
        http1_fast_path: fast_a,
        client_idle_timeout: idle_a,
        client_header_timeout: header_a,
        client_body_timeout: body_a,
        max_request_head: head_a,
        shutdown_timeout: shutdown_a,
        max_header_count: count_a,
        max_body_bytes: body_max_a,
        max_connections: conns_a,
    } = a;
    let RuntimeRecord {
        worker_threads: workers_b,
        http1_fast_path: fast_b,
        client_idle_timeout: idle_b,
        client_header_timeout: header_b,
        client_body_timeout: body_b,
        max_request_head: head_b,
        shutdown_timeout: shutdown_b,
        max_header_count: count_b,
        max_body_bytes: body_max_b,
        max_connections: conns_b,
    } = b;
    if workers_a != workers_b {
        d.restart_needed.push("runtime.worker_threads");
    }
    if fast_a != fast_b {
        d.restart_needed.push("runtime.http1_fast_path");
    }
    if (idle_a, header_a, body_a) != (idle_b, header_b, body_b) {
        d.restart_needed.push("runtime.client_*_timeout");
    }
    if head_a != head_b {
        d.restart_needed.push("runtime.max_request_head");
    }
    if shutdown_a != shutdown_b {
        d.restart_needed.push("runtime.shutdown_timeout");
    }
    if count_a != count_b {
        d.restart_needed.push("runtime.max_header_count");
    }
    if body_max_a != body_max_b {
        d.restart_needed.push("runtime.max_body_bytes");
    }
    if conns_a != conns_b {
        d.restart_needed.push("runtime.max_connections");
    }
}

fn admin(a: Option<&AdminRecord>, b: Option<&AdminRecord>, d: &mut ConfigDiff) {
    let split = |r: Option<&AdminRecord>| {
        r.map(|r| {
            let AdminRecord {
                listen,
                token_digest,
                metrics_auth,
            } = r;
            (*listen, (token_digest.clone(), *metrics_auth))
        })
        .unzip()
    };
    let ((listen_a, token_a), (listen_b, token_b)): ((Option<_>, Option<_>), _) =
        (split(a), split(b));
    if listen_a != listen_b {
        d.restart_needed.push("admin.listen");
    }
    if let (Some(_), Some(_), Some((ta, ma)), Some((tb, mb))) =
        (listen_a, listen_b, &token_a, &token_b)
    {
        if ta != tb {
            d.settings.push("admin token rotated".to_string());
        }
        if ma != mb {
            d.settings.push(format!("admin.metrics_auth: {ma} -> {mb}"));
        }
    }
}

/// Every upstream setting is live: a changed upstream gets new pools (and
/// fresh health state) in the next snapshot; unchanged ones keep theirs.
fn upstream_changed(a: &UpstreamRecord, b: &UpstreamRecord) -> bool {
    let UpstreamRecord {
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
    } = a;
    (protocol, tls) != (&b.protocol, &b.tls)
        || (name, authority, connect_timeout, timeout, max_idle_per_host)
            != (
                &b.name,
                &b.authority,
                &b.connect_timeout,
                &b.timeout,
                &b.max_idle_per_host,
            )
        || (
            extra_endpoints,
            total_timeout,
            health,
            eject_after,
            eject_for,
        ) != (
            &b.extra_endpoints,
            &b.total_timeout,
            &b.health,
            &b.eject_after,
            &b.eject_for,
        )
}

/// The live changes of one experiment (its rule is the ledger's to judge).
fn experiment(a: &ExperimentRecord, b: &ExperimentRecord) -> Vec<String> {
    let ExperimentRecord {
        name: _,
        routes: routes_a,
        unit_header: _,
        salt: _,
        variants: variants_a,
        on_missing_unit: missing_a,
        reset: _,
        paused: paused_a,
        coverage: _,
        overrides: overrides_a,
        bucketing: _,
    } = a;
    let ExperimentRecord {
        name: _,
        routes: routes_b,
        // Rule: judged against the ledger by `plan`.
        unit_header: _,
        salt: _,
        variants: variants_b,
        on_missing_unit: missing_b,
        reset: _,
        paused: paused_b,
        coverage: _,
        overrides: overrides_b,
        // Rule: a bucketing change is a new epoch (like a salt change).
        bucketing: _,
    } = b;
    let mut out = Vec::new();
    if routes_a != routes_b {
        out.push(change("routes", routes_a, routes_b));
    }
    if missing_a != missing_b {
        out.push(change("on_missing_unit", missing_a, missing_b));
    }
    if paused_a != paused_b {
        out.push(change("paused", paused_a, paused_b));
    }
    let (oa, ob) = (overrides_a.summary(), overrides_b.summary());
    if oa != ob {
        out.push(format!(
            "overrides: {} -> {} forced units",
            oa.count, ob.count
        ));
    }
    for vb in variants_b {
        let Some(va) = variants_a.iter().find(|v| v.name == vb.name) else {
            continue;
        };
        let VariantRecord {
            name,
            upstream: upstream_a,
            weight: _,
            disabled: disabled_a,
            fallback: fallback_a,
        } = va;
        let VariantRecord {
            name: _,
            upstream: upstream_b,
            // Rule: a weight change is a new epoch.
            weight: _,
            disabled: disabled_b,
            // Live, like the upstream: routing only.
            fallback: fallback_b,
        } = vb;
        if upstream_a != upstream_b {
            out.push(change(
                &format!("variants[{name}].upstream"),
                upstream_a,
                upstream_b,
            ));
        }
        if disabled_a != disabled_b {
            out.push(change(
                &format!("variants[{name}].disabled"),
                disabled_a,
                disabled_b,
            ));
        }
        if fallback_a != fallback_b {
            out.push(change(
                &format!("variants[{name}].fallback"),
                fallback_a,
                fallback_b,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, Env};

    const BASE: &str = "listen: 127.0.0.1:8080
store: { path: ./data }
access_log: { path: ./log.jsonl }
upstreams:
  old: { url: http://127.0.0.1:1 }
  new: { url: http://127.0.0.1:2 }
experiments:
  - name: e
    routes: [/p]
    unit_header: x-user-id
    salt: s
    variants:
      - { name: a, upstream: old, weight: 50 }
      - { name: b, upstream: new, weight: 50 }
admin: { listen: 127.0.0.1:9090 }
";

    fn record(yaml: &str, token: &str) -> ConfigRecord {
        let env = Env {
            log_unit_key: Some("k".into()),
            admin_token: Some(token.into()),
        };
        let c = parse(yaml, Path::new("c.yaml"), Path::new("/d"), &env).unwrap();
        ConfigRecord::of(&c)
    }

    /// `BASE` with `from` replaced by `to`, diffed against `BASE`.
    fn diff_of(from: &str, to: &str) -> ConfigDiff {
        assert!(BASE.contains(from), "{from}");
        diff(&record(BASE, "t"), &record(&BASE.replace(from, to), "t"))
    }

    #[test]
    fn the_same_config_has_no_difference() {
        assert_eq!(
            diff(&record(BASE, "t"), &record(BASE, "t")),
            ConfigDiff {
                experiments: BTreeMap::from([("e".into(), vec![])]),
                ..ConfigDiff::default()
            }
        );
    }

    /// A config without `tls` records no `tls` key: its version is the
    /// one it had before the field existed. One with it differs.
    #[test]
    fn tls_is_absent_from_the_record_unless_configured() {
        let plain = record(BASE, "t");
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("tls"), "{json}");
        let with = record(
            &BASE.replace(
                "admin:",
                "tls: { cert_file: c.pem, key_file: k.pem }\nadmin:",
            ),
            "t",
        );
        assert_ne!(plain.version(), with.version());
        let json = serde_json::to_string(&with).unwrap();
        assert!(
            json.contains(r#""tls":{"cert_file":"/d/c.pem","key_file":"/d/k.pem"}"#),
            "{json}"
        );
    }

    /// One row per setting bound at start-up.
    #[test]
    fn settings_bound_at_start_up_need_a_restart() {
        let rows = [
            ("listen: 127.0.0.1:8080", "listen: 127.0.0.1:8081", "listen"),
            ("path: ./data", "path: ./data2", "store.path"),
            (
                "path: ./data",
                "path: ./data, durability: write",
                "store.durability",
            ),
            (
                "path: ./log.jsonl",
                "path: ./other.jsonl",
                "access_log.path",
            ),
            (
                "path: ./log.jsonl",
                "path: ./log.jsonl, rotate: { max_age: 1h }",
                "access_log.rotate",
            ),
            (
                "admin: { listen: 127.0.0.1:9090 }",
                "admin: { listen: 127.0.0.1:9091 }",
                "admin.listen",
            ),
            (
                "admin:",
                "runtime: { worker_threads: 3 }\nadmin:",
                "runtime.worker_threads",
            ),
            (
                "admin:",
                "runtime: { http1_fast_path: false }\nadmin:",
                "runtime.http1_fast_path",
            ),
            (
                "admin:",
                "runtime: { client_idle_timeout: 1s }\nadmin:",
                "runtime.client_*_timeout",
            ),
            (
                "admin:",
                "runtime: { client_header_timeout: 1s }\nadmin:",
                "runtime.client_*_timeout",
            ),
            (
                "admin:",
                "runtime: { client_body_timeout: 1s }\nadmin:",
                "runtime.client_*_timeout",
            ),
            (
                "admin:",
                "runtime: { shutdown_timeout: 1s }\nadmin:",
                "runtime.shutdown_timeout",
            ),
            (
                "admin:",
                "tls: { cert_file: c.pem, key_file: k.pem }\nadmin:",
                "tls",
            ),
        ];
        for (from, to, want) in rows {
            let d = diff_of(from, to);
            assert_eq!(d.restart_needed, vec![want], "{to}");
            assert!(
                d.upstreams.is_empty() && d.settings.is_empty(),
                "{to}: {d:?}"
            );
        }
        let d = diff_of(
            "path: ./log.jsonl",
            "path: ./log.jsonl, rotate: { max_age: 1h }, compress: gzip",
        );
        assert_eq!(
            d.restart_needed,
            ["access_log.rotate", "access_log.compress"]
        );
    }

    /// One row per live setting of an experiment.
    #[test]
    fn experiment_routing_changes_are_named() {
        let rows = [
            (
                "routes: [/p]",
                "routes: [/q]",
                "routes: [{\"Exact\":\"/p\"}] -> [{\"Exact\":\"/q\"}]",
            ),
            (
                "salt: s\n",
                "salt: s\n    on_missing_unit: reject\n",
                "on_missing_unit: \"control\" -> \"reject\"",
            ),
            (
                "salt: s\n",
                "salt: s\n    paused: true\n",
                "paused: false -> true",
            ),
            (
                "salt: s\n",
                "salt: s\n    overrides: { b: [qa] }\n",
                "overrides: 0 -> 1 forced units",
            ),
            (
                "name: b, upstream: new",
                "name: b, upstream: old",
                "variants[b].upstream: \"new\" -> \"old\"",
            ),
            (
                "weight: 50 }\nadmin",
                "weight: 50, disabled: true }\nadmin",
                "variants[b].disabled: false -> true",
            ),
        ];
        for (from, to, want) in rows {
            let d = diff_of(from, to);
            assert_eq!(d.experiments["e"], vec![want.to_string()], "{to}");
            assert!(d.restart_needed.is_empty(), "{to}: {d:?}");
        }
    }

    /// Rule settings are the ledger's to judge: not routing changes.
    #[test]
    fn rule_changes_are_left_to_the_ledger() {
        for (from, to) in [
            ("salt: s", "salt: t"),
            ("x-user-id", "x-session"),
            ("salt: s\n", "salt: s\n    coverage: 0.5\n"),
            ("salt: s\n", "salt: s\n    reset: 1\n"),
            (
                "salt: s\n",
                "salt: s\n    bucketing: { scheme: unleash, group_id: t }\n",
            ),
            (
                "a, upstream: old, weight: 50",
                "a, upstream: old, weight: 40",
            ),
        ] {
            let to = to.replace(
                "weight: 40",
                "weight: 40 }\n      - { name: c, upstream: old, weight: 10",
            );
            let d = diff_of(from, &to);
            assert_eq!(d.experiments["e"], Vec::<String>::new(), "{to}");
        }
    }

    #[test]
    fn config_wide_live_changes_are_named() {
        let d = diff_of("experiments:", "default_upstream: old\nexperiments:");
        assert_eq!(d.settings, vec!["default_upstream: null -> \"old\""]);
        let d = diff_of("./log.jsonl }", "./log.jsonl, log_unit: hashed }");
        assert_eq!(d.settings.len(), 1);
        assert!(d.settings[0].starts_with("access_log.log_unit: \"Raw\" -> {\"Hashed\""));
        let d = diff(&record(BASE, "t"), &record(BASE, "rotated"));
        assert_eq!(d.settings, vec!["admin token rotated"]);
        let d = diff_of("9090 }", "9090, metrics_auth: true }");
        assert_eq!(d.settings, vec!["admin.metrics_auth: false -> true"]);
        assert!(d.restart_needed.is_empty());
        // At its default the field is left out of the record, so configs
        // from before it existed keep their version.
        let json = |y: &str| serde_json::to_string(&record(y, "t")).unwrap();
        let explicit = BASE.replace("9090 }", "9090, metrics_auth: false }");
        assert_eq!(json(BASE), json(&explicit));
        assert!(!json(BASE).contains("metrics_auth"));
        let d = diff_of(
            "http://127.0.0.1:2 }",
            "http://127.0.0.1:3 }\n  extra: { url: http://127.0.0.1:4 }",
        );
        assert_eq!(
            d.upstreams,
            vec!["upstream extra added", "upstream new changed"]
        );
        let d = diff_of("127.0.0.1:2 }", "127.0.0.1:2, timeout: 9s }");
        assert_eq!(d.upstreams, vec!["upstream new changed"]);
    }

    #[test]
    fn endpoints_health_and_fallback_are_live() {
        for to in [
            "new: { endpoints: [http://127.0.0.1:2, http://127.0.0.1:3] }",
            "new: { url: http://127.0.0.1:2, health: { path: /h } }",
            "new: { url: http://127.0.0.1:2, total_timeout: 1m }",
            "new: { url: http://127.0.0.1:2, eject_after: 1, eject_for: 1s }",
        ] {
            let d = diff_of("new: { url: http://127.0.0.1:2 }", to);
            assert_eq!(d.upstreams, vec!["upstream new changed"], "{to}");
            assert!(d.restart_needed.is_empty(), "{to}");
        }
        let d = diff_of(
            "upstream: new, weight: 50 }",
            "upstream: new, weight: 50, fallback: old }",
        );
        assert_eq!(
            d.experiments["e"],
            vec!["variants[b].fallback: null -> \"old\""]
        );
        assert!(d.restart_needed.is_empty());
    }
}
