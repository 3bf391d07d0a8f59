//! A broker restart: a private RabbitMQ node on 127.0.0.1:5673 (started and stopped here, so the
//! shared broker is never disturbed) is restarted under a running hub.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_amqp::AmqpConfig;
use hub_core::{
    BackendConfig, ConsumeError, Consumer, ConsumerOptions, ConsumerSpec, Context, EngineBuilder,
    Message, Pattern, async_trait,
};
use serde_json::json;
use tokio::time::{Instant, sleep};

const NODE: &str = "hubtest@localhost";
const DIR: &str = "/tmp/hub-rabbit-5673";

fn ctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(["-n", NODE, "-q"])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn port_open() -> bool {
    std::net::TcpStream::connect(("127.0.0.1", 5673)).is_ok()
}

/// Starts the private node (fresh state) and waits until it accepts connections.
fn start_node() {
    ctl(&["stop"]);
    let _ = std::fs::remove_dir_all(DIR);
    std::fs::create_dir_all(DIR).unwrap();
    Command::new("chmod").args(["777", DIR]).status().unwrap();
    let conf = format!("{DIR}/rabbitmq.conf");
    std::fs::write(&conf, "listeners.tcp.local = 127.0.0.1:5673\n").unwrap();
    let started = Command::new("rabbitmq-server")
        .arg("-detached")
        .envs([
            ("RABBITMQ_NODENAME", NODE.to_owned()),
            ("RABBITMQ_NODE_PORT", "5673".to_owned()),
            ("RABBITMQ_DIST_PORT", "25673".to_owned()),
            ("RABBITMQ_MNESIA_BASE", format!("{DIR}/mnesia")),
            ("RABBITMQ_LOG_BASE", format!("{DIR}/log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{DIR}/plugins")),
            ("RABBITMQ_CONFIG_FILE", conf),
        ])
        .status()
        .expect("rabbitmq-server is installed (scripts/test installs it)");
    assert!(started.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !port_open() {
        assert!(
            std::time::Instant::now() < deadline,
            "private RabbitMQ node did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ctl(&["await_startup"]));
}

struct Node;
impl Drop for Node {
    fn drop(&mut self) {
        ctl(&["stop"]);
    }
}

struct Keep(Arc<Mutex<BTreeSet<u64>>>);

#[async_trait]
impl Consumer for Keep {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.0
            .lock()
            .unwrap()
            .insert(msg.body()["i"].as_u64().unwrap());
        Ok(())
    }
}

async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_and_publishing_resume_after_a_broker_restart() {
    tokio::task::spawn_blocking(start_node).await.unwrap();
    let _node = Node;
    let cfg: AmqpConfig =
        serde_json::from_value(json!({"url": "amqp://guest:guest@127.0.0.1:5673/%2f"})).unwrap();
    let backend = cfg.build("r").unwrap();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let spec = ConsumerSpec {
        name: "survivor".into(),
        backend: "r".into(),
        patterns: vec![Pattern::new("restart.#").unwrap()],
        options: ConsumerOptions {
            durable: true,
            ..ConsumerOptions::default()
        },
    };
    let running = EngineBuilder::new("hubrestart")
        .backend("r", backend.clone())
        .consumer(spec, Arc::new(Keep(seen.clone())))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    until("ready", Duration::from_secs(30), || {
        running.readiness().ready
    })
    .await;
    for i in 0..50u64 {
        backend
            .publish(&Message::new("restart.before", json!({"i": i})))
            .await
            .unwrap();
    }
    until("50 before the restart", Duration::from_secs(20), || {
        seen.lock().unwrap().len() == 50
    })
    .await;

    let t = Instant::now();
    assert!(
        tokio::task::spawn_blocking(|| ctl(&["stop_app"]) && ctl(&["start_app"]))
            .await
            .unwrap()
    );
    until(
        "the outage shows in readiness",
        Duration::from_secs(5),
        || !running.readiness().ready,
    )
    .await;
    until("reconnected", Duration::from_secs(60), || {
        running.readiness().ready
    })
    .await;
    eprintln!("ready again {:?} after the restart began", t.elapsed());
    // Publishing works again (it waits for recovery if it must), and so does consuming.
    for i in 50..100u64 {
        backend
            .publish(&Message::new("restart.after", json!({"i": i})))
            .await
            .unwrap();
    }
    until("all 100 after the restart", Duration::from_secs(30), || {
        seen.lock().unwrap().len() == 100
    })
    .await;
    running.shutdown(Duration::from_secs(5)).await;
}
