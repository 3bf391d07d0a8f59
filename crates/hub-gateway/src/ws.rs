//! `GET /ws`: the WebSocket endpoint. A reader task handles what the client sends (in order:
//! a publish is acknowledged before the next frame is read); a writer task drains the client's
//! queue, pings, and disconnects a client whose socket takes nothing for
//! `slow_client_timeout`.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hub_core::Message;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::Gateway;
use crate::client::{Client, Format, Frame, Next, Sub};
use crate::protocol::{self, Request};

/// Close codes (RFC 6455): policy violation, and going away.
const CLOSE_POLICY: u16 = 1008;
const CLOSE_AWAY: u16 = 1001;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_TRY_LATER: u16 = 1013;

/// Bytes each connection reads at a time.
const READ_BUFFER: usize = 4096;

/// `token=...` in a query string.
pub(crate) fn query_param<'a>(
    query: Option<&'a str>,
    name: &str,
) -> impl Iterator<Item = String> + 'a {
    let prefix = format!("{name}=");
    query.unwrap_or_default().split('&').filter_map(move |kv| {
        kv.strip_prefix(prefix.as_str())
            .map(protocol::decode_query_value)
    })
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, axum::Json(json!({ "error": why }))).into_response()
}

/// The upgrade: checks the origin and the token, then hands the socket to [`serve`].
pub(crate) async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let grant = match gw.auth.admit(&headers, query.as_deref()) {
        Ok(g) => g,
        Err((status, why)) => return refuse(status, &why),
    };
    if !gw.has_room() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway has max_clients clients already",
        );
    }
    let limit = gw.cfg.max_frame_bytes.saturating_mul(4);
    // The client is registered once the upgrade succeeded: a handshake that fails leaves
    // nothing behind.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        // tungstenite's default read buffer, 128 KiB allocated per connection, made an idle
        // client cost 130 KiB (scripts/bench-gateway); larger frames still grow it as needed.
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |mut socket| async move {
            match gw.connect(grant, "ws") {
                Some(client) => serve(gw, client, socket).await,
                None => {
                    let full = WsMessage::Close(Some(CloseFrame {
                        code: CLOSE_TRY_LATER,
                        reason: Utf8Bytes::from_static(
                            "the gateway has max_clients clients already",
                        ),
                    }));
                    let _ = socket.send(full).await;
                }
            }
        })
}

async fn serve(gw: Arc<Gateway>, client: Arc<Client>, socket: WebSocket) {
    debug!(client = %client.grant.name, id = client.id, "Gateway WebSocket client connected.");
    let (sender, receiver) = socket.split();
    let mut writer = tokio::spawn(write(gw.clone(), client.clone(), sender));
    tokio::select! {
        () = read(&gw, &client, receiver) => {
            // The client left, or was closed for what it sent: the writer sends the close
            // frame, if any, and ends.
            client.close("");
            let _ = writer.await;
        }
        // Closed by the hub (too slow, shutting down): the reader is dropped with it.
        _ = &mut writer => {}
    }
    gw.disconnect(&client);
    debug!(client = %client.grant.name, id = client.id, "Gateway WebSocket client gone.");
}

