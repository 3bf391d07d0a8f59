//! Correlation: whatever a consumer publishes while it handles a message carries that message's
//! id, so a chain of consumers (and the people reading their logs) can follow one event through
//! the bus.
//!
//! The engine gives each call to [`Consumer::consume`](crate::Consumer::consume) a context that
//! knows the message ([`Context::handling`](crate::Context::handling)); [`Context::publish`]
//! (crate::Context::publish) then adds two headers to the outgoing message, unless the consumer
//! set them itself:
//!
//! - [`IN_REPLY_TO`] (`in_reply_to`): the id of the message being handled;
//! - [`CORRELATION_ID`] (`correlation_id`): the handled message's own `correlation_id` header
//!   if it has one (the chain keeps the id of the event that started it), else its id.
//!
//! Backends carry headers in their own shape: AMQP as message headers (what fedora-messaging
//! reads) plus the `correlation_id` property; fedmsg inside the envelope's `headers` object.
//! A clone of the context keeps the handled message, so work spawned onto another task with
//! it publishes correlated messages too.

use serde_json::Value;

use crate::Message;

/// Header: the id of the message whose handling published this one.
pub const IN_REPLY_TO: &str = "in_reply_to";
/// Header: the id of the first message of the chain this one belongs to.
pub const CORRELATION_ID: &str = "correlation_id";

/// The correlation id of `msg`: its `correlation_id` header when it is a non-empty string, else
/// its id.
pub fn correlation_id(msg: &Message) -> &str {
    match msg.header(CORRELATION_ID) {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => msg.id(),
    }
}

/// `out` with [`IN_REPLY_TO`] and [`CORRELATION_ID`] added where absent, as a reply to
/// `handled`; `out` itself when nothing is handled or both are already set.
pub fn correlate(handled: Option<&Message>, out: Message) -> Message {
    let Some(handled) = handled else {
        return out;
    };
    let mut extra = Vec::with_capacity(2);
    if out.header(IN_REPLY_TO).is_none() {
        extra.push((IN_REPLY_TO, Value::from(handled.id())));
    }
    if out.header(CORRELATION_ID).is_none() {
        extra.push((CORRELATION_ID, Value::from(correlation_id(handled))));
    }
    if extra.is_empty() {
        out
    } else {
        out.with_headers_added(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn publishes_while_handling_carry_the_chain() {
        let first = Message::builder("a.b", json!(1)).id("first").build();
        let out = correlate(Some(&first), Message::new("c.d", json!(2)));
        assert_eq!(out.header(IN_REPLY_TO), Some(&json!("first")));
        assert_eq!(out.header(CORRELATION_ID), Some(&json!("first")));
        assert_eq!(out.body(), &json!(2));

        // The next hop keeps the first id as the correlation id.
        let second = correlate(
            Some(&out),
            Message::builder("e.f", json!(3)).id("third").build(),
        );
        assert_eq!(second.header(IN_REPLY_TO), Some(&json!(out.id())));
        assert_eq!(second.header(CORRELATION_ID), Some(&json!("first")));
        assert_eq!(second.id(), "third");

        // Set by hand: kept.
        let own = Message::builder("g.h", json!(4))
            .header(CORRELATION_ID, "mine")
            .header(IN_REPLY_TO, "other")
            .build();
        assert_eq!(correlate(Some(&first), own.clone()), own);

        // Nothing handled: unchanged.
        let plain = Message::new("i.j", json!(5));
        assert_eq!(correlate(None, plain.clone()), plain);
    }
}
