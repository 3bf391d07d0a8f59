//! The one HTTP server: the status page at `/`, `/metrics`, `/live`, `/ready`, the JSON API under `/api/v1/`
//! (`api.rs`), and `POST /dead-letters/requeue` (from loopback only) for `hub dead requeue`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hub_core::CancellationToken;
use hub_core::Verdict;
use hub_engine::dead_letter::DeadLetter;
use hub_engine::{Dispatcher, MetricsHandle, ReadinessProbe, RedeliverError};
use hub_gateway::WriteStall;
use serde_json::json;
use tokio::net::TcpListener;

mod hosts;
pub(crate) use hosts::HostPolicy;

#[derive(Clone)]
struct AppState {
    metrics: MetricsHandle,
    readiness: ReadinessProbe,
    dispatcher: Dispatcher,
    /// `[http] admin_token`: when set, a requeue needs it too.
    admin_token: Option<hub_http::Secret>,
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

/// The status page (`hub/assets/status.html`, compiled in): it reads only the JSON API, and may
/// load nothing from anywhere else (its policy forbids it).
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
        ],
        include_str!("../assets/status.html"),
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
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    let fail = |status: StatusCode, error: String| {
        (status, axum::Json(json!({ "error": error }))).into_response()
    };
    // Behind a local reverse proxy every request comes from loopback: one that says it was
    // forwarded is refused too.
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if !peer.ip().is_loopback() || forwarded {
        return fail(
            StatusCode::FORBIDDEN,
            "dead letters can be requeued from the hub's own machine only".into(),
        );
    }
    // A hub with an admin token lets no local user inject messages without it either.
    if let Some(token) = &s.admin_token
        && let Err((status, why)) = crate::api::bearer_matches(token, &headers)
    {
        return fail(
            status,
            format!("{why} (hub dead requeue sends it from --token, HUB_ADMIN_TOKEN or --config)"),
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

/// The server's bounds (`[http] max_connections`, `max_body_bytes`, `idle_timeout`). Header sizes are hyper's
/// (at most 100 headers, about 400 KiB of head).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub connections: usize,
    pub body_bytes: usize,
    /// `[http] idle_timeout`: a connection with no byte read or written for this long is closed.
    pub idle: std::time::Duration,
    /// `[http] allowed_hosts`, or its default for the listen address.
    pub hosts: HostPolicy,
}

/// Accepts a connection only while fewer than the limit are open: each holds a permit until it
/// closes, so a flood of idle connections waits in the kernel's backlog instead of costing the
/// hub memory and tasks.
struct Bounded {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: std::time::Duration,
}

impl axum::serve::Listener for Bounded {
    type Io = Permitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Permitted, SocketAddr) {
        // The semaphore is never closed.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Answers go out at once: with Nagle's algorithm a second small write (a gateway's
        // message after its ack) waits for the client's delayed ACK, 40 ms.
        let _ = stream.set_nodelay(true);
        (
            Permitted {
                stream,
                _permit: permit,
                idle: self.idle,
                deadline: Box::pin(tokio::time::sleep(self.idle)),
                stall: Arc::default(),
                stalled_since: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A client's address, and its connection's write-stall limit, as the routes see them.
#[derive(Debug, Clone)]
struct Peer(SocketAddr, Arc<WriteStall>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Bounded>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Bounded>) -> Self {
        Peer(*stream.remote_addr(), Arc::clone(&stream.io().stall))
    }
}

/// Hands every request its connection's [`WriteStall`] (the gateway's `/events` sets it).
async fn with_write_stall(
    ConnectInfo(Peer(_, stall)): ConnectInfo<Peer>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request.extensions_mut().insert(stall);
    next.run(request).await
}

/// A connection and its permit (released when the connection is dropped), closed once idle:
/// a read waiting past `deadline` (reset by every byte read or written) fails, and hyper
/// drops the connection. A write that makes no progress for the [`WriteStall`] limit a
/// response set (the gateway's `/events`: `slow_client_timeout`) fails too.
struct Permitted {
    stream: tokio::net::TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
    idle: std::time::Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    stall: Arc<WriteStall>,
    /// Set while a write waits with a stall limit in force: when it fails.
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Permitted {
    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
}

impl AsyncRead for Permitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle past [http] idle_timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Permitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        match &written {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.active();
                self.stalled_since = None;
            }
            Poll::Pending => {
                if let Some(limit) = self.stall.limit() {
                    let timer = self
                        .stalled_since
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if timer.as_mut().poll(cx).is_ready() {
                        self.stall.fire();
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client took nothing for [gateway] slow_client_timeout",
                        )));
                    }
                }
            }
            Poll::Ready(_) => {}
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves until `stop` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    limits: Limits,
    api: crate::api::Api,
    gateway: Option<Router>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let api_routes = Router::new()
        .route("/api/v1/status", get(crate::api::status))
        .route("/api/v1/consumers/{id}", get(crate::api::consumer))
        .route("/api/v1/consumers/{id}/tail", get(crate::api::tail))
        .route(
            "/api/v1/consumers/{id}/dead-letters",
            get(crate::api::dead_letters),
        )
        .route("/api/v1/consumers/{id}/{action}", post(crate::api::control))
        .with_state(api.clone());
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(render_metrics))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/dead-letters/requeue", post(requeue))
        .with_state(AppState {
            metrics: api.metrics,
            readiness: api.readiness,
            dispatcher: api.dispatcher,
            admin_token: api.catalog.admin_token.clone(),
        })
        .merge(api_routes)
        .merge(gateway.unwrap_or_default())
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            limits.hosts.clone(),
            hosts::check,
        ))
        .layer(axum::middleware::from_fn(with_write_stall));
    let listener = Bounded {
        inner: listener,
        permits: Arc::new(Semaphore::new(limits.connections)),
        idle: limits.idle,
    };
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