async fn read(
    gw: &Gateway,
    client: &Client,
    mut receiver: futures_util::stream::SplitStream<WebSocket>,
) {
    let mut bad = 0u32;
    while let Some(frame) = receiver.next().await {
        let text = match frame {
            Ok(WsMessage::Text(t)) => t,
            Ok(WsMessage::Binary(_)) => {
                if !complain(
                    gw,
                    client,
                    &mut bad,
                    "binary",
                    "binary frames are not part of the protocol: send JSON text",
                    &serde_json::Value::Null,
                ) {
                    return;
                }
                continue;
            }
            Ok(WsMessage::Close(_)) => return,
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
            Err(e) => {
                // Past the hard size limit, or a broken connection.
                let too_big =
                    e.to_string().contains("too long") || e.to_string().contains("too big");
                if too_big {
                    gw.count_bad("too_large");
                    client.close(format!(
                        "frame over {} bytes",
                        gw.cfg.max_frame_bytes.saturating_mul(4)
                    ));
                }
                debug!(client = %client.grant.name, error = %e, "Gateway WebSocket read ended.");
                return;
            }
        };
        if text.len() > gw.cfg.max_frame_bytes {
            let why = format!(
                "frame of {} bytes is over max_frame_bytes ({})",
                text.len(),
                gw.cfg.max_frame_bytes
            );
            if !complain(
                gw,
                client,
                &mut bad,
                "too_large",
                &why,
                &serde_json::Value::Null,
            ) {
                return;
            }
            continue;
        }
        match protocol::parse(text.as_str()) {
            Ok(request) => {
                if !handle(gw, client, request).await {
                    return;
                }
            }
            Err(b) => {
                if b.publish {
                    client
                        .grant
                        .series()
                        .inspect(|s| s.rejected_invalid.increment(1));
                }
                if !complain(gw, client, &mut bad, b.reason, &b.message, &b.reference) {
                    return;
                }
            }
        }
    }
}

/// Answers a bad frame with an error frame and counts it; false when the connection must end
/// (too many).
fn complain(
    gw: &Gateway,
    client: &Client,
    bad: &mut u32,
    reason: &'static str,
    message: &str,
    reference: &serde_json::Value,
) -> bool {
    gw.count_bad(reason);
    *bad += 1;
    if *bad > gw.cfg.max_bad_frames {
        warn!(client = %client.grant.name, id = client.id, bad = *bad, "Gateway client closed: too many bad frames.");
        gw.count_disconnect("abuse");
        client.close(format!("too many bad frames ({})", *bad));
        return false;
    }
    client.control(protocol::error_frame(message, reference))
}

/// Carries out one request; false when the connection must end.
async fn handle(gw: &Gateway, client: &Client, request: Request) -> bool {
    let reply = match request {
        Request::Subscribe {
            patterns,
            reference,
        } => {
            match client.subscribe(patterns.into_iter().map(|pattern| Sub {
                pattern,
                format: Format::Hub,
            })) {
                Ok(all) => json!({ "type": "subscribed", "patterns": all, "ref": reference }),
                Err(why) => return client.control(protocol::error_frame(&why, &reference)),
            }
        }
        Request::MokshaSubscribe(pattern) => {
            // Moksha's clients expect no reply (an error frame, which they ignore, past the
            // limit).
            return match client.subscribe([Sub {
                pattern,
                format: Format::Moksha,
            }]) {
                Ok(_) => true,
                Err(why) => client.control(protocol::error_frame(&why, &serde_json::Value::Null)),
            };
        }
        Request::MokshaPublish { topic, body } => {
            // Moksha's clients expect no reply: an error frame (which they ignore) only when
            // refused or failed.
            return match publish(gw, client, topic, body, serde_json::Map::new()).await {
                Ok(_) => true,
                Err(why) => client.control(protocol::error_frame(&why, &serde_json::Value::Null)),
            };
        }
        Request::Unsubscribe {
            patterns,
            reference,
        } => {
            let left = client.unsubscribe(&patterns);
            json!({ "type": "unsubscribed", "patterns": left, "ref": reference })
        }
        Request::Ping { reference } => json!({ "type": "pong", "ref": reference }),
        Request::Publish {
            topic,
            body,
            headers,
            reference,
        } => match publish(gw, client, topic, body, headers).await {
            Ok(id) => json!({ "type": "ack", "id": id, "ref": reference }),
            Err(why) => return client.control(protocol::error_frame(&why, &reference)),
        },
    };
    client.control(reply.to_string())
}

