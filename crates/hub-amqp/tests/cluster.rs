//! A three-node RabbitMQ cluster of private nodes on 127.0.0.1 (started, clustered and stopped
//! here; the shared broker is never disturbed): a hub with `urls` over the three consumes a
//! quorum queue while the node it is connected to is stopped mid-stream; it moves to another
//! node and loses nothing (duplicates bounded by the prefetch window); the node restarted, the
//! cluster heals and the hub keeps going.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::until;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_amqp::AmqpConfig;
use hub_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use hub_amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use hub_core::{
    BackendConfig, BrokerQueue, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern,
    QueueType, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder};
use serde_json::json;
use tokio::time::{Instant, sleep};

/// (node name, AMQP port, distribution port)
const NODES: [(&str, u16, u16); 3] = [
    ("hubc1@localhost", 5681, 25681),
    ("hubc2@localhost", 5682, 25682),
    ("hubc3@localhost", 5683, 25683),
];
const DIR: &str = "/tmp/hub-rabbit-cluster";

fn ctl(node: &str, args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(["-n", node, "-q"])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Starts the three nodes (fresh state), joins the second and third to the first.
fn start_cluster() {
    for (node, _, _) in NODES {
        ctl(node, &["stop"]);
    }
    let _ = std::fs::remove_dir_all(DIR);
    for (node, port, dist) in NODES {
        let dir = format!("{DIR}/{port}");
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("chmod").args(["777", &dir]).status().unwrap();
        let conf = format!("{dir}/rabbitmq.conf");
        std::fs::write(&conf, format!("listeners.tcp.local = 127.0.0.1:{port}\n")).unwrap();
        // No plugins: the management plugin's port would clash with the shared broker's.
        std::fs::write(format!("{dir}/plugins"), "[].\n").unwrap();
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .envs([
                ("RABBITMQ_NODENAME", node.to_owned()),
                ("RABBITMQ_NODE_PORT", port.to_string()),
                ("RABBITMQ_DIST_PORT", dist.to_string()),
                ("RABBITMQ_MNESIA_BASE", format!("{dir}/mnesia")),
                ("RABBITMQ_LOG_BASE", format!("{dir}/log")),
                ("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{dir}/plugins")),
                ("RABBITMQ_CONFIG_FILE", conf),
            ])
            .status()
            .expect("rabbitmq-server is installed (scripts/test installs it)");
        assert!(started.success());
    }
    for (node, port, _) in NODES {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !port_open(port) {
            assert!(
                std::time::Instant::now() < deadline,
                "private node {node} did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(ctl(node, &["await_startup"]), "{node}");
    }
    let first = NODES[0].0;
    for (node, _, _) in &NODES[1..] {
        assert!(ctl(node, &["stop_app"]), "{node} stop_app");
        assert!(ctl(node, &["reset"]), "{node} reset");
        assert!(ctl(node, &["join_cluster", first]), "{node} join_cluster");
        assert!(ctl(node, &["start_app"]), "{node} start_app");
        assert!(ctl(node, &["await_startup"]), "{node}");
    }
}

/// Stops every node of the cluster, whatever happens to the test.
struct Cluster;
impl Drop for Cluster {
    fn drop(&mut self) {
        for (node, _, _) in NODES {
            ctl(node, &["stop"]);
        }
    }
}

fn url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// Counts each `i` it handles.
struct Count(Arc<Mutex<BTreeMap<u64, u32>>>);

#[async_trait]
impl Consumer for Count {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let i = msg.body()["i"].as_u64().unwrap();
        *self.0.lock().unwrap().entry(i).or_default() += 1;
        sleep(Duration::from_millis(1)).await;
        Ok(())
    }
}

/// Publishes `{"i": i}` for `range` on `topic` through the node at `port` (confirmed, mandatory,
/// persistent), each `gap` apart.
async fn publish(port: u16, topic: &str, range: std::ops::Range<u64>, gap: Duration) {
    let conn = Connection::connect(&url(port), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in range {
        let body = serde_json::to_vec(&json!({ "i": i })).unwrap();
        let confirm = ch
            .basic_publish(
                "amq.topic".into(),
                topic.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "publish {i} not confirmed");
        assert!(confirm.take_message().is_none(), "publish {i} returned");
        sleep(gap).await;
    }
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_follows_its_cluster_when_its_node_stops_and_loses_nothing() {
    // The hub's own lines, captured and shown if the test fails (a CI run once waited 60 s
    // for the hub to leave the stopped node, with nothing to say why).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,lapin=warn")
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let t = Instant::now();
    tokio::task::spawn_blocking(start_cluster).await.unwrap();
    let _cluster = Cluster;
    eprintln!("three-node cluster up in {:?}", t.elapsed());
    const PREFETCH: u32 = 50;
    let cfg: AmqpConfig = serde_json::from_value(json!({
        "urls": NODES.iter().map(|n| url(n.1)).collect::<Vec<_>>(),
        "prefetch": PREFETCH,
    }))
    .unwrap();
    let backend = cfg.build("cluster").unwrap();
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let spec = ConsumerSpec {
        name: "q".into(),
        backend: "cluster".into(),
        patterns: vec![Pattern::new("fleet.#").unwrap()],
        options: ConsumerOptions {
            durable: true,
            concurrency: 4,
            broker_queue: BrokerQueue {
                kind: QueueType::Quorum,
                ..BrokerQueue::default()
            },
            ..ConsumerOptions::default()
        },
        dead_letter: None,
    };
    let running = EngineBuilder::new("hubcluster")
        .backend("cluster", Arc::clone(&backend))
        .consumer(spec, Arc::new(Count(seen.clone())))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    until("ready", Duration::from_secs(30), || {
        running.readiness().ready
    })
    .await;
    let metrics = running.metrics();
    let on = |port: u16| {
        let text = metrics.render();
        let series = format!(
            "hub_amqp_node{{backend=\"cluster\",connection=\"consume\",node=\"127.0.0.1:{port}\"}} 1"
        );
        text.contains(&series)
    };
    assert!(on(NODES[0].1), "{}", metrics.render());

    // 2 000 messages through the third node, 2 ms apart; the first node stopped after 500.
    const N: u64 = 2_000;
    let publishing = tokio::spawn(publish(
        NODES[2].1,
        "fleet.m",
        0..N,
        Duration::from_millis(2),
    ));
    until("500 consumed", Duration::from_secs(60), || {
        seen.lock().unwrap().len() >= 500
    })
    .await;
    let stopped = Instant::now();
    assert!(
        tokio::task::spawn_blocking(|| ctl(NODES[0].0, &["stop_app"]))
            .await
            .unwrap()
    );
    until("on another node", Duration::from_secs(60), || {
        !on(NODES[0].1)
    })
    .await;
    publishing.await.unwrap();
    until("all 2 000", Duration::from_secs(120), || {
        seen.lock().unwrap().len() as u64 == N
    })
    .await;
    let moved = stopped.elapsed();
    let twice = seen.lock().unwrap().values().filter(|&&n| n > 1).count();
    eprintln!(
        "node stopped mid-stream: every message handled {moved:?} after the stop, {twice} handled twice (prefetch {PREFETCH})"
    );
    assert!(
        twice <= PREFETCH as usize,
        "{twice} duplicates: more than the prefetch window"
    );

    // The node back: the cluster heals, and the hub goes on (wherever it is).
    assert!(
        tokio::task::spawn_blocking(
            || ctl(NODES[0].0, &["start_app"]) && ctl(NODES[0].0, &["await_startup"])
        )
        .await
        .unwrap()
    );
    publish(NODES[0].1, "fleet.m", N..N + 200, Duration::ZERO).await;
    until(
        "200 more after the node's return",
        Duration::from_secs(60),
        || seen.lock().unwrap().len() as u64 == N + 200,
    )
    .await;
    assert!(running.readiness().ready);
    running.shutdown(Duration::from_secs(5)).await;
}
