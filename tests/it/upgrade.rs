//! Zero-downtime binary upgrade (issue 14, point 9): under continuous load
//! — keep-alive clients and a new connection per request — SIGUSR2 hands
//! the listeners to a new process and the old one drains and exits. No
//! request fails, every unit keeps its variant across the two processes
//! (the store passed from one to the other with no overlap), every
//! response has its access-log line, and the new process serves on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
    /// Idempotent requests sent again on a new connection because a reused
    /// one closed before any answer byte (RFC 9112 §9.3.1).
    resent: AtomicUsize,
    variants: Mutex<HashMap<String, String>>,
}

impl Tally {
    fn record(&self, user: &str, response: &str) {
        let status_ok = response.starts_with("HTTP/1.1 200");
        let variant = response
            .lines()
            .find_map(|l| l.strip_prefix("x-cohort-variant: "))
            .map(str::to_string);
        let (true, Some(variant)) = (status_ok, variant) else {
            self.fail(format!("{user}: {response:?}"));
            return;
        };
        let mut seen = self.variants.lock().unwrap();
        let first = seen
            .entry(user.to_string())
            .or_insert_with(|| variant.clone());
        if *first != variant {
            let why = format!("{user} moved from {first} to {variant}");
            drop(seen);
            self.fail(why);
            return;
        }
        self.ok.fetch_add(1, Ordering::SeqCst);
    }

    fn fail(&self, why: String) {
        self.failed.lock().unwrap().push(why);
    }
}

/// Reads one response; `None` when the connection closed before any byte.
async fn response(s: &mut TcpStream) -> Result<Option<String>, String> {
    let mut got = Vec::new();
    while complete_responses(&got) < 1 {
        let mut b = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await {
            Err(_) => return Err("no answer within 20 s".into()),
            Ok(Ok(0)) | Ok(Err(_)) if got.is_empty() => return Ok(None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(format!("cut: {:?}", String::from_utf8_lossy(&got)))
            }
            Ok(Ok(n)) => got.extend_from_slice(&b[..n]),
        }
    }
    Ok(Some(String::from_utf8_lossy(&got).into_owned()))
}

/// A keep-alive client sending GETs back to back.
async fn keep_alive(addr: SocketAddr, n: usize, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut conn: Option<TcpStream> = None;
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let user = format!("ka{n}-{}", i % 50);
        let req = format!("GET /predict HTTP/1.1\r\nhost: t\r\nx-user-id: {user}\r\n\r\n");
        let reused = conn.is_some();
        let mut s = match conn.take() {
            Some(s) => s,
            None => TcpStream::connect(addr).await.unwrap(),
        };
        let sent = s.write_all(req.as_bytes()).await;
        match (sent, response(&mut s).await) {
            (Ok(()), Ok(Some(r))) => {
                if !r.to_lowercase().contains("connection: close") {
                    conn = Some(s);
                }
                t.record(&user, &r);
            }
            // The server closed the reused connection as the request went
            // out: sent again on a new one (the next turn), as clients do.
            (_, Ok(None)) | (Err(_), _) if reused => {
                t.resent.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            (_, Err(e)) => t.fail(format!("{user}: {e}")),
            (sent, r) => t.fail(format!("{user}: fresh connection failed: {sent:?} {r:?}")),
        }
        i += 1;
    }
}

/// A client opening a new connection for each POST (never resent).
async fn one_shot(addr: SocketAddr, n: usize, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let user = format!("os{n}-{}", i % 50);
        let req = format!("POST /predict HTTP/1.1\r\nhost: t\r\nx-user-id: {user}\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{{}}");
        let mut s = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                t.fail(format!("{user}: connect: {e}"));
                i += 1;
                continue;
            }
        };
        match (s.write_all(req.as_bytes()).await, response(&mut s).await) {
            (Ok(()), Ok(Some(r))) => t.record(&user, &r),
            (w, r) => t.fail(format!("{user}: {w:?} {r:?}")),
        }
        i += 1;
    }
}

