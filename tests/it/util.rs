//! Test helpers that read like prose: `Backend::spawn("old")`,
//! `Cohort::start(&dir, yaml)`, `client.post(addr, "/predict", Some("alice"))`.
//! Everything runs on real loopback sockets; the proxy is the real binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A model backend on a real socket that answers with its name and records
/// the headers of every request it received.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Behaviour {
    name: String,
    delay: Duration,
}

impl Backend {
    pub async fn spawn(name: &str) -> Backend {
        Backend::spawn_with(name, Duration::ZERO).await
    }

    /// A backend that waits `delay` before answering (for timeouts).
    pub async fn spawn_with(name: &str, delay: Duration) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let b = Behaviour {
            name: name.into(),
            delay,
        };
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (b, s) = (b.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(b.clone(), s.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("backend saw a request")
    }

    /// Stops accepting and closes the socket (connections then get refused).
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn answer(
    b: Behaviour,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    seen.lock().unwrap().push(req.headers().clone());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let out = serde_json::json!({ "model": b.name, "echo_bytes": body.len() }).to_string();
    Ok(Response::new(Full::new(Bytes::from(out))))
}

/// A response as the test client saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    pub fn variant(&self) -> &str {
        self.header("x-cohort-variant")
    }
    pub fn epoch(&self) -> u32 {
        self.header("x-cohort-epoch")
            .parse()
            .unwrap_or_else(|_| panic!("no epoch stamp: {self:?}"))
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct TestClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new() -> TestClient {
        TestClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn post(&self, addr: SocketAddr, path: &str, user: Option<&str>) -> Resp {
        self.send(
            addr,
            "POST",
            path,
            &[("x-user-id", user)],
            "{\"features\":[1,2,3]}",
        )
        .await
    }

    pub async fn send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, Option<&str>)],
        body: &str,
    ) -> Resp {
        self.try_send(addr, method, path, headers, body)
            .await
            .expect("request failed")
    }

    pub async fn try_send(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, Option<&str>)],
        body: &str,
    ) -> Result<Resp, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            if let Some(v) = v {
                b = b.header(*k, *v);
            }
        }
        let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A test directory holding a config, the store and the access log.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> PathBuf {
        self.path().join("cohort.yaml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.path().join("logs/access.jsonl")
    }
    /// Writes the config atomically (as editors and config tools do).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.path().join(".cohort.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }
    /// Every access-log line written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
            .collect()
    }
}

/// The standard test config: `listen` on port 0, store and log in the dir.
/// `experiments` is YAML for the `experiments:` list, indented by 2.
///
/// With `COHORT_TEST_DATA_PATH=hyper` in the environment every test runs
/// with `runtime.http1_fast_path: false`: `.ci/run` runs the suite both
/// ways, so each behaviour is proven on both data paths.
pub fn config(upstreams: &[(&str, &Backend)], experiments: &str) -> String {
    let urls: Vec<(&str, String)> = upstreams.iter().map(|(n, b)| (*n, b.url())).collect();
    config_urls(&urls, experiments)
}

/// [`config`] with upstreams given by URL.
pub fn config_urls(upstreams: &[(&str, String)], experiments: &str) -> String {
    config_on_path(upstreams, experiments, lean_path_wanted())
}

/// Whether the tests run on the lean path (the default) or hyper's.
pub fn lean_path_wanted() -> bool {
    std::env::var("COHORT_TEST_DATA_PATH").as_deref() != Ok("hyper")
}

/// The proxy's `runtime.worker_threads` in tests: 2, or `COHORT_TEST_WORKERS`
/// (`.ci/run` also runs the suite with 1, which takes the current-thread
/// scheduler).
fn worker_threads() -> String {
    std::env::var("COHORT_TEST_WORKERS").unwrap_or_else(|_| "2".into())
}

