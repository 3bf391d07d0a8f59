//! Stream mode on RabbitMQ (127.0.0.1:5672, guest/guest; scripts/test starts it): a `reject`
//! is dead-lettered with its reason, a publish reaches the bus, and a program killed with
//! SIGKILL mid-stream on a durable queue loses nothing.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hub_amqp::AmqpConfig;
use hub_amqp::lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use hub_amqp::lapin::types::FieldTable;
use hub_amqp::lapin::{Connection, ConnectionProperties};
use hub_core::{BackendConfig, ConsumerOptions, Message, Pattern, Resources, json};
use hub_engine::{ConsumerSpec, EngineBuilder, RunningEngine};
use hub_exec::ExecConfig;
use hub_testkit::build_consumer;
use tokio::time::{Instant, sleep};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PROGRAM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/exec/stream_consumer.py"
);

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

async fn start(
    hub: &str,
    topic: &str,
    dir: &Path,
    options: ConsumerOptions,
    slow_ms: u32,
) -> (RunningEngine, Arc<dyn hub_core::Backend>) {
    let cfg: AmqpConfig = serde_json::from_value(json!({
        "url": URL, "max_attempts": 3, "retry_delay": "20ms", "retry_delay_max": "100ms"
    }))
    .unwrap();
    let backend = cfg.build("rabbit").unwrap();
    let d = dir.display();
    let settings = format!(
        "command = [\"python3\", \"{PROGRAM}\"]\nenv = {{ SEEN = \"{d}/seen\", PIDFILE = \"{d}/pid\", SLOW_MS = \"{slow_ms}\" }}\n"
    );
    let consumer = build_consumer::<ExecConfig>(&settings, &Resources::new()).unwrap();
    let spec = ConsumerSpec {
        name: "py".into(),
        backend: "rabbit".into(),
        patterns: vec![Pattern::new(topic).unwrap()],
        options,
        dead_letter: None,
    };
    let running = EngineBuilder::new(hub)
        .backend("rabbit", Arc::clone(&backend))
        .consumer(spec, consumer)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running.readiness().ready {
        assert!(Instant::now() < deadline, "not ready");
        sleep(Duration::from_millis(20)).await;
    }
    (running, backend)
}

async fn raw() -> Connection {
    Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (scripts/test starts it)")
}

fn seen(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("seen"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_is_dead_lettered_with_its_reason_and_a_publish_reaches_the_bus() {
    let u = uid();
    let (hub, topic) = (format!("exec{u}"), format!("x{u}.in"));
    let dir = tempfile::tempdir().unwrap();
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let tap = format!("tap{u}");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare(tap.as_str().into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        tap.as_str().into(),
        "amq.topic".into(),
        "org.example.done".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (running, backend) = start(&hub, &topic, dir.path(), ConsumerOptions::default(), 0).await;
    let bad = Message::builder(topic.clone(), json!({"do": "reject"})).build();
    backend.publish(&bad).await.unwrap();
    let good = Message::builder(topic.clone(), json!({"do": "publish"})).build();
    backend.publish(&good).await.unwrap();

    let dlq = format!("{hub}.dead-letters");
    let deadline = Instant::now() + Duration::from_secs(15);
    let dead = loop {
        if let Some(m) = ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        sleep(Duration::from_millis(50)).await;
    };
    let h = hub_amqp::wire::table_to_json(dead.delivery.properties.headers().as_ref().unwrap());
    assert!(
        h["x-hub-reason"]
            .as_str()
            .unwrap()
            .contains("no such build"),
        "{h:?}"
    );
    let published = loop {
        if let Some(m) = ch
            .basic_get(tap.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the published message never reached the bus"
        );
        sleep(Duration::from_millis(50)).await;
    };
    let body: serde_json::Value = serde_json::from_slice(&published.delivery.data).unwrap();
    assert_eq!(body, json!({"from": good.id()}));
    running.shutdown(Duration::from_secs(5)).await;
    let _ = ch
        .queue_delete(dlq.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_on_a_durable_queue_loses_nothing() {
    const N: usize = 300;
    let u = uid();
    let (hub, topic) = (format!("execk{u}"), format!("k{u}.m"));
    let dir = tempfile::tempdir().unwrap();
    let options = ConsumerOptions {
        concurrency: 4,
        durable: true,
        ..ConsumerOptions::default()
    };
    // 5 ms a message, one at a time: the kill comes mid-stream.
    let (running, backend) = start(&hub, &topic, dir.path(), options, 5).await;
    let mut ids = BTreeSet::new();
    for i in 0..N {
        let m = Message::builder(topic.clone(), json!({"i": i})).build();
        ids.insert(m.id().to_owned());
        backend.publish(&m).await.unwrap();
    }
    // Kill the program once it has seen a fifth of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen(dir.path()).len() < N / 5 {
        assert!(Instant::now() < deadline, "the program never got going");
        sleep(Duration::from_millis(10)).await;
    }
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    // Every message handled by a program in the end (those out at the kill, again).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeSet<String> = seen(dir.path()).into_iter().collect();
        if got.is_superset(&ids) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {N} handled",
            got.intersection(&ids).count()
        );
        sleep(Duration::from_millis(50)).await;
    }
    let restarted = running
        .metrics()
        .sample(r#"hub_exec_restarts_total{consumer="py"}"#);
    assert!(restarted >= Some(1.0), "{restarted:?}");
    running.shutdown(Duration::from_secs(10)).await;
    // Nothing left unacknowledged or queued in the durable queue.
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let queue = format!("{hub}.py");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(
        q.message_count(),
        0,
        "every message acknowledged after its answer"
    );
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = ch
        .queue_delete(
            format!("{hub}.dead-letters").as_str().into(),
            Default::default(),
        )
        .await;
    let _ = conn.close(200, "bye".into()).await;
}
