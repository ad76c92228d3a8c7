//! The admin API, on its own listener (loopback by default): health,
//! Prometheus metrics, the applied config and epoch ledger, assignment
//! lookups, reload, and the kill switch. Every call but the health checks
//! and `GET /metrics` (unless `admin.metrics_auth`) needs the bearer
//! token; the token is compared in constant time and never logged.
//!
//! [`client`] is the other side, used by `cohort plan`.

pub(crate) mod client;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::assign::hash::unit_key;
use crate::assign::ledger::{units_by_variant, ExperimentLedger, Ledger};
use crate::config::ConfigError;
use crate::observe::metrics::{ProcessFacts, StoreFacts, CONTENT_TYPE as METRICS_CONTENT_TYPE};
use crate::observe::time::rfc3339_millis;
use crate::reload::{ReloadError, Reloaded};
use crate::state::{PauseError, State};

pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut http = http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            // Each call runs as its own task: a client hanging up must not
            // cancel a reload halfway between journaling and swapping.
            service_fn(move |req| {
                let state = state.clone();
                async move {
                    tokio::spawn(handle(state, req)).await.unwrap_or_else(|_| {
                        Ok(error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            "the admin call failed",
                        ))
                    })
                }
            }),
        );
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Resp {
    reply(
        status,
        json!({ "error": code, "message": message.to_string() }),
    )
}

/// Byte-wise comparison whose time does not depend on where they differ.
fn same_token(given: &[u8], want: &[u8]) -> bool {
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ w);
    }
    diff == 0
}

fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    let snap = state.snapshot();
    let Some(admin) = &snap.config.admin else {
        return false;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim_start());
    same_token(given.as_bytes(), admin.token.as_bytes())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    Ok(match (method.clone(), segs.as_slice()) {
        (Method::GET, ["healthz"]) => reply(StatusCode::OK, json!({ "status": "live" })),
        (Method::GET, ["readyz"]) => ready(&state).await,
        (Method::GET, ["metrics"]) if !metrics_need_token(&state) => metrics(&state),
        _ if !authorized(&state, &req) => {
            tracing::warn!(%method, path, "admin call without a valid bearer token");
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid `Authorization: Bearer <token>` header is required",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            r
        }
        (Method::GET, ["metrics"]) => metrics(&state),
        (Method::GET, ["admin", "config"]) => config_view(&state),
        (Method::GET, ["admin", "history"]) => history(&state),
        (Method::GET, ["admin", "upstreams"]) => upstreams(&state),
        (Method::GET, ["admin", "assignments", experiment, unit]) => {
            assignment(&state, experiment, unit)
        }
        (Method::POST, ["admin", "reload"]) => {
            let _ = req.into_body().collect().await;
            reload(&state).await
        }
        (Method::POST, ["admin", "experiments", name, action @ ("pause" | "resume")]) => {
            pause(&state, name, *action == "pause").await
        }
        (_, ["healthz" | "readyz" | "metrics"])
        | (_, ["admin", "config" | "history" | "reload" | "upstreams"])
        | (_, ["admin", "assignments", _, _])
        | (_, ["admin", "experiments", _, "pause" | "resume"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin endpoint {path}"),
        ),
    })
}

/// `GET /admin/upstreams`: each upstream's endpoints, their state (`up`,
/// `down` by the active check, `ejected` by the passive one) and load.
fn upstreams(state: &State) -> Resp {
    let snap = state.snapshot();
    let mut names: Vec<&String> = snap.upstreams.keys().collect();
    names.sort();
    let list: Vec<Value> = names.iter().map(|n| snap.upstreams[*n].view()).collect();
    reply(
        StatusCode::OK,
        json!({ "config_version": snap.version, "upstreams": list }),
    )
}

async fn ready(state: &State) -> Resp {
    match state.store.sync().await {
        Ok(()) => reply(
            StatusCode::OK,
            json!({ "status": "ready", "config_version": state.snapshot().version }),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e),
    }
}

fn metrics_need_token(state: &State) -> bool {
    state
        .snapshot()
        .config
        .admin
        .as_ref()
        .is_some_and(|a| a.metrics_auth)
}

/// `GET /metrics`: the Prometheus text exposition (docs/metrics.md).
fn metrics(state: &State) -> Resp {
    let ledger = state.store.ledger();
    let stored = ledger
        .experiments
        .iter()
        .map(|l| {
            let n = units_by_variant(l, &state.store)
                .iter()
                .map(|(_, n)| n)
                .sum();
            (l.name.clone(), n)
        })
        .collect();
    let text = state.log.metrics().render(ProcessFacts {
        config_version: state.snapshot().version.to_string(),
        stored,
        log_written: state.log.written_lines(),
        log_dropped: state.log.failed_lines(),
        syncs: state.store.sync_times(),
        store: state.store.shared().map(|r| {
            let h = r.health();
            StoreFacts {
                up: h.up,
                pending: h.pending,
                writebacks_stored: h.writebacks_stored,
                writebacks_lost: h.writebacks_lost,
            }
        }),
    });
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    r
}

/// What `GET /admin/config` returns; also what `cohort plan` plans against.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ConfigView {
    pub config_version: String,
    pub config: Value,
    pub ledger: Vec<ExperimentLedger>,
    pub admin_paused: Vec<String>,
    /// Stored units per experiment and variant.
    pub units: BTreeMap<String, BTreeMap<String, u64>>,
    pub paused: BTreeMap<String, bool>,
}

