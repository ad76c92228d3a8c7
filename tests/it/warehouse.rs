//! The warehouse DDL and canonical query (deploy/warehouse/) on a real log:
//! a proxy with built-in rotation and gzip serves known traffic (units whose
//! variant the public bucket contract fixes, a reload into a new epoch, a
//! pause that serves assigned units another variant), then DuckDB and
//! ClickHouse's embedded engine (chdb) each load every file of the log with
//! the shipped SQL (`deploy/warehouse/load.py`) and run the analysis. Per
//! assignment epoch and assigned variant, the units and requests must be
//! exactly what was sent; a query grouping by the served variant would not
//! match.
//!
//! The Python packages `duckdb` and `chdb` are installed by `.ci/run`; under
//! CI a missing one fails the test, elsewhere it is skipped.

use std::collections::BTreeMap;
use std::process::Command;

use crate::util::*;

/// Whether `python3` can import `module`; under CI, it must.
fn python_has(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 cannot import {module}: .ci/run must `pip install duckdb chdb`"
        );
        eprintln!("python3 has no {module}: skipped (.ci/run installs it)");
    }
    ok
}

/// (assignment epoch, assigned variant) -> (units, requests).
type Cells = BTreeMap<(u64, String), (u64, u64)>;

fn load(engine: &str, db: &std::path::Path, log: &std::path::Path) -> Cells {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/warehouse/load.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--engine", engine, "--live", "--db"])
        .arg(db)
        .arg(log)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{engine}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cells = Cells::new();
    for line in stdout.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["experiment"], "ranker", "{engine}: {row}");
        let n = |k: &str| {
            row[k]
                .as_u64()
                .or_else(|| row[k].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or_else(|| panic!("{engine}: {k} in {row}"))
        };
        let key = (
            n("assignment_epoch"),
            row["assigned_variant"].as_str().unwrap().to_string(),
        );
        assert!(
            cells.insert(key, (n("units"), n("requests"))).is_none(),
            "{engine}: one row per cell"
        );
        assert_eq!(row["error_rate"].as_f64(), Some(0.0), "{engine}: {row}");
    }
    cells
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_and_chdb_group_a_real_log_by_first_assignment() {
    if !python_has("duckdb") || !python_has("chdb") {
        return;
    }
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let yaml = |control: &str, treatment: &str| {
        config(&[("old", &old), ("new", &new)], &ranker(control, treatment)).replace(
            "access_log: { path: ./logs/access.jsonl }",
            "access_log: { path: ./logs/access.jsonl, rotate: { max_bytes: 8KiB }, compress: gzip }",
        )
    };
    let cohort = Cohort::start(&dir, &yaml("50", "50"));
    let client = TestClient::new();
    let mut want = Cells::new();
    let mut count = |epoch: u64, variant: &str, units: u64, requests: u64| {
        let c = want.entry((epoch, variant.to_string())).or_default();
        c.0 += units;
        c.1 += requests;
    };

    // Epoch 1, 50/50: the contract puts buckets 0-4999 in control.
    let early = users("wh-early", 40);
    let assigned = |u: &str| {
        if bucket("ranker-salt", u) < 5000 {
            "control"
        } else {
            "treatment"
        }
    };
    for (i, u) in early.iter().enumerate() {
        for _ in 0..1 + i % 3 {
            let r = client.post(cohort.addr, "/predict", Some(u)).await;
            assert_eq!((r.variant(), r.epoch()), (assigned(u), 1));
        }
        count(1, assigned(u), 1, 1 + (i % 3) as u64);
    }

    // Epoch 2, 0/100: every new unit is treatment; early units keep epoch 1.
    dir.write_config(&yaml("0", "100"));
    cohort.wait_reloads(1);
    let late = users("wh-late", 25);
    for u in &late {
        let r = client.post(cohort.addr, "/predict", Some(u)).await;
        assert_eq!((r.variant(), r.epoch()), ("treatment", 2));
    }
    count(2, "treatment", late.len() as u64, late.len() as u64);
    for u in &early {
        let r = client.post(cohort.addr, "/predict", Some(u)).await;
        assert_eq!((r.variant(), r.epoch()), (assigned(u), 1));
        count(1, assigned(u), 0, 1);
    }

    // Paused: everyone is served control, but counts for the assignment.
    dir.write_config(&yaml("0", "100").replace(
        "salt: ranker-salt\n",
        "salt: ranker-salt\n    paused: true\n",
    ));
    cohort.wait_reloads(2);
    let mut served_other = 0;
    for u in early.iter().filter(|u| assigned(u) == "treatment") {
        let r = client.post(cohort.addr, "/predict", Some(u)).await;
        assert_eq!(r.variant(), "control", "paused serves the first variant");
        count(1, "treatment", 0, 1);
        served_other += 1;
    }
    assert!(served_other > 5);
    assert!(cohort.terminate().success());

    let logs = dir.path().join("logs");
    let files = std::fs::read_dir(&logs).unwrap().count();
    assert!(files > 3, "the log rotated ({files} files)");
    let log = logs.join("access.jsonl");
    let duck = load("duckdb", &dir.path().join("cohort.duckdb"), &log);
    assert_eq!(duck, want, "DuckDB");
    let ch = load("chdb", &dir.path().join("chdb"), &log);
    assert_eq!(ch, want, "chdb");
}
