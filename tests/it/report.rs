//! `cohort report`: planted faults are flagged (exit 3, with examples), a
//! clean log of the real proxy is clean (exit 0), gzip reads like plain,
//! the JSON has the documented shape, the HTML renders in a real browser,
//! and the proxy's lines fit the published JSON Schema.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::util::*;

/// One synthetic access-log line, as the proxy writes it.
#[allow(clippy::too_many_arguments)]
fn line(
    out: &mut String,
    t: u64,
    experiment: &str,
    unit: &str,
    variant: &str,
    epoch: u32,
    reason: &str,
    share: Option<f64>,
    status: u16,
    total_ms: f64,
) {
    let first = reason == "new";
    let share = match share {
        Some(s) if first => s.to_string(),
        _ => "null".into(),
    };
    let _ = writeln!(
        out,
        r#"{{"ts":"2026-12-01T10:{:02}:{:02}.{:03}Z","schema":1,"request_id":"r-{t}","method":"POST","path":"/predict","status":{status},"experiment":"{experiment}","unit":"{unit}","variant":"{variant}","epoch":{epoch},"current_epoch":{epoch},"first_exposure":{first},"share":{share},"in_experiment":true,"forced":{},"paused":false,"reason":"{reason}","bucket":1,"upstream":"127.0.0.1:9","upstream_ms":1.0,"total_ms":{total_ms:?},"bytes_in":0,"bytes_out":2,"config_version":"abc","error":null}}"#,
        (t / 60_000) % 60,
        (t / 1000) % 60,
        t % 1000,
        reason == "forced",
    );
}

/// A fair 50/50 experiment (`fair`, epochs 1 and 2) with planted drift, and
/// a 50/50 experiment whose first exposures are 60/40 (`skewed`).
fn planted_log() -> String {
    let mut s = String::new();
    let mut t = 0;
    // fair: units alternate, so first exposures split exactly evenly.
    for epoch in [1u32, 2] {
        for i in 0..2000 {
            t += 37;
            let unit = format!("e{epoch}-u{i}");
            let v = if i % 2 == 0 { "control" } else { "treatment" };
            let ms = if v == "control" { 10.0 } else { 20.0 } + f64::from(i % 10);
            line(
                &mut s,
                t,
                "fair",
                &unit,
                v,
                epoch,
                "new",
                Some(0.5),
                200,
                ms,
            );
            line(
                &mut s,
                t + 1,
                "fair",
                &unit,
                v,
                epoch,
                "stored",
                None,
                200,
                ms,
            );
        }
    }
    // Forced and paused lines of another variant are not drift.
    line(
        &mut s,
        t,
        "fair",
        "e1-u0",
        "treatment",
        1,
        "forced",
        None,
        200,
        1.0,
    );
    // Planted drift: a unit stored under control is served treatment; a
    // unit's epoch changes; a unit has two first exposures; a stamp is lost.
    line(
        &mut s,
        t,
        "fair",
        "e1-u2",
        "treatment",
        1,
        "stored",
        None,
        200,
        1.0,
    );
    line(
        &mut s, t, "fair", "e1-u4", "control", 2, "stored", None, 200, 1.0,
    );
    line(
        &mut s,
        t,
        "fair",
        "e2-u6",
        "control",
        2,
        "new",
        Some(0.5),
        200,
        1.0,
    );
    s.push_str(r#"{"ts":"2026-12-01T11:00:00.000Z","schema":1,"status":200,"experiment":"fair","unit":"e1-u8","variant":null,"epoch":1,"first_exposure":false,"reason":"stored","total_ms":1.0}"#);
    s.push('\n');
    // skewed: 600 control, 400 treatment, announced as 50/50.
    for i in 0..1000 {
        t += 11;
        let v = if i < 600 { "control" } else { "treatment" };
        let status = if i % 100 == 0 { 502 } else { 200 };
        line(
            &mut s,
            t,
            "skewed",
            &format!("s{i}"),
            v,
            1,
            "new",
            Some(0.5),
            status,
            5.0,
        );
    }
    s
}

fn report(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["report", "--no-progress"];
    all.extend_from_slice(args);
    cohort_cmd(&all)
}

fn experiment<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no experiment {name} in {v}"))
}

