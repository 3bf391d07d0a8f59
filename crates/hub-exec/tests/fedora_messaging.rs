//! The fedora-messaging adapter (`python/hub_fm_adapter.py`) against the real fedora-messaging
//! library (scripts/test installs it in a venv and sets HUB_TEST_FM_PYTHON), running the example
//! callback class (examples/exec/fedora-messaging), written as for fedora-messaging.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use hub_core::{ConsumerOptions, Message, Resources, Verdict, json};
use hub_exec::ExecConfig;
use hub_testkit::{TestHub, build_consumer};

const ADAPTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/hub_fm_adapter.py");

/// The example callback and its fedora-messaging config (examples/exec/fedora-messaging).
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/exec/fedora-messaging"
);

fn python() -> String {
    std::env::var("HUB_TEST_FM_PYTHON")
        .expect("HUB_TEST_FM_PYTHON: a Python with fedora-messaging (scripts/test sets it)")
}

async fn hub(dir: &Path, concurrency: usize) -> TestHub {
    let d = dir.display();
    let settings = format!(
        "command = [\"{}\", \"{ADAPTER}\", \"--config\", \"{EXAMPLE}/fedora-messaging.toml\"]\nenv = {{ OUT = \"{d}\", PYTHONPATH = \"{EXAMPLE}\" }}\n",
        python()
    );
    let consumer = build_consumer::<ExecConfig>(&settings, &Resources::new()).unwrap();
    let options = ConsumerOptions {
        concurrency,
        timeout: Some(Duration::from_secs(20)),
        ..ConsumerOptions::default()
    };
    TestHub::builder()
        .consumer_with("fm", &["#"], options, consumer)
        .start()
        .await
}

fn msg(id: &str, body: serde_json::Value) -> Message {
    Message::builder("org.fedoraproject.prod.test", body)
        .id(id)
        .header("fedora_messaging_schema", "base.message")
        .header("fedora_messaging_severity", 20)
        .build()
}

fn seen(dir: &Path, id: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(id)).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_runs_unchanged_with_fedora_messaging_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 1).await;

    assert_eq!(
        hub.send_message(msg("m1", json!({"n": 1}))).await,
        Verdict::Ack
    );
    let s = seen(dir.path(), "m1");
    assert_eq!(s["topic"], "org.fedoraproject.prod.test");
    assert_eq!(s["body"], json!({"n": 1}));
    assert_eq!(
        s["greeting"], "hi",
        "[consumer_config] reaches the callback"
    );
    assert_eq!(s["class"], "Message");

    // An unknown schema: the base class, as fedora-messaging does.
    let odd = Message::builder("org.example.odd", json!({}))
        .id("m2")
        .header("fedora_messaging_schema", "no.such:Schema")
        .build();
    assert_eq!(hub.send_message(odd).await, Verdict::Ack);
    assert_eq!(seen(dir.path(), "m2")["class"], "Message");

    let v = hub
        .send_message(msg("m3", json!({"do": "nack-once"})))
        .await;
    assert!(
        matches!(&v, Verdict::Retry { reason, .. } if reason.contains("nacked by callback")),
        "{v:?}"
    );
    assert_eq!(
        hub.send_message(msg("m3", json!({"do": "nack-once"})))
            .await,
        Verdict::Ack
    );

    let v = hub.send_message(msg("m4", json!({"do": "drop"}))).await;
    assert!(
        matches!(&v, Verdict::Reject { reason } if reason.contains("dropped by callback")),
        "{v:?}"
    );

    let v = hub.send_message(msg("m5", json!({"do": "fail"}))).await;
    assert!(
        matches!(&v, Verdict::Retry { reason, .. } if reason.contains("RuntimeError: boom")),
        "{v:?}"
    );

    // HaltConsumer(requeue=True): retried, the adapter exits, and the hub starts it again.
    let v = hub.send_message(msg("m6", json!({"do": "halt"}))).await;
    assert!(
        matches!(&v, Verdict::Retry { reason, .. } if reason.contains("consumer halted")),
        "{v:?}"
    );
    // The next message may reach the adapter while it exits (then it is retried, as any
    // message a program did not answer); the one after reaches the new adapter.
    let mut v = hub.send_message(msg("m7", json!({}))).await;
    if matches!(&v, Verdict::Retry { reason, .. } if reason.contains("ended before answering")) {
        v = hub.send_message(msg("m7", json!({}))).await;
    }
    assert_eq!(v, Verdict::Ack);
    assert_eq!(
        hub.metric(r#"hub_exec_restarts_total{consumer="fm"}"#),
        Some(1.0)
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_4_runs_four_callbacks_at_once() {
    // Each callback waits (up to 10 s) until four are running: only four at once all pass.
    let dir = tempfile::tempdir().unwrap();
    let hub = hub(dir.path(), 4).await;
    let sends = (0..4).map(|i| hub.send_message(msg(&format!("t{i}"), json!({"do": "together"}))));
    let verdicts = futures_util::future::join_all(sends).await;
    assert!(verdicts.iter().all(|v| *v == Verdict::Ack), "{verdicts:?}");
    hub.shutdown().await;
}
