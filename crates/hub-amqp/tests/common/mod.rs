//! Helpers shared by the tests against the real RabbitMQ at 127.0.0.1:5672 (guest/guest;
//! `HUB_TEST_AMQP_URL` overrides). `scripts/test` starts (or installs) RabbitMQ first; an
//! unreachable broker fails these tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_amqp::AmqpConfig;
use hub_core::{
    BackendConfig, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder, RunningEngine};
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use tokio::time::{Instant, sleep};

pub fn url() -> String {
    std::env::var("HUB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

pub async fn raw() -> Connection {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url(), ConnectionProperties::default()),
    )
    .await
    .expect("RabbitMQ did not answer within 10 s (scripts/test starts it)")
    .expect("cannot connect to RabbitMQ (scripts/test starts it)")
}

#[derive(Default)]
pub struct Probe {
    pub seen: Mutex<Vec<Message>>,
    pub fail: bool,
    pub calls: AtomicU64,
    /// When set, each message waits for a permit (never given back) before it is seen.
    pub gate: Option<Arc<tokio::sync::Semaphore>>,
}

pub struct P(pub Arc<Probe>);

#[async_trait]
impl Consumer for P {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.0.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if self.0.fail {
            return Err(ConsumeError::transient("downstream is down"));
        }
        self.0.seen.lock().unwrap().push(msg.clone());
        Ok(())
    }
}

/// Fast retries (20 ms doubling to 100 ms), three attempts, the default dead-letter routing.
pub fn fast_retries() -> AmqpConfig {
    serde_json::from_value(json!({
        "url": url(), "max_attempts": 3, "retry_delay": "20ms", "retry_delay_max": "100ms"
    }))
    .unwrap()
}

/// Deletes queues by name (best effort), for a test's clean-up.
pub async fn delete_queues(names: &[String]) {
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    for q in names {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

pub fn config(dlx: &str) -> AmqpConfig {
    serde_json::from_value(json!({
        "url": url(), "dead_letter_exchange": dlx, "max_attempts": 3, "retry_delay": "20ms", "retry_delay_max": "100ms"
    }))
    .unwrap()
}

pub async fn start(
    hub: &str,
    cfg: AmqpConfig,
    consumers: Vec<(&str, &[&str], ConsumerOptions, Arc<Probe>)>,
) -> (RunningEngine, Arc<dyn hub_core::Backend>) {
    let consumers = consumers
        .into_iter()
        .map(|(n, t, o, p)| (n, t, o, Arc::new(P(p)) as Arc<dyn Consumer>))
        .collect();
    start_with(hub, cfg, consumers).await
}

/// A consumer for [`start_with`]: name, topic patterns, options, the consumer.
pub type Spec<'a> = (&'a str, &'a [&'a str], ConsumerOptions, Arc<dyn Consumer>);

/// Starts a hub with one amqp backend (`rabbit`) and these consumers; waits until it is ready.
pub async fn start_with(
    hub: &str,
    cfg: AmqpConfig,
    consumers: Vec<Spec<'_>>,
) -> (RunningEngine, Arc<dyn hub_core::Backend>) {
    let backend = cfg.build("rabbit").unwrap();
    let mut b = EngineBuilder::new(hub).backend("rabbit", Arc::clone(&backend));
    for (name, topics, options, consumer) in consumers {
        let spec = ConsumerSpec {
            name: name.into(),
            backend: "rabbit".into(),
            patterns: topics.iter().map(|t| Pattern::new(t).unwrap()).collect(),
            options,
            dead_letter: None,
        };
        b = b.consumer(spec, consumer);
    }
    let running = b.build().unwrap().start().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running.readiness().ready {
        assert!(Instant::now() < deadline, "amqp backend never became ready");
        sleep(Duration::from_millis(20)).await;
    }
    (running, backend)
}

/// Waits until `cond` holds, at most `limit` (checked every 50 ms).
pub async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

pub fn topics(p: &Probe) -> Vec<String> {
    p.seen
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.topic().to_owned())
        .collect()
}

pub fn queues() -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn close_connection_named(name: &str) -> bool {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find(|l| l.contains(name)) else {
        return false;
    };
    let pid = line.split_whitespace().next().unwrap();
    std::process::Command::new("rabbitmqctl")
        .args(["-q", "close_connection", pid, "test: forced close"])
        .status()
        .unwrap()
        .success()
}
