//! Built-in log rotation on a running proxy (`access_log.rotate`,
//! `compress: gzip`): under load every line lands in exactly one file,
//! whole, and the closed files sort by time; rotation by age; and a full
//! disk (`/dev/full`) costs log lines, counted, never requests.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// The live file and every closed one, in name order, as (name, text). A
/// closed file beside its `.gz` is being removed: the `.gz` is read (the
/// rule docs/access-log.md gives consumers); `.partial` files are skipped.
fn log_files(dir: &Path) -> Vec<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("access.jsonl") && !n.ends_with(".partial"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in &names {
        if !n.ends_with(".gz") && names.contains(&format!("{n}.gz")) {
            continue;
        }
        let raw = std::fs::read(dir.join(n)).unwrap();
        let text = if n.ends_with(".gz") {
            let mut t = String::new();
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_string(&mut t)
                .unwrap_or_else(|e| panic!("{n}: {e}"));
            t
        } else {
            String::from_utf8(raw).unwrap()
        };
        out.push((n.clone(), text));
    }
    out
}

/// `access.jsonl.20261204T181500.123456Z[.gz]` -> `2026-12-04T18:15:00.123456Z`,
/// comparable with a line's `ts` (RFC 3339, same width up to the dot).
fn close_time(name: &str) -> String {
    let s = name
        .trim_end_matches(".gz")
        .strip_prefix("access.jsonl.")
        .unwrap_or_else(|| panic!("{name} is not a closed file"));
    assert_eq!(s.len(), 23, "{name}");
    format!(
        "{}-{}-{}T{}:{}:{}{}",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15],
        &s[15..]
    )
}

