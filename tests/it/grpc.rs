//! gRPC through the proxy: real Python grpcio servers and clients
//! (`tests/it/grpc/server.py`, `client.py`; generic handlers, no codegen)
//! on `protocol: h2` upstreams. Unary and server-streaming calls pass
//! through with their trailers, every call is stamped, the unit comes from
//! the call's metadata, routes match method paths exactly or by prefix,
//! and a call the proxy fails itself gets a gRPC status (14, 4), stamped,
//! while the access log keeps the real cause; a stream the proxy cuts
//! after its head (past `total_timeout`) ends DEADLINE_EXCEEDED. Each
//! test is skipped (with a message) where grpcio is not installed;
//! `.ci/run` installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::Empty;
use serde_json::{json, Value};

use crate::edge_util::*;
use crate::util::*;

/// Skips the test when Python's grpcio is missing (CI installs it); under
/// CI (`CI` set) a missing grpcio fails instead.
macro_rules! need_grpcio {
    () => {
        if !grpcio_available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3 grpcio is not installed: .ci/run must install it"
            );
            eprintln!("python3 grpcio not installed: skipped (.ci/run installs it)");
            return;
        }
    };
}

fn grpcio_available() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/grpc")
        .join(name)
}

/// A Python gRPC model server (`server.py NAME ARGS`), killed on drop.
pub(crate) struct GrpcServer {
    child: Child,
    pub port: u16,
}

