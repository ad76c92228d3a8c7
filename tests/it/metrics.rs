//! `GET /metrics` on a running proxy: exact counts after known traffic,
//! `promtool check metrics` on the scrape and `promtool check rules` on the
//! shipped alerts, a real Prometheus server scraping the proxy, and the live
//! SRM alarm on a skewed and a fair stream of new units (docs/metrics.md).
//!
//! promtool and prometheus come from the Debian package `prometheus`
//! (`.ci/run` installs it); these tests fail, rather than skip, without it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::util::*;

// ---------------------------------------------------------------------------
// Helpers.

/// The public bucket contract (docs/assignment.md): the first 8 bytes of
/// SHA-256(salt ":" unit), big-endian, mod 10000.
fn bucket(salt: &str, unit: &str) -> u64 {
    let d = Sha256::digest(format!("{salt}:{unit}").as_bytes());
    u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000
}

/// One scrape, parsed: `name` -> every sample's labels and value (also
/// read by the shared-store tests, replicas.rs).
pub(crate) struct Scrape {
    pub(crate) text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            samples.push((name.to_string(), labels, value));
        }
        Scrape { text, samples }
    }

    /// The sample of `name` with exactly `labels`, if there is one.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} twice in\n{}",
            self.text
        );
        found.first().copied()
    }

    /// Like [`Scrape::get`], 0 when absent (a counter not yet incremented).
    pub(crate) fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels).unwrap_or(0.0) as u64
    }

    /// The sum over every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v as u64)
            .sum()
    }
}

async fn scrape(client: &TestClient, admin: SocketAddr, token: Option<&str>) -> Scrape {
    let r = admin_call(client, admin, "GET", "/metrics", token).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "{r:?}"
    );
    Scrape::parse(r.body)
}

/// Scrapes until `done` holds (the access log's counters trail the
/// requests by a writer collection); panics with the last scrape after 20 s.
pub(crate) async fn scrape_until(
    client: &TestClient,
    admin: SocketAddr,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(client, admin, None).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never settled:\n{}", s.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: apt-get install prometheus (.ci/run does)");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------
