//! The one HTTP server: `/metrics`, `/live`, `/ready`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hub_core::CancellationToken;
use hub_engine::{MetricsHandle, ReadinessProbe};
use serde_json::json;
use tokio::net::TcpListener;

#[derive(Clone)]
struct AppState {
    metrics: MetricsHandle,
    readiness: ReadinessProbe,
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
    let body = axum::Json(json!({
        "ready": r.ready,
        "backends_down": r.backends_down,
        "consumers_started": r.consumers_started,
    }));
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// Serves until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: MetricsHandle,
    readiness: ReadinessProbe,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .with_state(AppState { metrics, readiness });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
