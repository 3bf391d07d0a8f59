//! `hub tail` and `hub publish`: fedmsg-tail and fedmsg-logger for this backend.

use std::time::Duration;

use futures_util::StreamExt;
use hub_core::{Message, Pattern};
use zeromq::{
    PubSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage,
};

use crate::codec::{self, Format};

/// Errors of the command-line tools.
pub type ToolError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to `endpoint`, subscribes to what `patterns` need (everything when empty), and calls
/// `each` with every matching message until it returns false. Malformed input is reported to
/// `rejected` and skipped.
///
/// # Errors
/// When the endpoint cannot be connected within `connect_timeout`.
pub async fn tail(
    endpoint: &str,
    format: Format,
    patterns: &[Pattern],
    connect_timeout: Duration,
    mut each: impl FnMut(Message) -> bool,
    mut rejected: impl FnMut(codec::Invalid),
) -> Result<(), ToolError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(connect_timeout);
    let mut socket = SubSocket::with_options(options);
    tokio::time::timeout(
        connect_timeout + Duration::from_secs(1),
        socket.connect(endpoint),
    )
    .await
    .map_err(|_| format!("cannot connect to {endpoint}: timed out"))?
    .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    let prefixes = if patterns.is_empty() {
        vec![String::new()]
    } else {
        crate::prefixes(patterns)
    };
    for p in &prefixes {
        socket.subscribe(p).await?;
    }
    loop {
        let frames = match socket.recv().await {
            Ok(f) => f.into_vec(),
            Err(_) => continue,
        };
        match codec::decode(format, &frames) {
            Ok(m) if patterns.is_empty() || patterns.iter().any(|p| p.matches(m.topic())) => {
                if !each(m) {
                    return Ok(());
                }
            }
            Ok(_) => {}
            Err(bad) => rejected(bad),
        }
    }
}

/// How `hub publish` reaches its subscribers.
#[derive(Debug, Clone)]
pub enum Peer {
    /// Bind a PUB socket and wait (up to `wait`) for a subscriber to connect.
    Bind(String),
    /// Connect a PUB socket to a SUB that binds (a relay).
    Connect(String),
}

/// Sends one message, waiting long enough for the peer to connect and subscribe that the message
/// is not lost to the slow-joiner effect: with `Bind`, until a subscriber connects (at most
/// `wait`), then `settle`; with `Connect`, `settle` after connecting.
///
/// Returns the id as sent (fedmsg: the `<year>-<uuid>` `msg_id`).
///
/// # Errors
/// Bind or connect failures, no subscriber within `wait`, or a send error.
pub async fn publish_one(
    peer: &Peer,
    msg: &Message,
    format: Format,
    wait: Duration,
    settle: Duration,
) -> Result<String, ToolError> {
    let mut socket = PubSocket::new();
    match peer {
        Peer::Bind(endpoint) => {
            let mut events = socket.monitor();
            socket
                .bind(endpoint)
                .await
                .map_err(|e| format!("cannot bind {endpoint}: {e}"))?;
            let accepted = async {
                while let Some(ev) = events.next().await {
                    if matches!(ev, SocketEvent::Accepted(..)) {
                        return true;
                    }
                }
                false
            };
            if !tokio::time::timeout(wait, accepted).await.unwrap_or(false) {
                return Err(
                    format!("no subscriber connected to {endpoint} within {wait:?}").into(),
                );
            }
        }
        Peer::Connect(endpoint) => {
            tokio::time::timeout(wait, socket.connect(endpoint))
                .await
                .map_err(|_| format!("cannot connect to {endpoint}: timed out"))?
                .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        }
    }
    tokio::time::sleep(settle).await;
    let user = std::env::var("USER").unwrap_or_else(|_| "hub".into());
    // Fix the id first so the envelope and the returned id agree.
    let msg = &Message::builder(msg.topic(), msg.body().clone())
        .id(codec::fedmsg_id(msg))
        .timestamp(msg.timestamp())
        .headers(msg.headers().clone())
        .build();
    let [topic, body] = codec::encode(format, msg, 1, &user);
    let mut frames = ZmqMessage::from(topic);
    frames.push_back(body);
    socket.send(frames).await?;
    // Give the writer a moment to flush before the socket is dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = socket.close().await;
    Ok(match format {
        Format::Fedmsg => codec::fedmsg_id(msg),
        Format::Raw => msg.id().to_owned(),
    })
}
