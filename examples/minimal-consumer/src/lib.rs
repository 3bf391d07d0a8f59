//! A consumer to copy: greets every person announced on the bus.
//!
//! `type = "greeter"`; settings `reply_topic`. It decodes each body into a typed struct (a bad
//! body is an *invalid message*: counted, dead-lettered where the backend can, never retried)
//! and publishes `{"text": "hello, <name>"}` on `reply_topic`.

use std::sync::Arc;

use hub_core::Resources;
use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Message, ResultExt, async_trait,
    json,
};
use serde::Deserialize;

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
        // `?` on an error of another crate: say which kind it is (`.transient()` or
        // `.invalid()`, from `ResultExt`).
        cx.publish_json(&self.reply_topic, greeting)
            .await
            .transient()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::Verdict;
    use hub_testkit::{Failure, TestHub, build_consumer};

    #[tokio::test]
    async fn greets_people_and_rejects_bad_bodies() {
        // Built from its settings, as the hub builds it from `[consumers.<id>.settings]`.
        let hub = TestHub::builder()
            .consumer_from_settings::<GreeterConfig>(
                "greeter",
                &["org.example.person.#"],
                r#"reply_topic = "org.example.greeting""#,
            )
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
                r#"hub_consumer_processed_messages_total{consumer="greeter",outcome="invalid"}"#
            ),
            Some(1.0)
        );
        assert_eq!(hub.consumed("greeter").len(), 1);
        assert_eq!(
            hub.handled("greeter")[1].failure(),
            Some(Failure::Invalid),
            "a bad body is an invalid message"
        );
        assert!(hub.shutdown().await.unwrap().drain.is_clean());
    }

    #[test]
    fn settings_are_checked_as_the_hub_checks_them() {
        let err = build_consumer::<GreeterConfig>(r#"reply_topik = "x""#, &Resources::new())
            .err()
            .expect("an unknown key is refused");
        assert!(err.contains("reply_topik"), "{err}");
        let err = hub_testkit::build_consumer_json::<GreeterConfig>(
            &json!({"reply_topic": 7}),
            &Resources::new(),
        )
        .err()
        .expect("a number is not a topic");
        assert!(
            err.contains("settings.reply_topic: expected a string"),
            "{err}"
        );
        // What `build` returns goes straight into the test kit.
        let built = build_consumer::<GreeterConfig>(r#"reply_topic = "x""#, &Resources::new());
        assert!(built.is_ok());
    }
}
