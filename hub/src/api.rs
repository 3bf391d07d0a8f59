//! The JSON API under `/api/v1/` (the status page and `hub top` use it and nothing else):
//!
//! - `GET /api/v1/status`: the hub, its backends and every consumer now;
//! - `GET /api/v1/consumers/{id}`: one consumer, with its history (1 s for 10 minutes, 10 s
//!   for an hour);
//! - `GET /api/v1/consumers/{id}/tail`: the last messages it received, bodies cut to
//!   `[http] live_tail_bytes` (404 while `[http] live_tail` is 0, the default);
//! - `GET /api/v1/consumers/{id}/dead-letters`: where its dead letters go, the newest of them
//!   (no bodies) and the `hub dead` commands for them;
//! - `POST /api/v1/consumers/{id}/pause` and `.../resume`: with `[http] admin_token` set and
//!   sent as `Authorization: Bearer <token>`; refused otherwise (403 when the hub has no token:
//!   read-only; 401 when the request's is missing or wrong). Each write is logged.
//!
//! The shapes are documented in the README ("The JSON API").

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_engine::{ConsumerStatus, Dispatcher, MetricsHandle, ReadinessProbe, Sample};
use serde_json::{Value, json};
use tracing::{info, warn};

mod dead_letters;
pub(crate) use dead_letters::{DeadLetters, dead_letters};

/// Version of the API's shapes, in its paths.
pub const API_VERSION: &str = "v1";

/// What the API knows of the hub from its configuration.
pub(crate) struct Catalog {
    pub name: String,
    pub config: String,
    pub started: Instant,
    pub started_at: hub_core::Timestamp,
    /// (id, type) of each backend.
    pub backends: Vec<(String, String)>,
    /// Every consumer, in configuration order.
    pub consumers: Vec<ConsumerEntry>,
    /// The write token, when set.
    pub admin_token: Option<hub_http::Secret>,
    /// Messages kept per consumer for the live tail (0: off).
    pub live_tail: usize,
}

/// One consumer as the configuration describes it.
pub(crate) struct ConsumerEntry {
    pub id: String,
    /// Its `type`.
    pub kind: String,
    /// Its backend's id.
    pub backend: String,
    /// Its topic patterns.
    pub topics: Vec<String>,
    /// Where its dead letters go.
    pub dead_letters: DeadLetters,
}

/// The API's state.
#[derive(Clone)]
pub(crate) struct Api {
    pub catalog: Arc<Catalog>,
    pub dispatcher: Dispatcher,
    pub readiness: ReadinessProbe,
    pub metrics: MetricsHandle,
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "error": text.into() }))).into_response()
}

fn sample_json(s: &Sample) -> Value {
    json!({
        "at": s.at,
        "backlog": s.backlog,
        "oldest_age_s": s.oldest_age,
        "in_per_s": s.in_per_s,
        "out_per_s": s.out_per_s,
    })
}

impl Api {
    /// One consumer's JSON (without history). `broker` is the AMQP broker-side depth, if any.
    fn consumer_json(&self, status: &ConsumerStatus, broker: Option<f64>) -> Value {
        let name = status.state.name.as_str();
        let entry = self.catalog.consumers.iter().find(|c| c.id == name);
        let (kind, backend, topics) = entry.map_or(("", "", &[][..]), |c| {
            (c.kind.as_str(), c.backend.as_str(), c.topics.as_slice())
        });
        let dead_letters = entry.map_or("none", |c| match c.dead_letters {
            DeadLetters::None => "none",
            DeadLetters::File(_) => "file",
            DeadLetters::Topic { .. } => "topic",
            DeadLetters::Queue(_) => "queue",
        });
        let started = self.readiness.readiness().consumers_started;
        let o = &status.outcomes;
        json!({
            "id": name,
            "type": kind,
            "backend": backend,
            "topics": topics,
            "state": if started { status.run.as_str() } else { "starting" },
            "paused": status.state.paused,
            "backlog": status.state.backlog,
            "backlog_bytes": status.state.backlog_bytes,
            "in_flight": status.state.in_flight,
            "retry_waiting": status.state.retry_waiting,
            "oldest_age_s": status.state.oldest_age.as_secs_f64(),
            "catch_up_s": finite(status.state.catch_up_seconds),
            "in_per_s": status.in_per_s,
            "out_per_s": status.out_per_s,
            "broker_queue": broker,
            "outcomes": {
                "received": o.received,
                "ok": o.ok,
                "error": o.transient + o.invalid,
                "transient": o.transient,
                "invalid": o.invalid,
                "timeout": o.timeout,
                "panic": o.panic,
                "dropped": o.dropped,
                "retried": o.retried,
                "dead_lettered": o.dead_lettered,
            },
            "dead_letters": dead_letters,
            "last_error": status.last_error.as_ref().map(|e| json!({
                "at": e.at.to_string(),
                "message_id": e.message_id,
                "reason": e.reason,
            })),
        })
    }