fn with_rotation(yaml: &str, rotate: &str) -> String {
    yaml.replace(
        "access_log: { path: ./logs/access.jsonl }",
        &format!("access_log: {{ path: ./logs/access.jsonl, {rotate} }}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_every_line_lands_whole_in_one_file_and_the_files_sort_by_time() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let max = 16 * 1024;
    let yaml = with_rotation(
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
        &format!("rotate: {{ max_bytes: {max} }}, compress: gzip"),
    );
    let cohort = Cohort::start(&dir, &yaml);
    let client = TestClient::new();
    let mut sent = Vec::new();
    for round in 0..3 {
        // New units, then the same units again (stored), 8 at a time.
        let units = users(&format!("rot{round}"), 600);
        sent.extend(post_all(&client, cohort.addr, &units, 8).await);
        sent.extend(post_all(&client, cohort.addr, &units[..300], 8).await);
    }
    assert!(sent.iter().all(|r| r.status == 200));
    assert!(cohort.terminate().success());

    let files = log_files(&dir.path().join("logs"));
    assert_eq!(files[0].0, "access.jsonl", "the live file sorts first");
    let closed = &files[1..];
    // ~500-byte lines: 2700 lines make far more than 50 files of 16 KiB.
    assert!(closed.len() > 50, "{} closed files", closed.len());
    let mut ids = HashSet::new();
    let mut last_close = String::new();
    for (name, text) in &files {
        assert!(text.is_empty() || text.ends_with('\n'), "{name}: torn end");
        if name != "access.jsonl" {
            assert!(text.len() <= max, "{name}: {} bytes", text.len());
            assert!(!text.is_empty(), "{name}: an empty closed file");
            let closed_at = close_time(name);
            assert!(closed_at > last_close, "{name} sorts out of time order");
            last_close = closed_at.clone();
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                // `ts` (arrival, ms) is never after the file was closed.
                let ts = v["ts"].as_str().unwrap();
                assert!(ts[..23] <= closed_at[..23], "{name}: line at {ts}");
            }
        }
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{name}: not a whole line ({e}): {l:?}"));
            let id = v["request_id"].as_str().unwrap().to_string();
            assert!(ids.insert(id), "{name}: a line in two files");
        }
    }
    let want: HashSet<String> = sent
        .iter()
        .map(|r| r.header("x-request-id").to_string())
        .collect();
    assert_eq!(
        ids.len(),
        sent.len(),
        "one line per response, no more, no less"
    );
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_older_than_max_age_is_closed_and_no_line_is_lost() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let yaml = with_rotation(
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
        "rotate: { max_age: 1s }",
    );
    let cohort = Cohort::start(&dir, &yaml);
    let client = TestClient::new();
    post_all(&client, cohort.addr, &users("early", 25), 4).await;
    let logs = dir.path().join("logs");
    let deadline = Instant::now() + Duration::from_secs(15);
    while log_files(&logs).len() < 2 {
        assert!(Instant::now() < deadline, "no file closed by age");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    post_all(&client, cohort.addr, &users("late", 15), 4).await;
    assert!(cohort.terminate().success());
    let files = log_files(&logs);
    let lines: Vec<&str> = files.iter().flat_map(|(_, t)| t.lines()).collect();
    assert_eq!(lines.len(), 40, "{files:?}");
    // Without compress, the closed files stay plain.
    assert!(files.iter().all(|(n, _)| !n.ends_with(".gz")));
    let first_closed = &files[1].1;
    assert!(first_closed.lines().all(|l| l.contains("\"early-")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_costs_log_lines_counted_and_rate_limited_never_requests() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let yaml = with_admin(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
    )
    .replace("path: ./logs/access.jsonl", "path: /dev/full");
    let started = Instant::now();
    let cohort = Cohort::start(&dir, &yaml);
    let admin = cohort.admin_addr();
    let client = TestClient::new();
    let mut served = 0;
    for round in 0..8 {
        let rs = post_all(&client, cohort.addr, &users(&format!("full{round}"), 25), 4).await;
        served += rs.iter().filter(|r| r.status == 200).count();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(served, 200, "every request is served");
    let dropped = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("cohort_access_log_lines_total{result=\"dropped\"} "))
            .map(|v| v.trim().parse::<f64>().unwrap() as usize)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = admin_call(&client, admin, "GET", "/metrics", None).await;
        if dropped(&m.body) == Some(200) {
            assert!(m
                .body
                .contains("cohort_access_log_lines_total{result=\"written\"} 0"));
            break;
        }
        assert!(Instant::now() < deadline, "drops not counted:\n{}", m.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors = cohort
        .stderr()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("access log"))
        .count();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(errors >= 1, "the failure is reported:\n{}", cohort.stderr());
    // A bound, not a timing: at most one error line per second.
    assert!(
        errors as f64 <= elapsed.ceil() + 1.0,
        "{errors} error lines in {elapsed:.1}s:\n{}",
        cohort.stderr()
    );
    assert!(cohort.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_midway_leaves_only_whole_lines_and_counts_the_rest() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    let yaml = with_admin(
        &dir,
        &config(&[("old", &old), ("new", &new)], &ranker("50", "50")),
    );
    dir.write_config(&yaml);
    // A file-size limit of 32 KiB (SIGXFSZ ignored, so a write past it
    // fails with EFBIG instead of killing the process): the write that
    // crosses it is cut off in the middle of a line, as on a full disk.
    // Ten units keep the store's journal far below the limit.
    let cohort = Cohort::start_in_shell(&dir, "trap '' XFSZ; ulimit -f 32");
    let admin = cohort.admin_addr();
    let client = TestClient::new();
    let units: Vec<String> = (0..200).map(|i| format!("cut-{}", i % 10)).collect();
    let served = post_all(&client, cohort.addr, &units, 4).await;
    assert!(
        served.iter().all(|r| r.status == 200),
        "every request is served"
    );
    let count = |text: &str, result: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "cohort_access_log_lines_total{{result=\"{result}\"}} "
                ))
            })
            .map(|v| v.trim().parse::<f64>().unwrap() as usize)
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (written, dropped) = loop {
        let m = admin_call(&client, admin, "GET", "/metrics", None).await;
        let (w, d) = (count(&m.body, "written"), count(&m.body, "dropped"));
        if w + d == 200 {
            break (w, d);
        }
        assert!(Instant::now() < deadline, "lines unaccounted:\n{}", m.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        dropped > 0 && written > 0,
        "written {written}, dropped {dropped}"
    );
    let text = std::fs::read_to_string(dir.log_path()).unwrap();
    assert!(text.len() <= 32 * 1024);
    assert!(text.ends_with('\n'), "the torn line was cut off");
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("a torn line ({e}): {l:?}"));
    }
    assert_eq!(text.lines().count(), written, "written = lines in the file");
    assert!(cohort.terminate().success());
}
