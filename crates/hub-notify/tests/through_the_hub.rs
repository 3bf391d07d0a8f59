//! The notifier inside a hub (the real engine over the memory backend) with the recommended
//! settings: `batch_size = 500` and a rate limit of 10 lines a second. Messages arriving
//! slowly become one line each, paced by the rate limit; a burst becomes a few digest lines.
//!
//! The engine is built here directly (not with `hub_testkit::TestHub`) to set the rate limit
//! and batch options exactly as a configuration file would.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Ircd, Listener};
use hub_core::{ConsumerOptions, Message, Pattern, RateLimit, RetryPolicy, Verdict, json};
use hub_engine::{ConsumerSpec, EngineBuilder, MemoryBackend};
use hub_notify::NotifyConfig;

const CHANNEL: &str = "#hub-e2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_messages_are_paced_lines_and_a_burst_becomes_digests() {
    let ircd = Ircd::start().await;
    let listener = Listener::join(ircd.port, "listener", CHANNEL).await;
    let notifier = Arc::new(
        serde_json::from_value::<NotifyConfig>(json!({
            "sink": "irc",
            "server": "127.0.0.1",
            "port": ircd.port,
            "nick": "hubbot",
            "channel": CHANNEL,
            "template": "{{ topic }} #{{ body.i }}",
            // A margin over the backlog that 85 ms spacing at 10 lines/s builds (at most 4).
            "digest_after": 8,
            "reconnect_delay": "100ms",
        }))
        .unwrap()
        .into_notifier()
        .unwrap(),
    );
    let backend = Arc::new(MemoryBackend::new());
    let options = ConsumerOptions {
        batch_size: 500,
        rate_limit: Some(RateLimit {
            rate: 10,
            per: Duration::from_secs(1),
            burst: 1,
        }),
        retry: Some(RetryPolicy {
            max_attempts: 10,
            delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
            in_order: false,
        }),
        ..ConsumerOptions::default()
    };
    let spec = ConsumerSpec {
        name: "notify".into(),
        backend: "memory".into(),
        patterns: vec![Pattern::new("#").unwrap()],
        options,
        dead_letter: None,
    };
    let running = EngineBuilder::new("test")
        .backend("memory", Arc::clone(&backend) as Arc<dyn hub_core::Backend>)
        .consumer(spec, Arc::clone(&notifier) as Arc<dyn hub_core::Consumer>)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(running.readiness().ready && notifier.is_ready().await) {
        assert!(Instant::now() < deadline, "hub or notifier not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 20 messages, one every 85 ms: faster than the 10 a second allowed.
    let first_sent = Instant::now();
    let mut verdicts = Vec::new();
    for i in 0..20 {
        let msg = Message::new("org.example.slow", json!({"i": i}));
        verdicts.push(backend.send_acked(msg).await.unwrap());
        tokio::time::sleep(Duration::from_millis(85)).await;
    }
    let heard = listener.wait_lines(20, Duration::from_secs(15)).await;
    let texts: Vec<&str> = heard.iter().map(|(t, _)| t.as_str()).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("org.example.slow #{i}")).collect();
    assert_eq!(texts, expected);
    // Line k is said no sooner than k tokens (100 ms each) after the first message was sent
    // (a loaded machine only delays lines, never brings them forward).
    for (k, (text, at)) in heard.iter().enumerate() {
        let earliest = Duration::from_millis(100) * u32::try_from(k).unwrap();
        let after = at.duration_since(first_sent);
        assert!(
            after + Duration::from_millis(5) >= earliest,
            "{text:?} said {after:?} after the first message was sent, before {earliest:?}"
        );
    }
    let span = heard[19].1.duration_since(heard[0].1);
    assert!(span >= Duration::from_millis(1700), "{span:?}");

    // 500 at once over 3 topics: a few digest lines, not 500 lines.
    let topics = ["org.example.a", "org.example.b", "org.example.c"];
    let burst_sent = Instant::now();
    for i in 0..500 {
        let msg = Message::new(topics[i % 3], json!({"i": i}));
        verdicts.push(backend.send_acked(msg).await.unwrap());
    }
    for rx in verdicts {
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v, Verdict::Ack);
    }
    // Every verdict is in: every line was sent. Give the server a moment to relay them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heard_burst = listener.heard()[20..].to_vec();
    let burst: Vec<String> = heard_burst.iter().map(|(t, _)| t.clone()).collect();
    // The lines of a digest are paced too (one token each, as the call's own): line k of the
    // burst no sooner than k tokens after it was sent.
    for (k, (text, at)) in heard_burst.iter().enumerate() {
        let earliest = Duration::from_millis(100) * u32::try_from(k).unwrap();
        let after = at.duration_since(burst_sent);
        assert!(
            after + Duration::from_millis(5) >= earliest,
            "burst line {k} {text:?} said {after:?} after the burst, before {earliest:?}"
        );
    }
    // Usually 4: the first message alone (a token was ready), then one line per topic; a
    // loaded machine may split the burst over a few calls.
    assert!(
        (3..=15).contains(&burst.len()),
        "{} lines for the burst: {burst:?}",
        burst.len()
    );
    // Each message is counted once: in a digest line ("N more on <topic> ...") or as its line.
    let mut counted = 0;
    for line in &burst {
        counted += match line.split_once(" more on ") {
            Some((n, rest)) => {
                assert!(rest.ends_with(" in the last 1 s"), "{line}");
                n.parse::<usize>().unwrap()
            }
            None => 1,
        };
    }
    assert_eq!(counted, 500, "{burst:?}");
    assert!(burst.iter().any(|l| l.contains(" more on ")), "{burst:?}");

    running.shutdown(Duration::from_secs(5)).await;
}
