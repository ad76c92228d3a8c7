//! Thread-per-core (issue 15): each worker serves the connections it was
//! given for their whole life, and a new connection goes to the worker
//! with the fewest open ones, so two clients holding one keep-alive
//! connection each are served by two workers, whichever worker the kernel
//! gave the second one to (which, left to itself, is often the same). Which worker serves a connection is the
//! listener's debug line `serving a connection worker=N peer=ADDR`.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::util::*;

/// A new keep-alive connection, answered once, and the worker serving it.
async fn connect_and_ask(cohort: &Cohort) -> (TcpStream, String) {
    let mut s = TcpStream::connect(cohort.addr).await.unwrap();
    s.write_all(b"GET /nowhere HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let got = read_one_response(&mut s).await;
    assert!(
        got.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let me = s.local_addr().unwrap();
    let line = cohort.wait_for_log(&format!("peer={me}"), Duration::from_secs(5));
    let worker = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("worker="))
        .unwrap_or_else(|| panic!("no worker in {line:?}"))
        .to_string();
    (s, worker)
}

#[tokio::test]
async fn kept_alive_clients_are_spread_over_the_workers() {
    let old = Backend::spawn("old").await;
    let new = Backend::spawn("new").await;
    let dir = TestDir::new();
    // Two workers, whatever COHORT_TEST_WORKERS says.
    let yaml = config(&[("old", &old), ("new", &new)], &ranker("50", "50"));
    dir.write_config(&with_workers(&yaml, 2));
    let cohort =
        Cohort::start_in_shell(&dir, "export COHORT_LOG=info,cohort::proxy::listener=debug");

    // Each stays open: the next goes to the worker with fewer, so after
    // every second one both serve as many.
    let mut open = Vec::new();
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for i in 1..=10 {
        let (s, worker) = connect_and_ask(&cohort).await;
        open.push(s);
        *served.entry(worker).or_default() += 1;
        if i % 2 == 0 {
            assert_eq!(
                served.values().collect::<Vec<_>>(),
                [&(i / 2), &(i / 2)],
                "after {i} connections: {served:?}"
            );
        }
    }
}

/// Out of descriptors at any point while the workers start: start-up
/// stops with its error and exit 1, never a panic (a worker's runtime
/// dropped in the control plane's async context used to panic, exit 101).
#[tokio::test]
async fn running_out_of_descriptors_while_workers_start_is_an_error_not_a_panic() {
    let old = Backend::spawn("old").await;
    let new = Backend::spawn("new").await;
    let dir = TestDir::new();
    let yaml = config(&[("old", &old), ("new", &new)], &ranker("50", "50"));
    dir.write_config(&with_workers(&yaml, 4));
    let config = dir.config_path();
    let mut worker_errors = 0;
    for limit in 12..32 {
        let mut child = std::process::Command::new("prlimit")
            .arg(format!("--nofile={limit}"))
            .arg(env!("CARGO_BIN_EXE_cohort"))
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("prlimit runs (util-linux)");
        // Enough descriptors to start: it serves until killed.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(
            !stderr.contains("panicked"),
            "nofile={limit}: a panic\n{stderr}"
        );
        if let Some(s) = status {
            assert_eq!(s.code(), Some(1), "nofile={limit}\n{stderr}");
        }
        if stderr.contains("cannot start the worker threads") {
            worker_errors += 1;
        }
    }
    assert!(worker_errors > 0, "no limit stopped the workers' start");
}
