//! Secrets stay secret: the IRC server password is sent (the server lets us in with it, not
//! without) and appears in no log line and no `Debug` output. Alone in its test binary: the
//! log capture is a thread-local subscriber, which other tests logging at the same time in
//! the same process could keep from seeing every event.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Ircd, context};
use hub_core::{Consumer, Message, json};
use hub_notify::{Notifier, NotifyConfig};

fn notifier(port: u16, extra: serde_json::Value) -> Notifier {
    let mut settings = json!({
        "sink": "irc",
        "server": "127.0.0.1",
        "port": port,
        "nick": "hubbot",
        "channel": "#secrets",
        "reconnect_delay": "100ms",
        "reconnect_delay_max": "1s",
    });
    if let (Some(s), Some(e)) = (settings.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value::<NotifyConfig>(settings)
        .unwrap()
        .into_notifier()
        .unwrap()
}

/// A `MakeWriter` that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_server_password_is_sent_and_never_logged() {
    // On this (current-thread) runtime every task logs to this subscriber.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let password = "pw-0f9a8b7c";
    let ircd = Ircd::start_with(
        common::free_port(),
        &format!("[Global]\nPassword = {password}\n"),
    )
    .await;
    let cx = context();
    // Without it the server refuses us: never ready.
    let refused = notifier(ircd.port, json!({"nick": "nopass"}));
    refused.start(&cx).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!refused.is_ready().await);
    refused.stop(&cx).await;

    let n = notifier(ircd.port, json!({"password": password}));
    n.start(&cx).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n.is_ready().await {
        assert!(Instant::now() < deadline, "not in the channel within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n.consume(&cx, &Message::new("t", json!(1))).await.unwrap();
    n.stop(&cx).await;

    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logged.contains("IRC joined"), "{logged}");
    assert!(!logged.contains(password), "{logged}");
    assert!(!format!("{n:?}").contains(password));
}
