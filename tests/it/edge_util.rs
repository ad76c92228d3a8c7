//! Helpers for the TLS and HTTP/2 tests: certificates made with rcgen and
//! written to the test's directory, and curl (built with HTTP/2) as the
//! real client.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// A certificate authority that signs server and client certificates.
pub(crate) struct Ca {
    cert: Certificate,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A leaf for 127.0.0.1 (server) or a client, as (cert PEM, key PEM).
    pub(crate) fn leaf(&self, client: bool) -> (String, String) {
        self.leaf_for("127.0.0.1", client)
    }

    /// A leaf for `name` (a DNS name or an IP address).
    pub(crate) fn leaf_for(&self, name: &str, client: bool) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `dir/name`, atomically (a rename), and returns the path.
pub(crate) fn put(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

/// What curl saw: its exit code, the protocol and status of the response,
/// the headers (names lowercased) and the body.
#[derive(Debug)]
pub(crate) struct Curl {
    pub code: i32,
    pub protocol: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// curl's own messages, for failure output.
    #[allow(dead_code)]
    pub stderr: String,
}

impl Curl {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Runs curl with `args` (plus `-sS -i`) on a blocking thread.
pub(crate) async fn curl(args: &[String]) -> Curl {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let first = lines.next().unwrap_or("");
        let mut parts = first.split_whitespace();
        let protocol = parts.next().unwrap_or("").to_string();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Curl {
            code: out.status.code().unwrap_or(-1),
            protocol,
            status,
            headers,
            body: body.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    })
    .await
    .unwrap()
}

/// `args` as owned strings.
pub(crate) fn a(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// An HTTP/2 client connection (hyper's) over `io`: many streams on it.
pub(crate) async fn h2_client<I>(io: I) -> SendRequest<Empty<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// POSTs `path` for `unit` on an HTTP/2 connection: status, headers, body.
pub(crate) async fn h2_post(
    send: &mut SendRequest<Empty<Bytes>>,
    authority: &str,
    path: &str,
    unit: &str,
) -> (u16, http::HeaderMap, String) {
    let req = http::Request::post(format!("http://{authority}{path}"))
        .header("x-user-id", unit)
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("HTTP/2 exchange");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).to_string(),
    )
}