    /// The broker-side queue depth of each AMQP consumer, read from the metrics page.
    fn broker_depths(&self) -> Vec<(String, f64)> {
        let text = self.metrics.render();
        let prefix = format!("{}{{consumer=\"", hub_engine::metrics::AMQP_QUEUE_MESSAGES);
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (name, value) = rest.split_once("\"} ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    fn amqp_consumers(&self) -> bool {
        self.catalog.backends.iter().any(|b| b.1 == "amqp")
    }
}

/// `catch_up_s` is infinite for a consumer that makes no progress: JSON has no infinity, so
/// it is `null` then.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// `GET /api/v1/status`.
pub(crate) async fn status(State(api): State<Api>) -> Response {
    let r = api.readiness.readiness();
    let down: std::collections::HashMap<&str, &str> = r
        .down_reasons
        .iter()
        .map(|(id, why)| (id.as_str(), why.as_str()))
        .collect();
    let outages = api.readiness.outages();
    let backends: Vec<Value> = api
        .catalog
        .backends
        .iter()
        .map(|(id, kind)| {
            let connected = !r.backends_down.iter().any(|d| d == id);
            let recent: Vec<Value> = outages
                .iter()
                .find(|(b, _)| b == id)
                .map(|(_, o)| o.as_slice())
                .unwrap_or_default()
                .iter()
                .rev()
                .map(|o| {
                    json!({
                        "since": o.since.to_string(),
                        "until": o.until.map(|t| t.to_string()),
                        "reason": o.reason,
                    })
                })
                .collect();
            json!({
                "id": id,
                "type": kind,
                "connected": connected,
                "reason": down.get(id.as_str()),
                "outages": recent,
            })
        })
        .collect();
    let depths = if api.amqp_consumers() {
        api.broker_depths()
    } else {
        Vec::new()
    };
    let consumers: Vec<Value> = api
        .dispatcher
        .status()
        .iter()
        .map(|s| {
            let broker = depths
                .iter()
                .find(|(n, _)| *n == s.state.name)
                .map(|(_, d)| *d);
            api.consumer_json(s, broker)
        })
        .collect();
    let c = &api.catalog;
    Json(json!({
        "api": API_VERSION,
        "hub": {
            "name": c.name,
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": c.started_at.to_string(),
            "uptime_s": c.started.elapsed().as_secs_f64(),
            "config": c.config,
            "ready": r.ready,
            "writable": c.admin_token.is_some(),
            "live_tail": c.live_tail,
        },
        "backends": backends,
        "consumers": consumers,
    }))
    .into_response()
}

/// `GET /api/v1/consumers/{id}`.
pub(crate) async fn consumer(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let Ok((status, history)) = api.dispatcher.consumer_status(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no consumer named {id:?}"));
    };
    let broker = if api.amqp_consumers() {
        api.broker_depths()
            .into_iter()
            .find(|(n, _)| *n == id)
            .map(|(_, d)| d)
    } else {
        None
    };
    let mut body = api.consumer_json(&status, broker);
    body["history"] = json!({
        "fine": {
            "resolution_s": 1,
            "samples": history.fine.iter().map(sample_json).collect::<Vec<_>>(),
        },
        "coarse": {
            "resolution_s": hub_engine::COARSE_EVERY,
            "samples": history.coarse.iter().map(sample_json).collect::<Vec<_>>(),
        },
    });
    Json(body).into_response()
}

/// Whether the request may write: `Ok`, or the status and reason of the refusal.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let Some(token) = &api.catalog.admin_token else {
        return Err((
            StatusCode::FORBIDDEN,
            "this hub is read-only: set [http] admin_token to allow pause and resume",
        ));
    };
    bearer_matches(token, headers)
}

/// Whether the request's `Authorization: Bearer` is `token`: `Ok`, or 401 and why not.
pub(crate) fn bearer_matches(
    token: &hub_http::Secret,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), token.expose().as_bytes()) => Ok(()),
        Some(_) => Err((
            StatusCode::UNAUTHORIZED,
            "the Authorization token is not this hub's admin_token",
        )),
        None => Err((
            StatusCode::UNAUTHORIZED,
            "writes need the admin token: Authorization: Bearer <token>",
        )),
    }
}

/// Compares without stopping at the first difference (no timing hint about the token).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /api/v1/consumers/{id}/pause` and `/resume`.
pub(crate) async fn control(
    State(api): State<Api>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, why)) = authorize(&api, &headers) {
        warn!(consumer = %id, %action, reason = why, "Refused an API write.");
        return error(status, why);
    }
    let done = match action.as_str() {
        "pause" => api.dispatcher.pause(&id),
        "resume" => api.dispatcher.resume(&id),
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}: pause or resume"),
            );
        }
    };
    match done {
        Ok(changed) => {
            info!(consumer = %id, %action, changed, "Consumer {action}d through the API.");
            let paused = action == "pause";
            Json(json!({ "id": id, "paused": paused, "changed": changed })).into_response()
        }
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// `GET /api/v1/consumers/{id}/tail`: needs the admin token when the hub has one (bodies can
/// be private).
pub(crate) async fn tail(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if api.catalog.live_tail == 0 {
        return error(
            StatusCode::NOT_FOUND,
            "the live tail is off: set [http] live_tail to the number of messages to keep",
        );
    }
    if api.catalog.admin_token.is_some()
        && let Err((status, why)) = authorize(&api, &headers)
    {
        return error(status, why);
    }
    let entries = match api.dispatcher.tail(&id) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::NOT_FOUND, e.to_string()),
    };
    let shown: Vec<Value> = entries
        .iter()
        .rev()
        .map(|m| {
            json!({
                "id": m.id,
                "topic": m.topic,
                "timestamp": m.timestamp.to_string(),
                "headers": m.headers,
                "body": m.body,
                "body_bytes": m.body_bytes,
                "truncated": m.truncated(),
            })
        })
        .collect();
    Json(json!({ "id": id, "messages": shown })).into_response()
}
