//! The gateway's frame reader (`hub_gateway::protocol::parse`) and what it writes: any text
//! is a request or an error with a message, never a panic; a publish it accepts has a literal
//! topic and an object body, and makes a message whose hub and Moksha frames are valid JSON
//! carrying it back. Query-string decoding and Moksha's topic translation never panic.
#![no_main]

use hub_core::{Message, Pattern};
use hub_gateway::protocol::{Request, decode_query_value, hub_frame, moksha_frame, moksha_pattern, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = decode_query_value(&text);
    if let Ok(p) = moksha_pattern(&text) {
        assert!(Pattern::new(p.as_str()).is_ok());
    }
    match parse(&text) {
        Ok(Request::Publish { topic, body, headers, .. }) => {
            let p = Pattern::new(&topic).expect("a published topic is a valid pattern");
            assert!(p.is_literal(), "{topic:?} holds a wildcard");
            assert!(body.is_object());
            let msg = Message::builder(topic.clone(), body.clone()).headers(headers).build();
            let hub: serde_json::Value =
                serde_json::from_str(&hub_frame(&msg)).expect("the hub frame is JSON");
            assert_eq!(hub["type"], "message");
            assert_eq!(hub["topic"], topic.as_str());
            assert_eq!(hub["body"], body);
            let moksha: serde_json::Value =
                serde_json::from_str(&moksha_frame(&msg)).expect("the Moksha frame is JSON");
            assert_eq!(moksha["body"]["msg"], body);
        }
        Ok(Request::MokshaPublish { topic, body }) => {
            assert!(Pattern::new(&topic).is_ok_and(|p| p.is_literal()));
            assert!(body.is_object());
        }
        Ok(Request::Subscribe { patterns, .. }) => assert!(!patterns.is_empty()),
        Ok(Request::Unsubscribe { patterns, .. }) => assert!(!patterns.is_empty()),
        Ok(Request::Ping { .. } | Request::MokshaSubscribe(_)) => {}
        Err(bad) => assert!(!bad.message.is_empty()),
    }
});
