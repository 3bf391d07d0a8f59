//! Each message is handled inside its own `message` span (id, topic), inside its consumer's span.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, PoisonError};

use hub_core::{ConsumeError, Consumer, Context, Message, Verdict, async_trait};
use hub_testkit::TestHub;
use serde_json::json;

/// Logs one line while handling.
struct Logs;

#[async_trait]
impl Consumer for Logs {
    async fn consume(&self, _: &Context, _: &Message) -> Result<(), ConsumeError> {
        tracing::info!("handled");
        Ok(())
    }
}

/// What the fmt layer writes, kept.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The only test in this binary (its own process): the subscriber is the global one, as in the
/// daemon (a thread-scoped one races with other tests over tracing's cached callsite interest).
#[tokio::test(flavor = "current_thread")]
async fn each_message_is_handled_in_its_own_span_inside_the_consumer_span() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("info,hub::message=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let hub = TestHub::builder()
        .consumer("logs", &["in.#"], Logs)
        .start()
        .await;
    let msg = Message::builder("in.traced", json!({})).id("m-1").build();
    assert_eq!(hub.send_message(msg).await, Verdict::Ack);
    hub.shutdown().await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("handled"))
        .unwrap_or_else(|| panic!("no log line from the consumer: {text}"));
    assert!(
        line.contains("consumer{consumer=logs}:message{id=m-1 topic=in.traced}:"),
        "{line}"
    );
}
