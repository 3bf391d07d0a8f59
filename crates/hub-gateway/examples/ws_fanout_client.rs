//! The fan-out subscribers of `scripts/bench-gateway`: N WebSocket connections (tokio-
//! tungstenite, the same library as the server), each counting the frames it receives for
//! SECS seconds after a one-second settling time; prints the counts as a JSON array. With
//! `sub`, each first sends the hub protocol's subscribe to PATTERN (the raw server needs none).
//!
//! `cargo run --release -p hub-gateway --example ws_fanout_client -- URL N SECS [sub PATTERN]`

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.first().cloned().unwrap_or_default();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let secs: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let subscribe = (args.get(3).map(String::as_str) == Some("sub")).then(|| {
        format!(
            "{{\"op\":\"subscribe\",\"patterns\":[\"{}\"]}}",
            args.get(4).map_or("#", String::as_str)
        )
    });
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (url, subscribe) = (url.clone(), subscribe.clone());
        tasks.push(tokio::spawn(async move {
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
                return 0u64;
            };
            if let Some(s) = subscribe {
                let _ = ws.send(Message::text(s)).await;
            }
            let settle = tokio::time::Instant::now() + Duration::from_secs(1);
            while tokio::time::timeout_at(settle, ws.next()).await.is_ok() {}
            let end = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
            let mut got = 0;
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end, ws.next()).await {
                if m.is_text() {
                    got += 1;
                }
            }
            got
        }));
    }
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap_or(0));
    }
    println!("{counts:?}");
}
