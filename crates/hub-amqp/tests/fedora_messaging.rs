//! Interop with the real fedora-messaging library (Python), both ways, on the real RabbitMQ.
//! `scripts/test` creates the venv (`target/fm-venv`, or set `HUB_TEST_FM_PYTHON`); under CI a
//! missing one fails the run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_amqp::AmqpConfig;
use hub_core::{
    BackendConfig, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn python() -> Option<PathBuf> {
    let path = std::env::var_os("HUB_TEST_FM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/fm-venv/bin/python"
            ))
        });
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no Python with fedora-messaging at {}: scripts/test creates it",
        path.display()
    );
    eprintln!(
        "skipped: no Python with fedora-messaging at {} (run scripts/test)",
        path.display()
    );
    None
}

fn script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

struct Keep(Arc<Mutex<Vec<Message>>>);

#[async_trait]
impl Consumer for Keep {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.0.lock().unwrap().push(msg.clone());
        Ok(())
    }
}

fn config() -> AmqpConfig {
    serde_json::from_value(json!({"url": URL})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_fedora_messaging_publishes_the_hub_consumes() {
    let Some(py) = python() else { return };
    let u = uid();
    let topic = format!("org.fedoraproject.test{u}.interop");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let spec = ConsumerSpec {
        name: "fm".into(),
        backend: "r".into(),
        patterns: vec![Pattern::new(&topic).unwrap()],
        options: ConsumerOptions::default(),
        dead_letter: None,
    };
    let running = EngineBuilder::new(format!("hub{u}"))
        .backend("r", config().build("r").unwrap())
        .consumer(spec, Arc::new(Keep(seen.clone())))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running.readiness().ready {
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(20)).await;
    }
    let t = topic.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&py)
            .args([script("fm_publish.py"), URL.into(), t])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    while seen.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "the hub never got fedora-messaging's message"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let m = seen.lock().unwrap()[0].clone();
    assert_eq!(m.topic(), topic);
    assert_eq!(m.id(), id, "id = message_id");
    assert_eq!(
        m.body(),
        &json!({"hello": "from fedora-messaging", "n": 42})
    );
    assert_eq!(
        m.header("fedora_messaging_schema"),
        Some(&json!("base.message"))
    );
    let sent_at: jiff::Timestamp = m
        .header("sent-at")
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        m.timestamp().as_second(),
        sent_at.as_second(),
        "timestamp = sent-at"
    );
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_hub_publishes_fedora_messaging_accepts() {
    let Some(py) = python() else { return };
    let u = uid();
    let topic = format!("org.fedoraproject.test{u}.outbound");
    let backend = config().build("r").unwrap();
    let running = EngineBuilder::new(format!("hub{u}"))
        .backend("r", backend.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running.readiness().ready {
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(20)).await;
    }
    let mut child = Command::new(&py)
        .args([
            script("fm_accept.py"),
            URL.into(),
            format!("fm-accept-{u}"),
            topic.clone(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::task::spawn_blocking(move || {
        let first = lines.next().unwrap().unwrap();
        (first, lines)
    })
    .await
    .unwrap();
    assert_eq!(ready.0, "ready");
    let msg = Message::builder(
        topic.clone(),
        json!({"package": "kernel", "version": "6.18"}),
    )
    .header("fedora_messaging_severity", 30)
    .build();
    backend.publish(&msg).await.unwrap();
    let (accepted, status) = tokio::task::spawn_blocking(move || {
        let mut lines = ready.1;
        let line = lines.next().unwrap().unwrap();
        (line, child.wait().unwrap())
    })
    .await
    .unwrap();
    assert!(status.success());
    let v: Value = serde_json::from_str(&accepted).unwrap();
    assert_eq!(v["topic"], topic.as_str());
    assert_eq!(v["body"], json!({"package": "kernel", "version": "6.18"}));
    assert_eq!(v["severity"], 30);
    assert_eq!(v["schema"], "base.message");
    assert_eq!(v["delivery_mode"], 2);
    assert_eq!(v["content_type"], "application/json");
    assert!(
        uuid::Uuid::parse_str(v["id"].as_str().unwrap()).is_ok_and(|u| u.get_version_num() == 4)
    );
    assert!(v["sent_at"].as_str().unwrap().ends_with("+00:00"));
    running.shutdown(Duration::from_secs(5)).await;
}
