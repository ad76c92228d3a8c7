//! `cohort demo`: two small model backends on loopback and the proxy in
//! front of them on the embedded example config, so a newcomer's first
//! `curl` gets a stamped answer with nothing else installed.

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

/// Starts one demo backend per upstream of `cfg`; each answers every
/// request with its model name and the stamps it received.
pub async fn start_backends(cfg: &Config) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for (name, u) in &cfg.upstreams {
        let listener = TcpListener::bind(&u.authority).await?;
        addrs.push(listener.local_addr()?);
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