#[test]
fn planted_drift_and_a_planted_srm_are_both_flagged_with_examples() {
    let dir = TestDir::new();
    let log = dir.path().join("planted.jsonl");
    std::fs::write(&log, planted_log()).unwrap();
    let (code, out, err) = report(&["--format", "json", log.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["clean"], false);
    let fair = experiment(&v, "fair");
    let a = &fair["audit"];
    assert_eq!(a["units_in_several_variants"], 1, "{a}");
    assert_eq!(a["units_with_changed_epoch"], 1, "{a}");
    assert_eq!(a["units_with_several_first_exposures"], 1, "{a}");
    assert_eq!(a["lines_without_stamps"], 1, "{a}");
    let examples = a["examples"].to_string();
    for planted in ["e1-u2", "e1-u4", "e2-u6", "planted.jsonl:"] {
        assert!(examples.contains(planted), "{planted} in {examples}");
    }
    assert!(
        !examples.contains("e1-u0"),
        "a forced line is not drift: {examples}"
    );
    for e in fair["epochs"].as_array().unwrap() {
        let p = e["srm_p_value"].as_f64().unwrap();
        assert!(p > 0.01, "fair epoch {}: p = {p}", e["epoch"]);
    }
    let skewed = experiment(&v, "skewed");
    let e1 = &skewed["epochs"][0];
    assert_eq!(e1["epoch"], 1);
    assert!(e1["srm_p_value"].as_f64().unwrap() < 1e-9, "{e1}");
    assert_eq!(skewed["audit"]["examples"], Value::Array(vec![]));
    let control = &e1["variants"][0];
    assert_eq!(control["name"], "control");
    assert_eq!(control["units"], 600);
    assert_eq!(control["first_exposures"], 600);
    assert_eq!(control["requests"], 600);
    assert!((control["error_rate"].as_f64().unwrap() - 0.01).abs() < 1e-12);
    assert!((control["p50_ms"].as_f64().unwrap() - 5.0).abs() < 0.05);

    // The table says the same, with the examples.
    let (code, table, _) = report(&[log.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert!(table.contains("FAILED"), "{table}");
    assert!(
        table.contains("e.g. ") && table.contains("e1-u2"),
        "{table}"
    );
}

#[test]
fn the_json_has_the_documented_shape_and_gzip_reads_like_plain() {
    let dir = TestDir::new();
    let text = planted_log();
    let plain = dir.path().join("a.jsonl");
    std::fs::write(&plain, &text).unwrap();
    // Two gzip members, as `cat a.gz b.gz` makes.
    let gz = dir.path().join("a.jsonl.gz");
    let (head, tail) = text.split_at(text.len() / 2);
    let mut bytes = Vec::new();
    for part in [head, tail] {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(part.as_bytes()).unwrap();
        bytes.extend(enc.finish().unwrap());
    }
    std::fs::write(&gz, bytes).unwrap();
    let (c1, j1, _) = report(&["--format", "json", plain.to_str().unwrap()]);
    let (c2, j2, _) = report(&["--format", "json", gz.to_str().unwrap()]);
    assert_eq!((c1, c2), (3, 3));
    assert_eq!(j1, j2.replace("a.jsonl.gz", "a.jsonl"));

    let v: Value = serde_json::from_str(&j1).unwrap();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    for x in v["experiments"].as_array().unwrap() {
        assert_eq!(keys(x), ["audit", "epochs", "name"]);
        assert_eq!(
            keys(&x["audit"]),
            [
                "examples",
                "lines_without_stamps",
                "units_in_several_variants",
                "units_with_changed_epoch",
                "units_with_several_first_exposures"
            ]
        );
        for e in x["epochs"].as_array().unwrap() {
            assert_eq!(keys(e), ["epoch", "srm_p_value", "variants"]);
            for var in e["variants"].as_array().unwrap() {
                assert_eq!(
                    keys(var),
                    [
                        "error_rate",
                        "first_exposures",
                        "name",
                        "p50_ms",
                        "p95_ms",
                        "p99_ms",
                        "requests",
                        "units"
                    ]
                );
            }
        }
    }

    // Unreadable input and bad usage are both exit 1 (3 is kept for a
    // failed audit or SRM test, 0 for clean).
    let (code, _, err) = report(&[dir.path().join("missing.jsonl").to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing.jsonl"), "{err}");
    let p = plain.to_str().unwrap();
    for usage in [
        &["--format", "xml", p][..],
        &["--no-such-flag", p],
        &[],
        &["--alpha", "x", p],
        &["--alpha", "2", p],
        &["--alpha", "0", p],
    ] {
        let (code, _, err) = report(usage);
        assert_eq!(code, 1, "{usage:?}: {err}");
        assert!(
            !err.is_empty(),
            "{usage:?}: a usage error says what is wrong"
        );
    }
    let (code, out, _) = report(&["--help"]);
    assert_eq!(code, 0, "--help is not an error");
    assert!(out.contains("--format"));
}

#[test]
fn the_html_report_is_self_contained_and_renders_in_chromium() {
    let dir = TestDir::new();
    let log = dir.path().join("planted.jsonl");
    std::fs::write(&log, planted_log()).unwrap();
    let (code, html, err) = report(&["--format", "html", log.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(!html.contains("<script"), "no scripts");
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "no external resources"
    );
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();

    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is needed for this test (.ci/run installs it)");
    let profile = dir.path().join("chromium-profile");
    let out = std::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The browser parsed the page into a DOM with both plots per experiment.
    assert_eq!(dom.matches("<svg class=\"latency\"").count(), 2, "{dom}");
    assert_eq!(dom.matches("<svg class=\"exposures\"").count(), 2);
    assert!(
        dom.matches("<polyline").count() >= 8,
        "a line per variant and plot"
    );
    assert!(
        dom.contains("class=\"epoch\""),
        "epoch boundaries are drawn"
    );

    let shot = dir.path().join("shot.png");
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_proxy_log_reports_clean_and_fits_the_schema() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
    );
    let client = TestClient::new();
    let units = 40;
    for round in 0..3 {
        for i in 0..units {
            let r = client
                .post(cohort.addr, "/predict", Some(&format!("clean-{i}")))
                .await;
            assert_eq!(r.status, 200, "round {round}");
        }
    }
    // Off the experiment, and without a unit: not drift.
    client.post(cohort.addr, "/predict", None).await;
    client
        .send(
            cohort.addr,
            "GET",
            "/nowhere",
            &[("x-user-id", Some("x"))],
            "",
        )
        .await;
    assert!(cohort.terminate().success());

    let lines = dir.access_log();
    assert_eq!(lines.len(), 3 * units + 2);
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/access-log.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut shares = 0;
    for l in &lines {
        if let Err(e) = validate(&schema, l) {
            panic!("{l}\ndoes not fit docs/access-log.schema.json: {e}");
        }
        // Every field the proxy writes is in the schema.
        for k in l.as_object().unwrap().keys() {
            assert!(
                schema["properties"].get(k).is_some(),
                "{k} is not in the schema"
            );
        }
        if l["first_exposure"] == true {
            assert_eq!(l["share"], 0.5, "{l}");
            shares += 1;
        } else {
            assert_eq!(l["share"], Value::Null, "{l}");
        }
    }
    assert_eq!(shares, units);
    // The checker rejects what the schema forbids.
    let mut bad = lines[0].clone();
    bad["reason"] = "lucky".into();
    assert!(validate(&schema, &bad).is_err());
    bad = lines[0].clone();
    bad.as_object_mut().unwrap().remove("share");
    assert!(validate(&schema, &bad).is_err());

    let (code, out, err) = report(&["--format", "json", dir.log_path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clean"], true);
    let x = experiment(&v, "ranker");
    let e1 = x["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["epoch"] == 1)
        .expect("epoch 1");
    let sum = |k: &str| -> u64 {
        e1["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v[k].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("units"), units as u64);
    assert_eq!(sum("first_exposures"), units as u64);
    assert_eq!(sum("requests"), 3 * units as u64);
    assert!(e1["srm_p_value"].as_f64().unwrap() > 0.001, "{e1}");
    let (code, table, _) = report(&[dir.log_path().to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!table.contains("FAILED"), "{table}");

    // Lines from before the `share` field: no SRM test from the log alone;
    // with --store, the epoch's weights come from the store's ledger.
    let old = dir.path().join("old.jsonl");
    let mut text = String::new();
    for l in &lines {
        let mut l = l.clone();
        l.as_object_mut().unwrap().remove("share");
        text.push_str(&format!("{l}\n"));
    }
    std::fs::write(&old, text).unwrap();
    let epoch1 = |out: &str| -> Value {
        let v: Value = serde_json::from_str(out).unwrap();
        experiment(&v, "ranker")["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["epoch"] == 1)
            .unwrap()
            .clone()
    };
    let (code, out, _) = report(&["--format", "json", old.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(epoch1(&out)["srm_p_value"], Value::Null);
    let store = dir.path().join("data");
    let (code, out, err) = report(&[
        "--format",
        "json",
        "--store",
        store.to_str().unwrap(),
        old.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(epoch1(&out)["srm_p_value"], e1["srm_p_value"]);
}

/// The JSON Schema keywords docs/access-log.schema.json uses, checked by
/// hand: `type`, `required`, `properties`, `const`, `enum`, `minimum`,
/// `maximum`, and `pattern` in the subset it uses (`^`, `$`, literals,
/// `\\.`, `[0-9]{n}`).
fn validate(schema: &Value, v: &Value) -> Result<(), String> {
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => panic!("type {t}"),
        };
        let fits = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            other => panic!("type {other}"),
        });
        if !fits {
            return Err(format!("{v} is not {t}"));
        }
    }
    if let Some(c) = schema.get("const") {
        if v != c {
            return Err(format!("{v} is not {c}"));
        }
    }
    if let Some(e) = schema.get("enum") {
        if !e.as_array().unwrap().contains(v) {
            return Err(format!("{v} is not one of {e}"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum"), v.as_f64()) {
        if n < min.as_f64().unwrap() {
            return Err(format!("{v} < {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema.get("maximum"), v.as_f64()) {
        if n > max.as_f64().unwrap() {
            return Err(format!("{v} > {max}"));
        }
    }
    if let (Some(p), Some(s)) = (schema.get("pattern"), v.as_str()) {
        if !pattern_matches(p.as_str().unwrap(), s) {
            return Err(format!("{s:?} does not match {p}"));
        }
    }
    if let Some(req) = schema.get("required") {
        for k in req.as_array().unwrap() {
            if v.get(k.as_str().unwrap()).is_none() {
                return Err(format!("{k} is missing"));
            }
        }
    }
    if let (Some(props), Some(obj)) = (schema.get("properties"), v.as_object()) {
        for (k, sub) in props.as_object().unwrap() {
            if let Some(val) = obj.get(k) {
                validate(sub, val).map_err(|e| format!("{k}: {e}"))?;
            }
        }
    }
    Ok(())
}

fn pattern_matches(p: &str, s: &str) -> bool {
    let p = p
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .expect("anchored");
    let (mut p, mut s) = (p.as_bytes(), s.as_bytes());
    while !p.is_empty() {
        if let Some(rest) = p.strip_prefix(b"[0-9]{") {
            let close = rest.iter().position(|&c| c == b'}').unwrap();
            let n: usize = std::str::from_utf8(&rest[..close])
                .unwrap()
                .parse()
                .unwrap();
            if s.len() < n || !s[..n].iter().all(u8::is_ascii_digit) {
                return false;
            }
            (p, s) = (&rest[close + 1..], &s[n..]);
        } else {
            let (lit, rest) = match p {
                [b'\\', c, rest @ ..] => (*c, rest),
                [c, rest @ ..] => (*c, rest),
                [] => unreachable!(),
            };
            if s.first() != Some(&lit) {
                return false;
            }
            (p, s) = (rest, &s[1..]);
        }
    }
    s.is_empty()
}

#[test]
fn the_pattern_subset_checker_can_fail() {
    let ts = r"^[0-9]{4}-[0-9]{2}\.Z$";
    assert!(pattern_matches(ts, "2026-12.Z"));
    assert!(!pattern_matches(ts, "2026-1x.Z"));
    assert!(!pattern_matches(ts, "2026-12.Zq"));
    assert!(!pattern_matches(ts, "2026-12xZ"));
}
