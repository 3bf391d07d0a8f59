use std::sync::Arc;

use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Message, Pattern, Resources,
    async_trait,
};
use serde::Deserialize;

/// `type = "reply"`: republishes each message's body to `topic` on the consumer's backend, with
/// header `in_reply_to` = the original id (a round trip).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyConfig {
    /// Topic to publish replies on.
    pub topic: String,
}

struct Reply(String);

impl ConsumerConfig for ReplyConfig {
    const TYPE: &'static str = "reply";
    const DESCRIPTION: &'static str = "republishes each message to settings.topic (round trips)";

    fn build(self, _: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        // A topic is a pattern without wildcards; reuse the pattern checks for its words.
        let p = Pattern::new(&self.topic).map_err(|e| format!("topic: {e}"))?;
        if !p.is_literal() {
            return Err(format!(
                "topic {:?}: a reply topic cannot contain wildcards",
                self.topic
            )
            .into());
        }
        Ok(Arc::new(Reply(self.topic)))
    }
}

#[async_trait]
impl Consumer for Reply {
    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let reply = Message::builder(self.0.clone(), msg.body().clone())
            .header("in_reply_to", msg.id())
            .build();
        cx.publish(reply).await.map_err(ConsumeError::transient)
    }
}