/// A client's publish, checked against its token: the message id once the hub (and
/// `forward_to`) took it, or why not.
async fn publish(
    gw: &Gateway,
    client: &Client,
    topic: String,
    body: serde_json::Value,
    headers: serde_json::Map<String, serde_json::Value>,
) -> Result<String, String> {
    let series = client.grant.series();
    if !client.grant.may_publish(&topic) {
        series.inspect(|s| s.rejected_not_allowed.increment(1));
        return Err(format!(
            "token {:?} may not publish on {topic:?} (it may publish on: {})",
            client.grant.name,
            client.grant.publish_patterns()
        ));
    }
    // fedmsg's id form, `<year>-<uuid4>`: a ZeroMQ backend forwards it unchanged.
    let now = hub_core::Timestamp::now();
    let year = now.to_string();
    let year = year.split('-').next().unwrap_or_default();
    // The hub's count of attempts is its own: a client's starts at 1.
    let msg = Message::builder(topic, body)
        .headers(headers)
        .timestamp(now)
        .id(format!("{year}-{}", uuid::Uuid::new_v4()))
        .build()
        .without_attempts();
    let id = msg.id().to_owned();
    match gw.publish(msg).await {
        Ok(()) => {
            series.inspect(|s| s.published.increment(1));
            Ok(id)
        }
        Err(why) => {
            series.inspect(|s| s.rejected_failed.increment(1));
            Err(why)
        }
    }
}

/// Frames written before one flush, at most (what is queued when the writer wakes).
const BATCH: usize = 64;

async fn write(
    gw: Arc<Gateway>,
    client: Arc<Client>,
    mut sender: futures_util::stream::SplitSink<WebSocket, WsMessage>,
) {
    let slow = gw.cfg.slow_client_timeout;
    let mut ping = tokio::time::interval(gw.cfg.ping_interval);
    ping.tick().await;
    let mut batch: Vec<WsMessage> = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            n = client.next() => n,
            _ = ping.tick() => {
                if tokio::time::timeout(slow, sender.send(WsMessage::Ping(Default::default()))).await.is_err() {
                    too_slow(&gw, &client);
                    return;
                }
                continue;
            }
        };
        // What is queued now goes out in one write and one flush (one timer, one system call
        // for many frames), under one `slow_client_timeout`.
        let mut closing = None;
        let mut messages = 0u64;
        let mut next = Some(first);
        while let Some(n) = next.take() {
            match n {
                Next::Control(text) => batch.push(WsMessage::Text(text.into())),
                Next::Dropped(count, total) => batch.push(WsMessage::Text(
                    json!({ "type": "dropped", "count": count, "total": total })
                        .to_string()
                        .into(),
                )),
                Next::Message(Frame::Text(t)) => {
                    batch.push(WsMessage::Text(t));
                    messages += 1;
                }
                Next::Message(Frame::Raw(_)) => {}
                Next::Closed(reason) => {
                    closing = Some(reason);
                    break;
                }
            }
            if batch.len() < BATCH {
                next = client.try_next();
            }
        }
        if !batch.is_empty() {
            let frames = batch.drain(..);
            let sent = tokio::time::timeout(slow, async {
                for f in frames {
                    sender.feed(f).await?;
                }
                sender.flush().await
            })
            .await;
            match sent {
                Ok(Ok(())) => {
                    client
                        .grant
                        .series()
                        .inspect(|s| s.sent.increment(messages));
                }
                Ok(Err(_)) => return, // the client is gone
                Err(_) => {
                    too_slow(&gw, &client);
                    return;
                }
            }
        }
        if let Some(reason) = closing {
            let (code, reason) = match reason.as_str() {
                "" => return,
                r if r.starts_with("the hub is shutting down") => (CLOSE_AWAY, r.to_owned()),
                r if r.starts_with("frame over") => (CLOSE_TOO_BIG, r.to_owned()),
                r => (CLOSE_POLICY, r.to_owned()),
            };
            let close = WsMessage::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            }));
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), sender.send(close)).await;
            return;
        }
    }
}

fn too_slow(gw: &Gateway, client: &Client) {
    info!(client = %client.grant.name, id = client.id, timeout = ?gw.cfg.slow_client_timeout, "Gateway client disconnected: its socket took nothing for slow_client_timeout.");
    gw.count_disconnect("slow");
    client.close("too slow");
}
