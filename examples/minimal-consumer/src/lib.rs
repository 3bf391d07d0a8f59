//! A consumer to copy: greets every person announced on the bus.
//!
//! `type = "greeter"`; settings `reply_topic`. It decodes each body into a typed struct (a bad
//! body is an *invalid message*: counted, dead-lettered where the backend can, never retried)
//! and publishes `{"text": "hello, <name>"}` on `reply_topic`.

use std::sync::Arc;

use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Message, Resources, async_trait,
};
use serde::Deserialize;
use serde_json::json;

/// `[consumers.<id>.settings]` for `type = "greeter"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GreeterConfig {
    /// Topic the greeting is published on.
    pub reply_topic: String,
}

/// The body this consumer expects.
#[derive(Debug, Deserialize)]
struct Person {
    name: String,
}

struct Greeter {
    reply_topic: String,
}

impl ConsumerConfig for GreeterConfig {
    const TYPE: &'static str = "greeter";
    const DESCRIPTION: &'static str =
        "publishes {\"text\": \"hello, <name>\"} for each {\"name\": ...} message";

    fn build(self, _resources: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        Ok(Arc::new(Greeter {
            reply_topic: self.reply_topic,
        }))
    }
}

#[async_trait]
impl Consumer for Greeter {
    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let person: Person = msg.decode()?;
        let greeting = json!({ "text": format!("hello, {}", person.name) });
        cx.publish_json(&self.reply_topic, greeting)
            .await
            .map_err(ConsumeError::transient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::{ConsumerConfig, Resources, Verdict};
    use hub_testkit::TestHub;

    fn greeter() -> Arc<dyn Consumer> {
        GreeterConfig {
            reply_topic: "org.example.greeting".into(),
        }
        .build(&Resources::new())
        .unwrap()
    }

    struct Shared(Arc<dyn Consumer>);
    #[async_trait]
    impl Consumer for Shared {
        async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
            self.0.consume(cx, msg).await
        }
    }

    #[tokio::test]
    async fn greets_people_and_rejects_bad_bodies() {
        let hub = TestHub::builder()
            .consumer("greeter", &["org.example.person.#"], Shared(greeter()))
            .start()
            .await;
        assert_eq!(
            hub.send("org.example.person.new", json!({"name": "Ada"}))
                .await,
            Verdict::Ack
        );
        let out = hub.published();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic(), "org.example.greeting");
        assert_eq!(out[0].body(), &json!({"text": "hello, Ada"}));

        let verdict = hub
            .send("org.example.person.new", json!({"nom": "Ada"}))
            .await;
        assert!(
            matches!(&verdict, Verdict::Reject { reason } if reason.contains("missing field `name`")),
            "{verdict:?}"
        );
        assert_eq!(
            hub.metric(
                r#"hub_consumer_processed_messages_total{consumer="greeter",outcome="error"}"#
            ),
            Some(1.0)
        );
        assert_eq!(hub.consumed("greeter").len(), 1);
        assert!(hub.shutdown().await.unwrap().drain.is_clean());
    }
}