impl GrpcServer {
    pub(crate) fn start(name: &str, args: &[&str]) -> GrpcServer {
        let mut child = Command::new("python3")
            .arg(script("server.py"))
            .arg(name)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("gRPC server {name} did not start: {line:?}"));
        GrpcServer { child, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `client.py` against `target` with `calls`; one result per call.
pub(crate) async fn grpc_calls(target: String, ca: Option<PathBuf>, calls: Value) -> Vec<Value> {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("python3");
        cmd.arg(script("client.py")).arg(&target);
        if let Some(ca) = &ca {
            cmd.arg("--ca").arg(ca);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            calls.to_string().as_bytes(),
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "client.py: {e}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    })
    .await
    .unwrap()
}

const SALT: &str = "grpc-salt";
const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Two experiments on one gRPC service: `infer` on the ModelInfer method
/// exactly, `service` on every other method by prefix; both split 50/50
/// between `old` (control) and `new` (treatment).
fn experiments() -> String {
    let variants = "    variants:\n      - { name: control, upstream: old, weight: 50 }\n      - { name: treatment, upstream: new, weight: 50 }\n";
    format!(
        "  - name: infer\n    routes: [{INFER}]\n    salt: {SALT}\n{variants}  - name: service\n    routes: ['/inference.GRPCInferenceService/*']\n    salt: {SALT}\n{variants}"
    )
}

/// The test config with `old` and `new` speaking HTTP/2.
fn h2_config(old: String, new: String) -> String {
    h2_upstreams(&config_urls(&[("old", old), ("new", new)], &experiments()))
}

/// A unit the contract puts in control (bucket below 5000), and one in
/// treatment, by the public bucket hash.
fn units() -> (String, String) {
    let find = |control: bool| {
        (0..)
            .map(|i| format!("grpc-user-{i}"))
            .find(|u| (bucket(SALT, u) < 5000) == control)
            .unwrap()
    };
    (find(true), find(false))
}

/// The initial and trailing metadata of a result, together: a gRPC error
/// answered in one HEADERS frame ("Trailers-Only") reads as trailers.
fn all_metadata(r: &Value) -> serde_json::Map<String, Value> {
    let mut m = r["initial"].as_object().cloned().unwrap_or_default();
    m.extend(r["trailing"].as_object().cloned().unwrap_or_default());
    m
}

async fn pass_through(tls: bool) {
    let (old, new) = (GrpcServer::start("old", &[]), GrpcServer::start("new", &[]));
    let dir = TestDir::new();
    let mut yaml = h2_config(old.url(), new.url());
    let mut ca = None;
    if tls {
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let authority = Ca::new("grpc-test");
        let (cert, key) = authority.leaf(false);
        put(&certs, "server.crt", &cert);
        put(&certs, "server.key", &key);
        ca = Some(put(&certs, "ca.pem", &authority.pem));
        yaml.push_str("tls: { cert_file: certs/server.crt, key_file: certs/server.key }\n");
    }
    let cohort = Cohort::start(&dir, &yaml);
    let (a, b) = units();
    let md = |u: &str| json!([["x-user-id", u], ["x-note", "keep-me"]]);
    let calls = json!([
        { "method": "ModelInfer", "request": "a", "metadata": md(&a) },
        { "method": "ModelInfer", "request": "b", "metadata": md(&b) },
        { "method": "ModelStream", "request": "3", "metadata": md(&b) },
        { "method": "Fail", "request": "m9", "metadata": md(&a) },
    ]);
    let target = format!("127.0.0.1:{}", cohort.addr.port());
    let got = grpc_calls(target, ca, calls).await;

    // Unary: the unit from metadata picks the variant, which picks the
    // server; stamps on the initial metadata, the server's trailers intact.
    for (r, unit, variant, server) in [
        (&got[0], &a, "control", "old"),
        (&got[1], &b, "treatment", "new"),
    ] {
        assert_eq!(r["code"], "OK", "{r}");
        assert_eq!(r["initial"]["x-cohort-experiment"], "infer", "{r}");
        assert_eq!(r["initial"]["x-cohort-variant"], variant, "{r}");
        assert_eq!(r["initial"]["x-cohort-epoch"], "1", "{r}");
        let body: Value = serde_json::from_str(r["responses"][0].as_str().unwrap()).unwrap();
        assert_eq!(body["served_by"], server, "{r}");
        assert_eq!(body["metadata"]["x-user-id"], unit.as_str(), "{r}");
        assert_eq!(body["metadata"]["x-note"], "keep-me", "{r}");
        assert_eq!(body["metadata"]["x-cohort-variant"], variant, "{r}");
        assert_eq!(r["trailing"]["x-served-by"], server, "{r}");
        assert_eq!(
            r["trailing"]["x-trailer-note"],
            format!("from-{server}"),
            "{r}"
        );
    }
    // Server streaming on the prefix route: every message, then trailers.
    let s = &got[2];
    assert_eq!(s["code"], "OK", "{s}");
    assert_eq!(s["initial"]["x-cohort-experiment"], "service", "{s}");
    assert_eq!(s["initial"]["x-cohort-variant"], "treatment", "{s}");
    let seqs: Vec<i64> = s["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m.as_str().unwrap()).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [0, 1, 2], "{s}");
    assert_eq!(s["trailing"]["x-stream-count"], "3", "{s}");
    assert_eq!(s["trailing"]["x-served-by"], "new", "{s}");
    // The server's own error status and message reach the client as sent.
    let f = &got[3];
    assert_eq!(f["code"], "NOT_FOUND", "{f}");
    assert_eq!(f["details"], "no model named m9", "{f}");
    assert_eq!(all_metadata(f)["x-cohort-variant"], "control", "{f}");

    assert!(cohort.terminate().success());
    let log = dir.access_log();
    assert_eq!(log.len(), 4, "{log:?}");
    // Lines are written as responses end, not in the order sent.
    for (path, experiment, variant) in [
        (INFER, "infer", "control"),
        (INFER, "infer", "treatment"),
        (
            "/inference.GRPCInferenceService/ModelStream",
            "service",
            "treatment",
        ),
        ("/inference.GRPCInferenceService/Fail", "service", "control"),
    ] {
        let l = log
            .iter()
            .find(|l| l["path"] == path && l["variant"] == variant)
            .unwrap_or_else(|| panic!("no line for {path} {variant}: {log:?}"));
        assert_eq!(l["protocol"], "h2", "{l}");
        assert_eq!(l["experiment"], experiment, "{l}");
        assert_eq!(l["variant"], variant, "{l}");
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["error"], Value::Null, "{l}");
    }
    drop((old, new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_pass_through_h2c_stamped_with_trailers_and_unit_from_metadata(
) {
    need_grpcio!();
    pass_through(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_a_tls_listener_the_same_way() {
    need_grpcio!();
    pass_through(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_the_proxy_fails_gets_unavailable_or_deadline_exceeded_stamped_and_the_log_keeps_the_cause(
) {
    need_grpcio!();
    // control: nothing listens; treatment: answers after 3 s, past the
    // upstream's 2 s timeout (the client's own deadline is 10 s).
    let dead = Flaky::dead_address().await;
    let slow = GrpcServer::start("slow", &["--delay", "3"]);
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &h2_config(format!("http://{dead}"), slow.url()));
    let (a, b) = units();
    let calls = json!([
        { "method": "ModelInfer", "request": "x", "metadata": [["x-user-id", a]] },
        { "method": "ModelInfer", "request": "y", "metadata": [["x-user-id", b]] },
    ]);
    let got = grpc_calls(format!("127.0.0.1:{}", cohort.addr.port()), None, calls).await;
    for (r, code, variant) in [
        (&got[0], "UNAVAILABLE", "control"),
        (&got[1], "DEADLINE_EXCEEDED", "treatment"),
    ] {
        assert_eq!(r["code"], code, "{r}");
        let m = all_metadata(r);
        assert_eq!(m["x-cohort-experiment"], "infer", "{r}");
        assert_eq!(m["x-cohort-variant"], variant, "{r}");
        assert_eq!(m["x-cohort-epoch"], "1", "{r}");
        assert!(r["details"].as_str().unwrap().contains("upstream"), "{r}");
    }

    // On the wire: HTTP 200, grpc-status in the head, stamped.
    let io = tokio::net::TcpStream::connect(cohort.addr).await.unwrap();
    let mut send = h2_client(io).await;
    let req = http::Request::post(format!("http://{}{INFER}", cohort.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-user-id", a.as_str())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["grpc-status"], "14", "{h:?}");
    assert!(h["grpc-message"].to_str().unwrap().contains("old"), "{h:?}");
    assert_eq!(h["content-type"], "application/grpc", "{h:?}");
    assert_eq!(h["x-cohort-variant"], "control", "{h:?}");
    assert!(h.contains_key("x-request-id"), "{h:?}");
    // A plain HTTP request on the same route still gets the JSON 502.
    let req = http::Request::post(format!("http://{}{INFER}", cohort.addr))
        .header("x-user-id", a.as_str())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(!resp.headers().contains_key("grpc-status"));

    assert!(cohort.terminate().success());
    let log = dir.access_log();
    assert_eq!(log.len(), 4, "{log:?}");
    let mut causes: Vec<String> = log
        .iter()
        .map(|l| format!("{} {} {}", l["status"], l["error"], l["variant"]))
        .collect();
    causes.sort();
    assert_eq!(
        causes,
        [
            r#"502 "upstream_connect" "control""#,
            r#"502 "upstream_connect" "control""#,
            r#"502 "upstream_connect" "control""#,
            r#"504 "upstream_timeout" "treatment""#,
        ]
    );
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_whose_upstream_resets_gets_unavailable_and_is_logged_upstream_reset() {
    need_grpcio!();
    // An upstream that accepts and closes at once, before any answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let closer = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &h2_config(url.clone(), url));
    let calls =
        json!([{ "method": "ModelInfer", "request": "z", "metadata": [["x-user-id", "u-reset"]] }]);
    let got = grpc_calls(format!("127.0.0.1:{}", cohort.addr.port()), None, calls).await;
    assert_eq!(got[0]["code"], "UNAVAILABLE", "{}", got[0]);
    assert_eq!(
        all_metadata(&got[0])["x-cohort-experiment"],
        "infer",
        "{}",
        got[0]
    );
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["error"], "upstream_reset", "{}", log[0]);
    assert_eq!(log[0]["status"], 502, "{}", log[0]);
    closer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_past_total_timeout_ends_deadline_exceeded_not_internal() {
    need_grpcio!();
    // Messages 1 s apart: the head and the first message go out at once,
    // the tenth would be due after the upstream's 2 s total_timeout.
    let slow = GrpcServer::start("slow", &["--gap", "1"]);
    let dir = TestDir::new();
    let yaml = h2_config(slow.url(), slow.url())
        .replace("protocol: h2 }", "protocol: h2, total_timeout: 2s }");
    let cohort = Cohort::start(&dir, &yaml);
    let (a, _) = units();
    let calls = json!([
        { "method": "ModelStream", "request": "10", "metadata": [["x-user-id", a]] },
    ]);
    let got = grpc_calls(format!("127.0.0.1:{}", cohort.addr.port()), None, calls).await;
    let r = &got[0];
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    assert!(r["details"].as_str().unwrap().contains("old"), "{r}");
    assert_eq!(all_metadata(r)["x-cohort-variant"], "control", "{r}");
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    assert_eq!(log.len(), 1, "{log:?}");
    // The head went out 200; the log keeps why the body was cut.
    assert_eq!(
        (log[0]["status"].as_u64(), log[0]["error"].as_str()),
        (Some(200), Some("upstream_timeout")),
        "{}",
        log[0]
    );
}

/// A response body that sends one message, then fails (hyper's HTTP/2
/// server resets the stream) once `broken` is notified: the proxy has
/// relayed the head by then.
struct BreaksAfterOne {
    sent: bool,
    broken: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl http_body::Body for BreaksAfterOne {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if !self.sent {
            self.sent = true;
            let message = Bytes::from_static(b"\0\0\0\0\x01x");
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(message))));
        }
        self.broken
            .as_mut()
            .poll(cx)
            .map(|()| Some(Err(std::io::Error::other("the model crashed"))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_response_whose_upstream_body_breaks_ends_unavailable_in_trailers() {
    use http_body_util::BodyExt;
    // An h2c upstream whose response breaks after its head and a message.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let crash = std::sync::Arc::new(tokio::sync::Notify::new());
    let c = crash.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let c = c.clone();
            let svc = hyper::service::service_fn(move |_req| {
                let c = c.clone();
                async move {
                    let body = BreaksAfterOne {
                        sent: false,
                        broken: Box::pin(async move { c.notified().await }),
                    };
                    let resp = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
            );
        }
    });
    let dir = TestDir::new();
    let cohort = Cohort::start(&dir, &h2_config(url.clone(), url));
    let io = tokio::net::TcpStream::connect(cohort.addr).await.unwrap();
    let mut send = h2_client(io).await;
    let req = http::Request::post(format!("http://{}{INFER}", cohort.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-user-id", "u-broken")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("grpc-status"), "{resp:?}");
    // The head is here: now the upstream's body breaks. The message, then
    // trailers saying why the call ended (no reset).
    crash.notify_one();
    let got = resp.into_body().collect().await.expect("a whole body");
    let trailers = got.trailers().cloned().expect("trailers");
    assert_eq!(got.to_bytes().as_ref(), b"\0\0\0\0\x01x");
    assert_eq!(trailers["grpc-status"], "14", "{trailers:?}");
    assert!(
        trailers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("upstream"),
        "{trailers:?}"
    );
    assert!(cohort.terminate().success());
    let log = dir.access_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0]["status"].as_u64(), log[0]["error"].as_str()),
        (Some(200), Some("upstream_body")),
        "{}",
        log[0]
    );
    server.abort();
}
