//! The raw dependency for `scripts/bench-gateway`: axum's WebSocket (tokio-tungstenite) with
//! nothing of the hub in between. `/echo` sends each text frame back; `/fanout` sends every
//! connection the same 200-byte frame `RATE` times a second (a `tokio::sync::broadcast`).
//!
//! `cargo run --release -p hub-gateway --example ws_baseline -- PORT RATE`

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(9950);
    let rate: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000.0);
    let (tx, _) = broadcast::channel::<axum::extract::ws::Utf8Bytes>(4096);
    let ticker = tx.clone();
    tokio::spawn(async move {
        let body = format!(
            "{{\"type\":\"message\",\"id\":\"x\",\"topic\":\"bench.fan\",\"body\":{{\"pad\":\"{}\"}}}}",
            "x".repeat(140)
        );
        let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let mut every = tokio::time::interval(period.max(Duration::from_millis(1)));
        let per_tick = (rate * every.period().as_secs_f64()).round().max(1.0) as usize;
        loop {
            every.tick().await;
            for _ in 0..per_tick {
                let _ = ticker.send(body.clone().into());
            }
        }
    });
    let app = Router::new()
        .route("/echo", get(echo))
        .route("/fanout", get(fanout))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await
}

async fn echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(m)) = socket.next().await {
            if let Message::Text(t) = m
                && socket.send(Message::Text(t)).await.is_err()
            {
                return;
            }
        }
    })
}

async fn fanout(
    State(tx): State<broadcast::Sender<axum::extract::ws::Utf8Bytes>>,
    ws: WebSocketUpgrade,
) -> Response {
    let mut rx = tx.subscribe();
    ws.on_upgrade(|socket: WebSocket| async move {
        let (mut send, mut recv) = socket.split();
        tokio::spawn(async move { while recv.next().await.is_some() {} });
        loop {
            match rx.recv().await {
                Ok(t) => {
                    if send.send(Message::Text(t)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}
