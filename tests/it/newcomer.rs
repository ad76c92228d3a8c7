//! What a new user meets first: the README's quick start (the demo and its
//! curl) as written, and the start-up and command errors a first try runs
//! into, each naming the thing that is wrong and the way out.

use std::ffi::OsStr;
use std::time::Duration;

use crate::util::*;

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn os(args: &[&str]) -> Vec<&'static OsStr> {
    args.iter()
        .map(|a| OsStr::new(Box::leak(a.to_string().into_boxed_str())))
        .collect()
}

/// The README's quick start: `cohort demo`, then its curl, answered as the
/// README shows (alice is bucket 7889, treatment, epoch 1, new-model), with
/// the access-log line on stdout. The backends take free ports
/// (`--backend-ports 0,0`) so the test never collides with anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_demo_answers_the_readme_curl_as_documented() {
    let dir = TestDir::new();
    let cohort = Cohort::start_args(
        &os(&["demo", "--listen", "127.0.0.1:0", "--backend-ports", "0,0"]),
        dir.path(),
    )
    .unwrap_or_else(|(code, log)| panic!("demo did not start ({code:?}):\n{log}"));
    let hint = cohort.wait_for_log("try: curl", Duration::from_secs(5));
    assert!(
        hint.contains("curl -i -H 'x-user-id: alice' -d '{}' http://ADDRESS/predict")
            && hint.ends_with("/predict"),
        "the demo says what to try, on a line that can be copied as it is: {hint:?}"
    );
    // curl -i -H 'x-user-id: alice' -d '{}' localhost:8080/predict
    let client = TestClient::new();
    let r = client
        .send(
            cohort.addr,
            "POST",
            "/predict",
            &[
                ("x-user-id", Some("alice")),
                ("content-type", Some("application/x-www-form-urlencoded")),
            ],
            "{}",
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-cohort-experiment"), "ranker-v2");
    assert_eq!(r.variant(), "treatment");
    assert_eq!(r.epoch(), 1);
    let body = r.json();
    assert_eq!(body["model"], "new-model", "{body}");
    assert_eq!(body["served_variant"], "treatment", "{body}");
    assert_eq!(body["user"], "alice", "{body}");
    // The data directory is the documented default, under the working dir.
    assert!(dir.path().join("cohort-demo-data").is_dir());

    let bob = client.post(cohort.addr, "/predict", Some("bob")).await;
    assert_eq!(bob.variant(), "control");
    assert_eq!(bob.json()["model"], "old-model");

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = cohort
            .stdout()
            .into_iter()
            .find(|l| l.contains("\"unit\":\"alice\""));
        if let Some(l) = found {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access-log line on stdout"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rec: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(rec["bucket"], 7889, "{line}");
    assert_eq!(rec["reason"], "new", "{line}");
    assert_eq!(rec["first_exposure"], true, "{line}");
}

/// `demo --config FILE` listens on the file's `listen` (here port 0), not
/// on `--listen`'s 8080, and runs the demo backends on the file's upstreams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_a_config_listens_where_the_file_says() {
    let dir = TestDir::new();
    let urls = [
        ("old", format!("http://127.0.0.1:{}", closed_port())),
        ("new", format!("http://127.0.0.1:{}", closed_port())),
    ];
    dir.write_config(&config_urls(&urls, &ranker("50", "50")));
    let path = dir.config_path().display().to_string();
    let cohort = Cohort::start_args(&os(&["demo", "--config", &path]), dir.path())
        .unwrap_or_else(|(code, log)| panic!("demo did not start ({code:?}):\n{log}"));
    assert_ne!(cohort.addr.port(), 8080, "the file says port 0");
    let r = TestClient::new()
        .post(cohort.addr, "/predict", Some("alice"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let model = r.json()["model"].as_str().unwrap().to_string();
    assert_eq!(
        model,
        if r.variant() == "control" {
            "old"
        } else {
            "new"
        }
    );
}

/// A demo backend port in use: the error names the upstream and its port,
/// and says how to pick other ports.
#[test]
fn a_busy_demo_port_is_named_with_the_way_out() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = dir.path().join("d").display().to_string();
    let (code, _, err) = cohort_cmd(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &data,
        "--backend-ports",
        &format!("{port},0"),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "demo backend old-model cannot listen on 127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(err.contains("--backend-ports 0,0"), "{err}");
}

/// Start-up errors name the file and say the OS's reason once.
#[test]
fn start_up_errors_name_the_path_and_say_the_reason_once() {
    let dir = TestDir::new();
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let yaml = config_urls(&[("old", "http://127.0.0.1:9".into())], &one_arm())
        .replace("./logs/access.jsonl", "./not-a-dir/access.jsonl");
    dir.write_config(&yaml);
    let (code, _, err) = cohort_cmd(&["--config", &dir.config_path().display().to_string()]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().last().unwrap();
    assert!(
        line.contains("cannot open the access log") && line.contains("not-a-dir/access.jsonl"),
        "{err}"
    );
    assert_eq!(line.matches("(os error").count(), 1, "{line}");

    // A store directory that cannot hold files is named for what it is.
    let yaml = config_urls(&[("old", "http://127.0.0.1:9".into())], &one_arm())
        .replace("path: ./data", "path: /proc/self");
    dir.write_config(&yaml);
    let (code, _, err) = cohort_cmd(&["--config", &dir.config_path().display().to_string()]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().last().unwrap();
    assert!(
        line.contains("store /proc/self") && line.contains("does not accept new files"),
        "{err}"
    );
    assert_eq!(line.matches("(os error").count(), 1, "{line}");
}

/// `cohort plan` against an admin API that is not there says so in words.
#[test]
fn plan_against_a_stopped_proxy_says_where_it_looked_and_what_else_to_do() {
    let dir = TestDir::new();
    let yaml = config_urls(&[("old", "http://127.0.0.1:9".into())], &one_arm());
    dir.write_config(&yaml);
    std::fs::write(dir.path().join("tok"), "t\n").unwrap();
    let addr = format!("127.0.0.1:{}", closed_port());
    let tok = dir.path().join("tok").display().to_string();
    let (code, _, err) = cohort_cmd(&[
        "plan",
        &dir.config_path().display().to_string(),
        "--admin",
        &addr,
        "--token-file",
        &tok,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot reach the admin API at {addr}")),
        "{err}"
    );
    assert!(err.contains("is cohort running"), "{err}");
    assert!(
        err.contains("--store DIR") && err.contains("--against OLD.yaml"),
        "{err}"
    );
    assert!(
        !err.contains("hyper_util") && !err.contains("ConnectError"),
        "{err}"
    );
}

/// `cohort history` with no store names every way to give one.
#[test]
fn history_without_a_store_names_every_way_to_give_one() {
    let (code, _, err) = cohort_cmd(&["history"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--store") && err.contains("--config"), "{err}");
}

/// Admin pauses are listed among the applied configs in time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_pauses_and_configs_in_time_order() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let ups = [("old", &old), ("new", &new)];
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &with_admin(&dir, &config(&ups, &ranker("50", "50"))));
    let client = TestClient::new();
    let admin = cohort.admin_addr();
    let r = admin_call(
        &client,
        admin,
        "POST",
        "/admin/experiments/ranker/pause",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The next config is applied after the pause (timestamps have ms).
    std::thread::sleep(Duration::from_millis(5));
    dir.write_config(&with_admin(&dir, &config(&ups, &ranker("20", "80"))));
    cohort.wait_reloads(1);

    let store = dir.path().join("data").display().to_string();
    let (code, out, err) = cohort_cmd(&["history", "--store", &store]);
    assert_eq!(code, 0, "{err}");
    let entries: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(entries.len(), 3, "{out}");
    assert!(entries[0].contains("(start-up)"), "{out}");
    assert!(entries[1].contains("ranker PAUSED"), "{out}");
    assert!(entries[2].contains("(file changed)"), "{out}");
    let times: Vec<&str> = entries
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{out}");
}

/// One experiment with one variant on upstream `old`.
fn one_arm() -> String {
    "  - name: e\n    routes: [/p]\n    variants:\n      - { name: a, upstream: old, weight: 100 }\n"
        .into()
}

/// A config that cannot be read is named without a made-up position.
#[test]
fn a_missing_config_file_is_named_without_a_position() {
    let dir = TestDir::new();
    let missing = dir.path().join("nope.yaml").display().to_string();
    for args in [vec!["check", &missing], vec!["--config", &missing]] {
        let (code, _, err) = cohort_cmd(&args);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("{missing}: cannot read the file: ")),
            "{err}"
        );
        assert!(!err.contains(":0:0"), "{err}");
    }
}

/// The proxy's own port in use: named, with `--listen` as the way out.
#[test]
fn a_busy_proxy_port_is_named_with_the_way_out() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("d").display().to_string();
    let (code, _, err) = cohort_cmd(&[
        "demo",
        "--listen",
        &addr,
        "--data",
        &data,
        "--backend-ports",
        "0,0",
    ]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().last().unwrap();
    assert!(line.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(line.contains("--listen"), "{err}");
    assert_eq!(line.matches("(os error").count(), 1, "{line}");
}
