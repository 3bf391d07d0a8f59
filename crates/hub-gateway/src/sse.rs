//! `GET /events?topic=PATTERN&topic=...`: Server-Sent Events. Each message is an event whose
//! id is the message id; a client reconnecting with `Last-Event-ID` (browsers' `EventSource`
//! do it by themselves) first gets what it missed from the replay buffer, or a `gap` event
//! when the id is no longer in it. `dropped` events tell it what its full queue dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_core::Pattern;
use serde_json::json;
use tracing::info;

use crate::client::{Client, Format, Frame, Next, Sub};
use crate::ws::query_param;
use crate::{Gateway, WriteStall};

/// The `gap` event: `last_event_id` is not in the replay buffer, so what came between it and
/// the live stream is lost to this client.
pub(crate) fn gap_event(last_event_id: &str, buffer: usize) -> Bytes {
    let data = json!({
        "last_event_id": last_event_id,
        "replay_buffer": buffer,
        "reason": "the message with this id is not among the last replay_buffer messages: what came after it is not available",
    });
    format!("event: gap\ndata: {data}\n\n").into()
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(json!({ "error": why }))).into_response()
}

/// Unregisters the client when the response stream is dropped (the client went away, or its
/// connection was closed because it took nothing for `slow_client_timeout`).
struct Connected {
    gw: Arc<Gateway>,
    client: Arc<Client>,
    done: bool,
    stall: Option<Arc<WriteStall>>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        if let Some(s) = &self.stall {
            s.clear();
        }
        if self.stall.as_ref().is_some_and(|s| s.fired()) {
            info!(client = %self.client.grant.name, id = self.client.id, timeout = ?self.gw.cfg.slow_client_timeout, "Gateway client disconnected: its socket took nothing for slow_client_timeout.");
            self.gw.count_disconnect("slow");
        }
        self.gw.disconnect(&self.client);
    }
}

/// `GET /events`.
pub(crate) async fn events(
    State(gw): State<Arc<Gateway>>,
    RawQuery(query): RawQuery,
    stall: Option<Extension<Arc<WriteStall>>>,
    headers: HeaderMap,
) -> Response {
    let grant = match gw.auth.admit(&headers, query.as_deref()) {
        Ok(g) => g,
        Err((status, why)) => return refuse(status, &why),
    };
    let mut subs = Vec::new();
    for p in query_param(query.as_deref(), "topic") {
        match Pattern::new(&p) {
            Ok(pattern) => subs.push(Sub {
                pattern,
                format: Format::Sse,
            }),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("topic {p:?}: {e}")),
        }
    }
    if subs.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "give at least one topic pattern: /events?topic=org.example.#",
        );
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_param(query.as_deref(), "last_event_id").next());
    let id = gw.next_client.fetch_add(1, Ordering::Relaxed);
    let client = Arc::new(Client::new(id, grant, "sse", gw.cfg.client_queue));
    if let Err(why) = client.subscribe(subs) {
        return refuse(StatusCode::BAD_REQUEST, &why);
    }
    let Ok(client) = gw.connect_replaying(client, last_event_id.as_deref()) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway has max_clients clients already",
        );
    };
    let ping = gw.cfg.ping_interval;
    // The server closes the connection once a write has waited this long (a client that reads
    // nothing); without the server's extension (a router of one's own) `idle_timeout` does.
    let stall = stall.map(|Extension(s)| s);
    if let Some(s) = &stall {
        s.set_limit(gw.cfg.slow_client_timeout);
    }
    let state = Connected {
        gw: gw.clone(),
        client,
        done: false,
        stall,
    };
    // Tells the client how soon to reconnect, and flushes the headers at once.
    let hello = futures_util::stream::once(async {
        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"retry: 1000\n: connected\n\n"))
    });
    let stream = futures_util::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        let chunk = loop {
            let next = tokio::select! {
                n = st.client.next() => n,
                () = tokio::time::sleep(ping) => break Bytes::from_static(b": ping\n\n"),
            };
            match next {
                Next::Message(Frame::Raw(b)) => {
                    st.client.grant.series().inspect(|s| s.sent.increment(1));
                    break b;
                }
                Next::Message(Frame::Text(_)) | Next::Control(_) => {}
                Next::Dropped(n, total) => {
                    let data = json!({ "count": n, "total": total });
                    break format!("event: dropped\ndata: {data}\n\n").into();
                }
                Next::Closed(reason) => {
                    st.done = true;
                    let data = json!({ "reason": reason });
                    break format!("event: close\ndata: {data}\n\n").into();
                }
            }
        };
        Some((Ok::<_, std::convert::Infallible>(chunk), st))
    });
    let mut response =
        Body::from_stream(futures_util::StreamExt::chain(hello, stream)).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
