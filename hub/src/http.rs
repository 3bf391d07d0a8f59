//! The one HTTP server: `/metrics`, `/live`, `/ready`, and `POST /dead-letters/requeue` (from
//! loopback only) for `hub dead requeue`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hub_core::CancellationToken;
use hub_core::Verdict;
use hub_engine::dead_letter::DeadLetter;
use hub_engine::{Dispatcher, MetricsHandle, ReadinessProbe, RedeliverError};
use serde_json::json;
use tokio::net::TcpListener;

#[derive(Clone)]
struct AppState {
    metrics: MetricsHandle,
    readiness: ReadinessProbe,
    dispatcher: Dispatcher,
}

async fn render_metrics(State(s): State<AppState>) -> Response {
    // Gauges are computed from the queues now, so they are true at scrape time.
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(s): State<AppState>) -> Response {
    let r = s.readiness.readiness();
    let why: serde_json::Map<String, serde_json::Value> = r
        .down_reasons
        .into_iter()
        .map(|(id, reason)| (id, serde_json::Value::String(reason)))
        .collect();
    let body = axum::Json(json!({
        "ready": r.ready,
        "backends_down": r.backends_down,
        "why": why,
        "consumers_started": r.consumers_started,
    }));
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// `POST /dead-letters/requeue`: one dead letter (the JSON of a line of a dead-letter file);
/// the hub hands its message to its consumer again and answers once the consumer is done:
/// 200 `{"verdict": "ack"}`, or `{"verdict": "dead-lettered", "reason": ..}` when it failed
/// again (and is in the consumer's sink again). Loopback clients only: requeueing is an
/// operator's act on the hub's own machine, and `/metrics` may be exposed wider.
async fn requeue(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: String,
) -> Response {
    let fail = |status: StatusCode, error: String| {
        (status, axum::Json(json!({ "error": error }))).into_response()
    };
    if !peer.ip().is_loopback() {
        return fail(
            StatusCode::FORBIDDEN,
            "dead letters can be requeued from the hub's own machine only".into(),
        );
    }
    let letter: DeadLetter = match serde_json::from_str(&body) {
        Ok(l) => l,
        Err(e) => return fail(StatusCode::BAD_REQUEST, format!("not a dead letter: {e}")),
    };
    let message = match letter.to_message() {
        Ok(m) => m,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("the dead letter's message does not read: {e}"),
            );
        }
    };
    match s.dispatcher.redeliver(&letter.consumer, message).await {
        Ok(Verdict::Ack) => axum::Json(json!({ "verdict": "ack" })).into_response(),
        Ok(Verdict::Reject { reason } | Verdict::Retry { reason, .. }) => {
            axum::Json(json!({ "verdict": "dead-lettered", "reason": reason })).into_response()
        }
        Ok(Verdict::Requeue) | Err(RedeliverError::ShuttingDown) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            RedeliverError::ShuttingDown.to_string(),
        ),
        Err(e @ RedeliverError::UnknownConsumer(_)) => fail(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => fail(StatusCode::CONFLICT, e.to_string()),
    }
}

/// Serves until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: MetricsHandle,
    readiness: ReadinessProbe,
    dispatcher: Dispatcher,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/dead-letters/requeue", post(requeue))
        .with_state(AppState {
            metrics,
            readiness,
            dispatcher,
        });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await
}