/// [`config`] on a given data path: `lean` sets `runtime.http1_fast_path`.
pub fn config_on_path(upstreams: &[(&str, String)], experiments: &str, lean: bool) -> String {
    let workers = worker_threads();
    let mut y = format!("listen: 127.0.0.1:0\nstore: {{ path: ./data }}\naccess_log: {{ path: ./logs/access.jsonl }}\nruntime: {{ worker_threads: {workers}, shutdown_timeout: 5s, http1_fast_path: {lean} }}\nupstreams:\n");
    for (name, url) in upstreams {
        y.push_str(&format!(
            "  {name}: {{ url: {url}, timeout: 2s, connect_timeout: 1s }}\n"
        ));
    }
    y.push_str("experiments:\n");
    y.push_str(experiments);
    y
}

/// The ranker experiment with the given weights for control and treatment.
pub fn ranker(control: &str, treatment: &str) -> String {
    format!(
        "  - name: ranker\n    routes: [/predict]\n    salt: ranker-salt\n    variants:\n      - {{ name: control, upstream: old, weight: {control} }}\n      - {{ name: treatment, upstream: new, weight: {treatment} }}\n"
    )
}

/// A running `cohort` process.
pub struct Cohort {
    pub addr: SocketAddr,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Cohort {
    /// Writes `yaml` to `dir` and starts the proxy on it.
    pub fn start(dir: &TestDir, yaml: &str) -> Cohort {
        dir.write_config(yaml);
        Cohort::start_existing(dir)
            .unwrap_or_else(|(code, log)| panic!("cohort did not start ({code:?}):\n{log}"))
    }

    /// Starts on the config already in `dir`; on failure returns the exit
    /// status and stderr.
    pub fn start_existing(dir: &TestDir) -> Result<Cohort, (Option<ExitStatus>, String)> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .arg("--config")
            .arg(dir.config_path())
            .env("COHORT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cohort");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let addr: SocketAddr = addr.split_whitespace().next().unwrap().parse().unwrap();
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Ok(Cohort {
                addr,
                child,
                stderr,
            }),
            Err(_) => {
                let status = child.try_wait().ok().flatten().or_else(|| {
                    let _ = child.kill();
                    child.wait().ok()
                });
                std::thread::sleep(Duration::from_millis(100));
                let log = stderr.lock().unwrap().join("\n");
                Err((status, log))
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains `needle` (after `skip` lines).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line containing {needle:?} within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 5 s) until `n` reloads have been applied.
    pub fn wait_reloads(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.count_log("config reloaded") < n {
            assert!(
                Instant::now() < deadline,
                "reload {n} not applied:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Number of stderr lines containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Sends a signal by name (`TERM`, `HUP`, `USR1`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        wait_timeout(&mut self.child, Duration::from_secs(20))
    }

    /// SIGKILL: no chance to flush or sync anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Cohort {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_timeout(child: &mut Child, t: Duration) -> ExitStatus {
    let deadline = Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cohort did not exit within {t:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Distinct unit ids for a test, deterministic.
pub fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The public bucket contract, recomputed independently of the library.
pub fn bucket(salt: &str, unit: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{salt}:{unit}").as_bytes());
    (u64::from_be_bytes(d[..8].try_into().unwrap()) % 10_000) as u32
}

/// Half-width of a 5-sigma interval for a binomial count.
pub fn binomial_bound(n: usize, p: f64) -> f64 {
    5.0 * (n as f64 * p * (1.0 - p)).sqrt()
}

/// Sends one request per user, `concurrency` at a time; returns responses in user order.
pub async fn post_all(
    client: &TestClient,
    addr: SocketAddr,
    users: &[String],
    concurrency: usize,
) -> Vec<Resp> {
    let users = Arc::new(users.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(vec![None; users.len()]));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, users, next, out) = (client.clone(), users.clone(), next.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= users.len() {
                    break;
                }
                let r = client.post(addr, "/predict", Some(&users[i])).await;
                out.lock().unwrap()[i] = Some(r);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = std::mem::take(&mut *out.lock().unwrap());
    v.into_iter().map(|r| r.unwrap()).collect()
}

impl Cohort {
    /// The admin API's address, from its start-up log line.
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("admin API on http://", Duration::from_secs(5));
        let addr = line.split("admin API on http://").nth(1).unwrap();
        addr.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// Runs the `cohort` binary with `args`; returns (exit code, stdout, stderr).
pub fn cohort_cmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .output()
        .expect("run cohort");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub const ADMIN_TOKEN: &str = "t0ken-for-tests-only";

/// An `admin:` block on port 0 with a token file written into `dir`.
pub fn with_admin(dir: &TestDir, yaml: &str) -> String {
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    yaml.replace(
        "experiments:\n",
        "admin: { listen: 127.0.0.1:0, token_file: admin.token }\nexperiments:\n",
    )
}

/// Calls the admin API; `token` None sends no Authorization header.
pub async fn admin_call(
    client: &TestClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    client
        .send(
            addr,
            method,
            path,
            &[("authorization", auth.as_deref())],
            "",
        )
        .await
}

/// Closed-loop load until stopped: `clients` tasks, each sending
/// `POST /predict` for `unit(task, i)` (its i-th request) and handing every
/// outcome to `answer`. Counts requests and failures (non-200 or no answer).
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    failures: Arc<std::sync::atomic::AtomicUsize>,
}

impl Load {
    pub fn spawn(
        addr: SocketAddr,
        clients: usize,
        unit: impl Fn(usize, usize) -> String + Send + Sync + 'static,
        answer: impl Fn(String, &Resp) + Send + Sync + 'static,
    ) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let (unit, answer) = (Arc::new(unit), Arc::new(answer));
        let tasks = (0..clients)
            .map(|w| {
                let (stop, requests, failures, unit, answer) = (
                    stop.clone(),
                    requests.clone(),
                    failures.clone(),
                    unit.clone(),
                    answer.clone(),
                );
                tokio::spawn(async move {
                    let client = TestClient::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let u = unit(w, i);
                        i += 1;
                        match client
                            .try_send(addr, "POST", "/predict", &[("x-user-id", Some(&u))], "{}")
                            .await
                        {
                            Ok(r) if r.status == 200 => answer(u, &r),
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            requests,
            failures,
        }
    }

    /// Stops the clients and waits for their last requests.
    pub async fn stop(self) -> Load {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut me = self;
        for t in std::mem::take(&mut me.tasks) {
            t.await.unwrap();
        }
        me
    }

    pub fn failed(&self) -> usize {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn sent(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A backend on a raw socket that answers each request head with the raw
/// bytes `script` returns for its request line and its index on the
/// connection, for framings and faults a well-behaved server never produces. It reads `content-length` bodies
/// and closes the connection when the answer is followed by `None`.
pub struct RawBackend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`RawBackend`] does with one request.
pub struct Answer {
    pub bytes: Vec<u8>,
    /// Close the connection after writing, after this long.
    pub close_after: Option<Duration>,
}

impl RawBackend {
    pub async fn spawn(script: fn(&str, usize) -> Answer) -> RawBackend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut nth = 0;
                    loop {
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + 4 + len {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let line = head.lines().next().unwrap_or("").to_string();
                        buf.drain(..end + 4 + len);
                        let answer = script(&line, nth);
                        nth += 1;
                        if s.write_all(&answer.bytes).await.is_err() {
                            return;
                        }
                        if let Some(after) = answer.close_after {
                            tokio::time::sleep(after).await;
                            return;
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes `raw` on a new connection to `addr` and reads until the peer
/// closes or `expect` responses (by status line) have fully arrived.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8], expect: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while complete_responses(&got) < expect && Instant::now() < deadline {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// How many whole responses `raw` holds (content-length or chunked bodies).
pub fn complete_responses(raw: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = raw;
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
        let body = &rest[end + 4..];
        let used = if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            let len: usize = len.trim().parse().unwrap();
            if body.len() < len {
                return n;
            }
            len
        } else if head.contains("transfer-encoding: chunked") {
            match find(body, b"0\r\n\r\n") {
                Some(i) => i + 5,
                None => return n,
            }
        } else {
            0
        };
        n += 1;
        rest = &body[used..];
    }
    n
}
