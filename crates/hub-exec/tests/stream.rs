//! Stream mode with a real program: `examples/exec/stream_consumer.py` (Python, standard
//! library), through the test kit.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hub_core::{ConsumerOptions, Message, Resources, Verdict, json};
use hub_exec::ExecConfig;
use hub_testkit::{Failure, TestHub, build_consumer};

const PROGRAM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/exec/stream_consumer.py"
);

fn settings(env: &str, extra: &str) -> String {
    format!("command = [\"python3\", \"{PROGRAM}\"]\nenv = {{ {env} }}\n{extra}")
}

fn options(concurrency: usize, timeout: Option<Duration>) -> ConsumerOptions {
    ConsumerOptions {
        concurrency,
        timeout,
        ..ConsumerOptions::default()
    }
}

async fn hub(env: &str, extra: &str, opts: ConsumerOptions) -> TestHub {
    let consumer = build_consumer::<ExecConfig>(&settings(env, extra), &Resources::new()).unwrap();
    TestHub::builder()
        .consumer_with("py", &["org.#"], opts, consumer)
        .start()
        .await
}

fn msg(id: &str, body: serde_json::Value) -> Message {
    Message::builder("org.example.build", body).id(id).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_publishes_and_strict_order_at_concurrency_1() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    // A queue that holds all 10 000: they are queued in the order they are handed over (ten
    // thousand senders waiting for room would be woken in no set order; a backend has one).
    let opts = ConsumerOptions {
        queue_capacity: 20_000,
        ..options(1, None)
    };
    let hub = hub(&format!("SEEN = \"{}\"", seen.display()), "", opts).await;
    assert_eq!(hub.send_message(msg("ok", json!({}))).await, Verdict::Ack);
    let v = hub
        .send_message(msg("later", json!({"do": "retry-once"})))
        .await;
    assert!(
        matches!(&v, Verdict::Retry { reason, .. } if reason.ends_with(": try again later")),
        "{v:?}"
    );
    let again = Message::builder("org.example.build", json!({"do": "retry-once"}))
        .id("later-2")
        .header("x-hub-attempts", 2)
        .build();
    assert_eq!(
        hub.send_message(again).await,
        Verdict::Ack,
        "the next attempt succeeds"
    );
    let v = hub.send_message(msg("bad", json!({"do": "reject"}))).await;
    assert!(
        matches!(&v, Verdict::Reject { reason } if reason.ends_with(": no such build")),
        "{v:?}"
    );
    assert_eq!(
        hub.send_message(msg("pub", json!({"do": "publish"}))).await,
        Verdict::Ack
    );
    let published = hub.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].topic(), "org.example.done");
    assert_eq!(published[0].body(), &json!({"from": "pub"}));
    assert_eq!(published[0].header("in_reply_to"), Some(&json!("pub")));

    // 10 000 messages handed over at once: the program sees them in order.
    let ids: Vec<String> = (0..10_000).map(|i| format!("m{i}")).collect();
    let sends = ids
        .iter()
        .map(|id| hub.send_message(msg(id, json!({"i": 1}))));
    let verdicts = futures_util::future::join_all(sends).await;
    assert!(verdicts.iter().all(|v| *v == Verdict::Ack));
    hub.shutdown().await;
    let order: Vec<String> = std::fs::read_to_string(&seen)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('m'))
        .map(str::to_owned)
        .collect();
    assert_eq!(order, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_concurrency_8_eight_are_outstanding_and_answers_come_in_any_order() {
    // The program holds messages until it has eight, then answers the last first: only eight
    // outstanding at once can all be answered.
    let hub = hub(
        "HOLD = \"8\"",
        "",
        options(8, Some(Duration::from_secs(10))),
    )
    .await;
    let sends = (0..16).map(|i| hub.send_message(msg(&format!("c{i}"), json!({}))));
    let verdicts = futures_util::future::join_all(sends).await;
    assert!(verdicts.iter().all(|v| *v == Verdict::Ack), "{verdicts:?}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_retries_the_message_and_the_program_starts_again() {
    let hub = hub("", "", options(1, None)).await;
    // An answer first: the program works, so after a crash it starts again at once.
    assert_eq!(
        hub.send_message(msg("first", json!({}))).await,
        Verdict::Ack
    );
    let v = hub.send_message(msg("boom", json!({"do": "exit"}))).await;
    assert!(
        matches!(&v, Verdict::Retry { reason, .. } if reason.contains("ended before answering")),
        "{v:?}"
    );
    assert_eq!(
        hub.send_message(msg("after", json!({}))).await,
        Verdict::Ack
    );
    assert_eq!(
        hub.metric(r#"hub_exec_restarts_total{consumer="py"}"#),
        Some(1.0)
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_program_times_out_and_is_restarted() {
    let hub = hub("", "", options(1, Some(Duration::from_millis(500)))).await;
    let v = hub.send_message(msg("stuck", json!({"do": "hang"}))).await;
    assert!(
        matches!(&v, Verdict::Retry { reason, .. } if reason.contains("timed out")),
        "{v:?}"
    );
    assert_eq!(hub.handled("py")[0].failure(), Some(Failure::Timeout));
    assert_eq!(hub.send_message(msg("next", json!({}))).await, Verdict::Ack);
    hub.shutdown().await;
}

/// Does nothing (a second consumer, to see that it is not disturbed).
struct Quiet;

#[hub_core::async_trait]
impl hub_core::Consumer for Quiet {
    async fn consume(
        &self,
        _: &hub_core::Context,
        _: &Message,
    ) -> Result<(), hub_core::ConsumeError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_a_10_mb_line_are_counted_and_ignored_and_others_are_untouched() {
    // The default max_line_bytes (1 MiB) against a 10 MB line.
    let consumer = build_consumer::<ExecConfig>(&settings("", ""), &Resources::new()).unwrap();
    let hub = TestHub::builder()
        .consumer_with("py", &["org.#"], options(1, None), consumer)
        .consumer("quiet", &["other.#"], Quiet)
        .start()
        .await;
    assert_eq!(
        hub.send_message(msg("g", json!({"do": "garbage"}))).await,
        Verdict::Ack
    );
    assert_eq!(hub.send("other.x", json!({})).await, Verdict::Ack);
    assert_eq!(hub.send_message(msg("h", json!({}))).await, Verdict::Ack);
    // Not JSON, the 10 MB line, an id that is not out: three, and nothing stopped.
    assert_eq!(
        hub.metric(r#"hub_exec_protocol_errors_total{consumer="py"}"#),
        Some(3.0)
    );
    hub.shutdown().await;
}

/// The program's `delay` travels with the retry (the hub, or the broker, waits at least that
/// long before the next attempt) instead of holding the consumer's slot meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_carries_the_delay_the_program_asks_for() {
    let hub = hub("", "", options(1, None)).await;
    let started = std::time::Instant::now();
    let v = hub
        .send_message(msg("busy", json!({"do": "retry-later"})))
        .await;
    assert!(
        matches!(&v, Verdict::Retry { reason, delay: Some(d) }
            if reason.ends_with(": busy") && *d >= Duration::from_millis(300)),
        "{v:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the delay is not slept in the consumer: {:?}",
        started.elapsed()
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_never_gets_ready_is_a_clear_start_error() {
    let consumer = build_consumer::<ExecConfig>(
        &settings("NOT_READY = \"1\"", "ready_timeout = \"300ms\""),
        &Resources::new(),
    )
    .unwrap();
    let started = tokio::spawn(async move {
        TestHub::builder()
            .consumer("py", &["#"], consumer)
            .start()
            .await
    })
    .await;
    let panic = started.err().expect("the start fails").into_panic();
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        text.contains("did not say it was ready within 300ms"),
        "{text}"
    );
}
