//! `cohort demo`: two small model backends on loopback and the proxy in
//! front of them on the embedded example config, so a newcomer's first
//! `curl` gets a stamped answer with nothing else installed.
//!
//! The backends listen where the config's upstreams point (9001 and 9002 in
//! the embedded config). When a port is taken the error names it and the
//! way out: `--backend-ports 0,0` (any free ports) for the embedded config,
//! or other upstream URLs in the user's own file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::{self, Config, Env, LogTarget};

/// The embedded example config, with its store under `data_dir` and the
/// access log on stdout so the demo shows its lines as they happen.
pub fn demo_config(data_dir: PathBuf) -> Config {
    let mut cfg = config::parse(
        config::EMBEDDED_DEMO,
        std::path::Path::new("<embedded config/example.yaml>"),
        std::path::Path::new("."),
        &Env::default(),
    )
    .expect("the embedded example config is valid");
    cfg.store_path = data_dir;
    cfg.access_log.target = LogTarget::Stdout;
    cfg
}

/// The embedded config's upstreams, in the order `--backend-ports` gives
/// their ports.
pub const DEMO_UPSTREAMS: [&str; 2] = ["old-model", "new-model"];

/// A demo backend that could not listen.
#[derive(Debug, thiserror::Error)]
#[error("demo backend {upstream} cannot listen on {addr}: {reason} (hint: {hint})")]
pub struct BackendError {
    /// The upstream the backend plays.
    pub upstream: String,
    /// Where it tried to listen.
    pub addr: String,
    /// The OS's reason.
    pub reason: std::io::Error,
    /// The way out (another port, or another URL in the user's file).
    pub hint: String,
}

/// Moves the embedded config's demo backends to `ports` (one per name in
/// [`DEMO_UPSTREAMS`], in that order; 0 lets the OS pick a free port, and
/// [`start_backends`] then points the upstream at it).
pub fn set_backend_ports(cfg: &mut Config, ports: &[u16]) -> Result<(), String> {
    if ports.len() != DEMO_UPSTREAMS.len() {
        return Err(format!(
            "--backend-ports takes {} ports, for {} in that order (0 = any free port), e.g. --backend-ports 0,0",
            DEMO_UPSTREAMS.len(),
            DEMO_UPSTREAMS.join(" and ")
        ));
    }
    for (name, port) in DEMO_UPSTREAMS.iter().zip(ports) {
        let u = cfg
            .upstreams
            .get_mut(*name)
            .expect("the embedded config has every demo upstream");
        u.authority = format!("127.0.0.1:{port}");
    }
    Ok(())
}

/// Starts one demo backend per upstream of `cfg`; each answers every
/// request with its model name and the stamps it received. An upstream on
/// port 0 is pointed at the port the OS picked. `config_file` is the
/// user's file (`demo --config`), named in the hint when a port is taken.
pub async fn start_backends(
    cfg: &mut Config,
    config_file: Option<&std::path::Path>,
) -> Result<Vec<SocketAddr>, BackendError> {
    let mut addrs = Vec::new();
    for (name, u) in &mut cfg.upstreams {
        let listener = match TcpListener::bind(&u.authority).await {
            Ok(l) => l,
            Err(reason) => {
                let hint = match config_file {
                    None => "stop what is using the port, or let the OS pick free ports: cohort demo --backend-ports 0,0".to_string(),
                    Some(f) => format!(
                        "stop what is using the port, or point upstreams.{name}.url in {} at a free port",
                        f.display()
                    ),
                };
                return Err(BackendError {
                    upstream: name.clone(),
                    addr: u.authority.clone(),
                    reason,
                    hint,
                });
            }
        };
        let local = listener.local_addr().map_err(|reason| BackendError {
            upstream: name.clone(),
            addr: u.authority.clone(),
            reason,
            hint: "report this: a bound socket has no address".into(),
        })?;
        u.authority = local.to_string();
        addrs.push(local);
        tokio::spawn(serve_model(listener, name.clone()));
    }
    Ok(addrs)
}

async fn serve_model(listener: TcpListener, model: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let model = model.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(model.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    model: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (variant, epoch, user) = (h("x-cohort-variant"), h("x-cohort-epoch"), h("x-user-id"));
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let score = if model.starts_with("new") { 0.87 } else { 0.42 };
    let body = serde_json::json!({
        "model": model,
        "served_variant": variant,
        "epoch": epoch,
        "user": user,
        "request_bytes": body_len,
        "score": score,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_config_has_the_demo_upstreams() {
        let cfg = demo_config(PathBuf::from("unused"));
        let names: Vec<&str> = cfg.upstreams.keys().map(String::as_str).collect();
        let mut want = DEMO_UPSTREAMS.to_vec();
        want.sort_unstable();
        assert_eq!(names, want);
    }

    #[test]
    fn backend_ports_move_each_upstream_and_need_one_port_each() {
        let mut cfg = demo_config(PathBuf::from("unused"));
        set_backend_ports(&mut cfg, &[19001, 0]).unwrap();
        assert_eq!(cfg.upstreams["old-model"].authority, "127.0.0.1:19001");
        assert_eq!(cfg.upstreams["new-model"].authority, "127.0.0.1:0");
        let e = set_backend_ports(&mut cfg, &[0]).unwrap_err();
        assert!(e.contains("old-model and new-model"), "{e}");
    }

    #[tokio::test]
    async fn a_taken_port_is_named_with_the_way_out() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut cfg = demo_config(PathBuf::from("unused"));
        set_backend_ports(&mut cfg, &[port, 0]).unwrap();
        let e = start_backends(&mut cfg, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("old-model cannot listen on 127.0.0.1:{port}")),
            "{e}"
        );
        assert!(e.contains("--backend-ports 0,0"), "{e}");
    }
}