impl ConfigView {
    /// The ledger as the proxy holds it, with the applied config as history.
    pub(crate) fn to_ledger(&self) -> Ledger {
        Ledger {
            experiments: self.ledger.clone(),
            admin_paused: self.admin_paused.iter().cloned().collect(),
            history: Vec::new(),
            pause_log: Vec::new(),
        }
    }
}

fn config_view(state: &State) -> Resp {
    let snap = state.snapshot();
    let ledger = state.store.ledger();
    let mut units = BTreeMap::new();
    for l in &ledger.experiments {
        let per = units_by_variant(l, &state.store).into_iter().collect();
        units.insert(l.name.clone(), per);
    }
    let paused = snap
        .experiments
        .iter()
        .map(|x| (x.name.to_string(), x.assigner.paused()))
        .collect();
    let view = ConfigView {
        config_version: snap.version.to_string(),
        config: crate::reload::plan::canonical(&snap.config),
        admin_paused: ledger.admin_paused.iter().cloned().collect(),
        ledger: ledger.experiments,
        units,
        paused,
    };
    reply(
        StatusCode::OK,
        serde_json::to_value(view).expect("view serializes"),
    )
}

fn history(state: &State) -> Resp {
    let ledger = state.store.ledger();
    let items: Vec<Value> = ledger
        .history
        .iter()
        .map(|h| json!({ "config_version": h.config_version, "applied_at": h.applied_at, "trigger": h.trigger, "summary": h.summary }))
        .collect();
    reply(StatusCode::OK, json!({ "history": items }))
}

fn assignment(state: &State, experiment: &str, unit: &str) -> Resp {
    let ledger = state.store.ledger();
    let Some(l) = ledger.get(experiment) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_experiment",
            format!("no experiment {experiment:?} in the ledger"),
        );
    };
    match state
        .store
        .table(l.id)
        .get(&unit_key(experiment, unit.as_bytes()))
    {
        None => error(
            StatusCode::NOT_FOUND,
            "not_assigned",
            format!("unit {unit:?} has no assignment in {experiment:?}"),
        ),
        Some(a) => {
            let rec = l.epochs.iter().find(|e| e.epoch == a.epoch);
            let first_seen =
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(a.first_seen.into());
            reply(
                StatusCode::OK,
                json!({
                    "experiment": experiment,
                    "unit": unit,
                    "variant": l.variants.get(usize::from(a.variant)),
                    "epoch": a.epoch.0,
                    "first_seen": rfc3339_millis(first_seen),
                    "rule": rec.map(|r| &r.rule),
                    "epoch_started_at": rec.map(|r| &r.started_at),
                    "current_epoch": l.current().epoch.0,
                }),
            )
        }
    }
}

pub(crate) fn errors_json(errors: &[ConfigError]) -> Value {
    Value::Array(
        errors
            .iter()
            .map(|e| json!({ "path": e.path, "line": e.position.line, "column": e.position.column, "message": e.message, "hint": e.hint }))
            .collect(),
    )
}

async fn reload(state: &State) -> Resp {
    let outcome = state.reload_file("admin").await;
    let resp = match &outcome {
        Ok(Reloaded::Unchanged) => reply(
            StatusCode::OK,
            json!({ "status": "unchanged", "config_version": state.snapshot().version }),
        ),
        Ok(Reloaded::Applied {
            plan,
            restart_needed,
        }) => reply(
            StatusCode::OK,
            json!({ "status": "applied", "plan": plan, "summary": plan.to_string(), "restart_needed": restart_needed }),
        ),
        Err(ReloadError::Invalid(e) | ReloadError::Rejected(e)) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "status": "rejected", "file": e.file, "errors": errors_json(&e.errors), "message": e.to_string() }),
        ),
        Err(e @ ReloadError::NoFile) => error(StatusCode::CONFLICT, "no_config_file", e),
        Err(e @ ReloadError::Store(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e)
        }
    };
    crate::reload::report::report("admin", outcome);
    resp
}

async fn pause(state: &State, name: &str, paused: bool) -> Resp {
    match state.set_paused(name, paused).await {
        Ok(()) => {
            let snap = state.snapshot();
            let x = snap.experiments.iter().find(|x| x.name == name);
            reply(
                StatusCode::OK,
                json!({
                    "experiment": name,
                    "admin_paused": paused,
                    "paused_in_file": x.is_some_and(|x| snap.config.experiment(x.name).is_some_and(|c| c.paused)),
                    "paused": x.is_some_and(|x| x.assigner.paused()),
                }),
            )
        }
        Err(e @ PauseError::UnknownExperiment(_)) => {
            error(StatusCode::NOT_FOUND, "unknown_experiment", e)
        }
        Err(e @ PauseError::Store(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e)
        }
    }
}

/// Decodes `%XX` escapes in a path segment (unit ids may hold any byte).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token(b"s3cret", b"s3cret"));
        assert!(!same_token(b"s3cre", b"s3cret"));
        assert!(!same_token(b"s3cret!", b"s3cret"));
        assert!(!same_token(b"", b"s3cret"));
        assert!(!same_token(b"S3cret", b"s3cret"));
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("alice%40example.com"), "alice@example.com");
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