// Exact counts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let yaml = with_admin(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
    );
    let cohort = Cohort::start(&dir, &yaml);
    let admin = cohort.admin_addr();
    let client = TestClient::new();

    // 40 new units, then 15 of them again; which variant each gets is
    // the public contract's, computed here on our side.
    let units: Vec<String> = (0..40).map(|i| format!("metrics-unit-{i}")).collect();
    let expect = |u: &str| {
        if bucket("ranker-salt", u) < 5000 {
            "control"
        } else {
            "treatment"
        }
    };
    let mut epoch = None;
    for u in &units {
        let r = client.post(cohort.addr, "/predict", Some(u)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.variant(), expect(u), "{u}");
        epoch = Some(r.epoch());
    }
    for u in &units[..15] {
        let r = client.post(cohort.addr, "/predict", Some(u)).await;
        assert_eq!(r.variant(), expect(u));
    }
    // 3 without a unit (served control, reason no_unit), 2 off any route (404).
    for _ in 0..3 {
        assert_eq!(client.post(cohort.addr, "/predict", None).await.status, 200);
    }
    for _ in 0..2 {
        let r = client.post(cohort.addr, "/nowhere", Some("x")).await;
        assert_eq!(r.status, 404);
    }
    let epoch = epoch.unwrap().to_string();
    let total = 40 + 15 + 3 + 2;

    let s = scrape_until(&client, admin, |s| {
        s.count("cohort_access_log_lines_total", &[("result", "written")]) == total
    })
    .await;
    let new_in = |v: &str| units.iter().filter(|u| expect(u) == v).count() as u64;
    let again_in = |v: &str| units[..15].iter().filter(|u| expect(u) == v).count() as u64;
    let (new_c, new_t) = (new_in("control"), new_in("treatment"));
    assert!(new_c > 0 && new_t > 0, "both variants get units");
    let req = |v: &str, reason: &str, class: &str| {
        s.count(
            "cohort_requests_total",
            &[
                ("experiment", "ranker"),
                ("variant", v),
                ("reason", reason),
                ("code_class", class),
            ],
        )
    };
    assert_eq!(req("control", "new", "2xx"), new_c, "{}", s.text);
    assert_eq!(req("treatment", "new", "2xx"), new_t);
    assert_eq!(req("control", "stored", "2xx"), again_in("control"));
    assert_eq!(req("treatment", "stored", "2xx"), again_in("treatment"));
    assert_eq!(req("control", "no_unit", "2xx"), 3);
    assert_eq!(
        s.count(
            "cohort_requests_total",
            &[
                ("experiment", ""),
                ("variant", ""),
                ("reason", "none"),
                ("code_class", "4xx")
            ]
        ),
        2
    );
    assert_eq!(s.sum("cohort_requests_total", &[]), total);
    // Every new unit waited for a journal sync; several can share one.
    let syncs = s.count("cohort_store_sync_duration_seconds_count", &[]);
    assert!(
        (1..=new_c + new_t + 10).contains(&syncs),
        "{syncs} syncs for {} new units",
        new_c + new_t
    );
    assert_eq!(
        s.count(
            "cohort_store_sync_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        syncs
    );

    for (v, n) in [("control", new_c), ("treatment", new_t)] {
        let labels = [("experiment", "ranker"), ("variant", v), ("epoch", &epoch)];
        assert_eq!(s.count("cohort_first_exposures_total", &labels), n);
        let served = n + again_in(v) + if v == "control" { 3 } else { 0 };
        let xv = [("experiment", "ranker"), ("variant", v)];
        assert_eq!(
            s.count("cohort_request_duration_seconds_count", &xv),
            served
        );
        assert_eq!(
            s.count("cohort_upstream_duration_seconds_count", &xv),
            served
        );
        let mut inf = xv.to_vec();
        inf.push(("le", "+Inf"));
        assert_eq!(
            s.count("cohort_request_duration_seconds_bucket", &inf),
            served
        );
    }
    assert_eq!(
        s.count("cohort_assignments_stored", &[("experiment", "ranker")]),
        40
    );
    assert_eq!(
        s.count("cohort_access_log_lines_total", &[("result", "dropped")]),
        0
    );
    let ready = admin_call(&client, admin, "GET", "/readyz", None)
        .await
        .json();
    let version = ready["config_version"].as_str().unwrap();
    assert_eq!(
        s.get("cohort_config_info", &[("version", version)]),
        Some(1.0)
    );
    assert_eq!(
        s.samples
            .iter()
            .filter(|(n, _, _)| n == "cohort_config_info")
            .count(),
        1
    );
    let (srm_p, alarm) = (
        s.get(
            "cohort_srm_p_value",
            &[("experiment", "ranker"), ("epoch", &epoch)],
        ),
        s.get(
            "cohort_srm_alarm",
            &[("experiment", "ranker"), ("epoch", &epoch)],
        ),
    );
    assert!(srm_p.is_some_and(|p| p > 0.0 && p <= 1.0), "{}", s.text);
    assert_eq!(alarm, Some(0.0), "40 units are too few to alarm");

    // No unit id and no path in any label value.
    for u in &units {
        assert!(!s.text.contains(u.as_str()), "unit id {u} in the metrics");
    }
    assert!(!s.text.contains("/nowhere") && !s.text.contains("/predict"));

    // The scrape is valid Prometheus text, lint included.
    let (ok, out) = promtool(&["check", "metrics"], Some(&s.text));
    assert!(ok, "promtool check metrics:\n{out}\n{}", s.text);

    // Reloads: one rejected (invalid YAML), one applied (new weights: a
    // new epoch, whose first exposures get their own series).
    std::fs::write(dir.config_path(), "experiments: [").unwrap();
    let r = admin_call(&client, admin, "POST", "/admin/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 422, "{r:?}");
    let applied =
        yaml.replace("weight: 50 }", "weight: 40 }")
            .replacen("weight: 40 }", "weight: 60 }", 1);
    std::fs::write(dir.config_path(), &applied).unwrap();
    let r = admin_call(&client, admin, "POST", "/admin/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let u = "metrics-unit-after-reload";
    let r = client.post(cohort.addr, "/predict", Some(u)).await;
    let new_epoch = r.epoch().to_string();
    assert_ne!(new_epoch, epoch);
    // A request is counted as its access record is finished, just after
    // its response went out: wait for its line.
    let s = scrape_until(&client, admin, |s| {
        s.count("cohort_access_log_lines_total", &[("result", "written")]) == total + 1
    })
    .await;
    assert_eq!(
        s.count("cohort_reloads_total", &[("result", "rejected")]),
        1
    );
    assert_eq!(s.count("cohort_reloads_total", &[("result", "applied")]), 1);
    let fe = |v: &str, e: &str| {
        s.count(
            "cohort_first_exposures_total",
            &[("experiment", "ranker"), ("variant", v), ("epoch", e)],
        )
    };
    assert_eq!(fe(r.variant(), &new_epoch), 1);
    assert_eq!(
        fe("control", &epoch) + fe("treatment", &epoch),
        40,
        "the old epoch's counters are kept"
    );
    assert!(s
        .get(
            "cohort_srm_p_value",
            &[("experiment", "ranker"), ("epoch", &new_epoch)]
        )
        .is_some());
    assert!(s
        .get(
            "cohort_srm_p_value",
            &[("experiment", "ranker"), ("epoch", &epoch)]
        )
        .is_none());

    // admin.metrics_auth: true (live on reload) asks scrapers for the token.
    std::fs::write(
        dir.config_path(),
        applied.replace(
            "token_file: admin.token }",
            "token_file: admin.token, metrics_auth: true }",
        ),
    )
    .unwrap();
    let r = admin_call(&client, admin, "POST", "/admin/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = admin_call(&client, admin, "GET", "/metrics", None).await;
    assert_eq!(r.status, 401, "{r:?}");
    let s = scrape(&client, admin, Some(ADMIN_TOKEN)).await;
    assert_eq!(s.count("cohort_reloads_total", &[("result", "applied")]), 2);
}

#[test]
fn shipped_alert_rules_and_dashboard_are_valid() {
    let rules = repo("deploy/prometheus-alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "promtool check rules:\n{out}");
    // Every series the rules and the dashboard query is one cohort exports.
    let exported = [
        "cohort_requests_total",
        "cohort_request_duration_seconds_bucket",
        "cohort_upstream_duration_seconds_bucket",
        "cohort_first_exposures_total",
        "cohort_assignments_stored",
        "cohort_srm_p_value",
        "cohort_srm_alarm",
        "cohort_reloads_total",
        "cohort_access_log_lines_total",
        "cohort_config_info",
        "cohort_store_degraded_total",
        "cohort_store_up",
        "cohort_store_writebacks_total",
        "cohort_store_writeback_pending",
    ];
    let dashboard = std::fs::read_to_string(repo("deploy/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let alerts = std::fs::read_to_string(&rules).unwrap();
    for text in [&dashboard, &alerts] {
        for name in text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("cohort_"))
        {
            assert!(exported.contains(&name), "{name} is not a cohort metric");
        }
    }
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            // promtool has no PromQL checker of its own for dashboards: a
            // throw-away rule file makes it parse each expression.
            let tmp = tempfile::NamedTempFile::new().unwrap();
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$experiment", ".*");
            std::fs::write(
                tmp.path(),
                format!(
                    "groups:\n  - name: dashboard\n    rules:\n      - record: cohort:dashboard\n        expr: {}\n",
                    serde_json::to_string(&expr).unwrap()
                ),
            )
            .unwrap();
            let (ok, out) = promtool(&["check", "rules", tmp.path().to_str().unwrap()], None);
            assert!(ok, "panel {:?}: {expr}\n{out}", p["title"]);
        }
    }
}

// ---------------------------------------------------------------------------
// A real Prometheus server.

struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(dir: &Path, target: SocketAddr) -> Prometheus {
    let rules = repo("deploy/prometheus-alerts.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [{}]\nscrape_configs:\n  - job_name: cohort\n    static_configs: [{{ targets: [\"{target}\"] }}]\n",
            rules.display()
        ),
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is not installed: apt-get install prometheus (.ci/run does)");
    Prometheus { child, addr }
}

/// An instant query's samples: (labels, value).
async fn query(client: &TestClient, prom: SocketAddr, q: &str) -> Vec<(serde_json::Value, f64)> {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Ok(r) = client
        .try_send(prom, "GET", &format!("/api/v1/query?query={enc}"), &[], "")
        .await
    else {
        return Vec::new();
    };
    if r.status != 200 {
        return Vec::new();
    }
    r.json()["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let v = s["value"][1].as_str().unwrap().parse().unwrap();
            (s["metric"].clone(), v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_server_scrapes_the_proxy() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let cohort = Cohort::start(
        &dir,
        &with_admin(
            &dir,
            &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
        ),
    );
    let admin = cohort.admin_addr();
    let client = TestClient::new();
    for i in 0..25 {
        let r = client
            .post(cohort.addr, "/predict", Some(&format!("prom-unit-{i}")))
            .await;
        assert_eq!(r.status, 200);
    }
    let prom = start_prometheus(dir.path(), admin);
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = query(
            &client,
            prom.addr,
            "sum(cohort_requests_total{job=\"cohort\",experiment=\"ranker\"})",
        )
        .await;
        if got.first().is_some_and(|(_, v)| *v == 25.0) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped 25 requests: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(got.len(), 1);
    let up = query(&client, prom.addr, "up{job=\"cohort\"}").await;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1, 1.0);
    let fe = query(
        &client,
        prom.addr,
        "sum(cohort_first_exposures_total{experiment=\"ranker\"})",
    )
    .await;
    assert_eq!(fe.first().map(|s| s.1), Some(25.0));
    // The shipped rules loaded, and no alert fires on a healthy proxy.
    let rules = client
        .try_send(prom.addr, "GET", "/api/v1/rules", &[], "")
        .await
        .unwrap()
        .json();
    let loaded: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| {
            assert_eq!(r["health"], "ok", "{r}");
            r["name"].as_str().unwrap()
        })
        .collect();
    assert!(loaded.contains(&"CohortSampleRatioMismatch"), "{loaded:?}");
    let firing = query(&client, prom.addr, "ALERTS{alertstate=\"firing\"}").await;
    assert!(firing.is_empty(), "{firing:?}");
}

// ---------------------------------------------------------------------------
// The live SRM alarm.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srm_alarm_fires_on_a_skewed_stream_and_stays_quiet_on_a_fair_one() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let experiments = "  - name: skewed\n    routes: [/skewed]\n    salt: srm-skewed\n    variants:\n      - { name: control, upstream: old, weight: 50 }\n      - { name: treatment, upstream: new, weight: 50 }\n  - name: fair\n    routes: [/fair]\n    salt: srm-fair\n    variants:\n      - { name: control, upstream: old, weight: 50 }\n      - { name: treatment, upstream: new, weight: 50 }\n  - name: partly-off\n    routes: [/partly-off]\n    salt: srm-partly-off\n    variants:\n      - { name: control, upstream: old, weight: 34 }\n      - { name: treatment, upstream: new, weight: 33 }\n      - { name: off, upstream: new, weight: 33, disabled: true }\n";
    let cohort = Cohort::start(
        &dir,
        &with_admin(&dir, &config(&[("old", &old), ("new", &new)], experiments)),
    );
    let admin = cohort.admin_addr();
    let client = TestClient::new();

    // 1100 new units on each route. The skewed stream's ids are picked, by
    // the public bucket contract, to land in control only (as a client
    // gaming its ids would); the fair one's are plain sequential ids.
    const N: usize = 1100;
    let skewed: Vec<String> = (0..)
        .map(|i| format!("gamed-{i}"))
        .filter(|u| bucket("srm-skewed", u) < 5000)
        .take(N)
        .collect();
    let fair: Vec<String> = (0..N).map(|i| format!("fair-{i}")).collect();
    let send = |path: &'static str, units: Vec<String>| {
        let client = client.clone();
        let addr = cohort.addr;
        async move {
            let mut epoch = 0;
            for chunk in units.chunks(50) {
                let tasks: Vec<_> = chunk
                    .iter()
                    .map(|u| {
                        let (client, u) = (client.clone(), u.clone());
                        tokio::spawn(async move { client.post(addr, path, Some(&u)).await })
                    })
                    .collect();
                for t in tasks {
                    let r = t.await.unwrap();
                    assert_eq!(r.status, 200);
                    // A unit served unstored is stamped epoch 0.
                    epoch = epoch.max(r.epoch());
                }
            }
            epoch
        }
    };
    // A disabled variant takes no new units (they are served control
    // unstored): it leaves the test instead of raising a false alarm.
    let partly: Vec<String> = (0..N).map(|i| format!("partly-{i}")).collect();
    let (e_skewed, e_fair, e_partly) = tokio::join!(
        send("/skewed", skewed),
        send("/fair", fair),
        send("/partly-off", partly)
    );

    let s = scrape_until(&client, admin, |s| {
        s.count("cohort_access_log_lines_total", &[("result", "written")]) == 3 * N as u64
    })
    .await;
    let (es, ef) = (e_skewed.to_string(), e_fair.to_string());
    let first = |x: &str, v: &str, e: &str| {
        s.count(
            "cohort_first_exposures_total",
            &[("experiment", x), ("variant", v), ("epoch", e)],
        )
    };
    assert_eq!(first("skewed", "control", &es), N as u64, "{}", s.text);
    assert_eq!(first("skewed", "treatment", &es), 0);
    assert_eq!(
        first("fair", "control", &ef) + first("fair", "treatment", &ef),
        N as u64
    );
    let gauge = |name: &str, x: &str, e: &str| {
        s.get(name, &[("experiment", x), ("epoch", e)])
            .unwrap_or_else(|| panic!("no {name} for {x}:\n{}", s.text))
    };
    assert_eq!(gauge("cohort_srm_alarm", "skewed", &es), 1.0);
    assert!(gauge("cohort_srm_p_value", "skewed", &es) < 1e-100);
    assert_eq!(gauge("cohort_srm_alarm", "fair", &ef), 0.0);
    assert!(gauge("cohort_srm_p_value", "fair", &ef) > 0.001);
    let ep = e_partly.to_string();
    assert_eq!(first("partly-off", "off", &ep), 0);
    assert!(first("partly-off", "control", &ep) + first("partly-off", "treatment", &ep) > 600);
    assert_eq!(gauge("cohort_srm_alarm", "partly-off", &ep), 0.0);
    assert!(gauge("cohort_srm_p_value", "partly-off", &ep) > 0.001);

    // The warning names the experiment and says what SRM at the proxy means;
    // at most one a minute, however often it is evaluated.
    let line = cohort.wait_for_log("SAMPLE RATIO MISMATCH", Duration::from_secs(10));
    assert!(line.contains("skewed"), "{line}");
    assert!(
        line.contains("assignment or logging is broken")
            && line.contains("unit ids are being gamed"),
        "{line}"
    );
    for _ in 0..3 {
        scrape(&client, admin, None).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(cohort.count_log("SAMPLE RATIO MISMATCH"), 1);
    assert!(cohort
        .stderr()
        .lines()
        .filter(|l| l.contains("SAMPLE RATIO MISMATCH"))
        .all(|l| !l.contains("experiment=fair")));
    let (ok, out) = promtool(&["check", "metrics"], Some(&s.text));
    assert!(ok, "promtool check metrics:\n{out}");
}