/// Kills the new process if the test ends early.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_load_fails_no_request_and_moves_no_unit() {
    let old = Backend::spawn("old").await;
    let new = Backend::spawn("new").await;
    let dir = TestDir::new();
    let yaml = config(&[("old", &old), ("new", &new)], &ranker("50", "50"));
    let mut cohort = Cohort::start(&dir, &yaml);
    let addr = cohort.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for n in 0..2 {
        clients.push(tokio::spawn(keep_alive(
            addr,
            n,
            stop.clone(),
            tally.clone(),
        )));
        clients.push(tokio::spawn(one_shot(addr, n, stop.clone(), tally.clone())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = tally.ok.load(Ordering::SeqCst);
    assert!(
        before > 0,
        "no load before the upgrade: {:?}",
        tally.failed.lock().unwrap()
    );

    cohort.signal("USR2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = cohort.exited() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old process did not hand over:\n{}",
            cohort.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}\n{}", cohort.stderr());
    let line = cohort.wait_for_log("new_pid=", Duration::from_secs(1));
    let pid: u32 = line
        .split("new_pid=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let reap = Reap(pid);
    let at_exit = tally.ok.load(Ordering::SeqCst);

    // The load runs on against the new process alone.
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let ok = tally.ok.load(Ordering::SeqCst);
    let failed = tally.failed.lock().unwrap().clone();
    eprintln!(
        "binary upgrade under load: {ok} answered ({before} before SIGUSR2, {} after the old exited), {} resent, {} failed",
        ok - at_exit,
        tally.resent.load(Ordering::SeqCst),
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        ok > at_exit,
        "the new process served nothing:\n{}",
        cohort.stderr()
    );
    assert_eq!(
        cohort.count_log("took over the listeners"),
        1,
        "{}",
        cohort.stderr()
    );

    // The new process stops like any other, and the log is complete: one
    // line per answer, from the two processes.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopped = tokio::time::Instant::now() + Duration::from_secs(20);
    while cohort.count_log("stopped") < 2 {
        assert!(tokio::time::Instant::now() < stopped, "{}", cohort.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(reap);
    let log = dir.access_log();
    assert_eq!(log.len(), ok, "one access-log line per answer");
    let mut by_unit: HashMap<&str, &str> = HashMap::new();
    for l in &log {
        let (unit, variant) = (l["unit"].as_str().unwrap(), l["variant"].as_str().unwrap());
        assert_eq!(
            *by_unit.entry(unit).or_insert(variant),
            variant,
            "{unit} in two variants"
        );
    }
}

/// A WebSocket open in the old process does not hold the hand-over: the
/// old process lets the store go once its requests are done (a tunnel
/// never assigns), so the new one serves while the tunnel still echoes in
/// the old one; the old exits when the tunnel closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_open_in_the_old_process_does_not_hold_the_new_one_back() {
    use crate::streaming::{frame, read_frame, ws_echo, ws_handshake};
    let (ws, _) = ws_echo("old").await;
    let plain = Backend::spawn("plain").await;
    let dir = TestDir::new();
    let exp = "  - name: chat\n    routes: [/ws]\n    salt: s\n    variants:\n      - { name: control, upstream: ws, weight: 100 }\n  - name: ranker\n    routes: [/predict]\n    salt: s\n    variants:\n      - { name: control, upstream: plain, weight: 100 }\n";
    // A long drain deadline: only the tunnel's close may end the old one.
    let yaml = config_urls(
        &[("ws", format!("http://{ws}")), ("plain", plain.url())],
        exp,
    )
    .replace("shutdown_timeout: 5s", "shutdown_timeout: 60s");
    let mut cohort = Cohort::start(&dir, &yaml);

    let mut tunnel = TcpStream::connect(cohort.addr).await.unwrap();
    tunnel
        .write_all(ws_handshake("/ws", "walt").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tunnel.read(&mut b).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&b[..n]);
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    buf.clear();

    cohort.signal("USR2");
    // The new process serves (its own "listening on" line) while the
    // tunnel is open in the old one.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cohort.count_log("listening on http://") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new process waited for the old one's tunnel:\n{}",
            cohort.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = cohort.wait_for_log("new_pid=", Duration::from_secs(1));
    let pid: u32 = line
        .split("new_pid=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let reap = Reap(pid);
    let r = TestClient::new()
        .post(cohort.addr, "/predict", Some("walt"))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(cohort.exited().is_none(), "the old process cut the tunnel");

    // The tunnel still works, then closes; the old process exits.
    tunnel
        .write_all(&frame(1, b"still here", Some([7, 7, 7, 7])))
        .await
        .unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut tunnel, &mut buf))
        .await
        .expect("an echo");
    assert_eq!(echo.map(|e| e.1), Some(b"still here".to_vec()));
    tunnel
        .write_all(&frame(8, b"", Some([1, 1, 1, 1])))
        .await
        .unwrap();
    drop(tunnel);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = cohort.exited() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{}", cohort.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    drop(reap);
    let log = log_when(&dir, |l| l.iter().any(|l| l["status"] == 101)).await;
    assert!(
        log.iter()
            .any(|l| l["status"] == 101 && l["unit"] == "walt"),
        "{log:?}"
    );
}
