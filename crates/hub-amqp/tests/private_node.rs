//! A private RabbitMQ node (started and stopped here, so the shared broker is never disturbed):
//! plain on 127.0.0.1:5673 and mutual TLS on 127.0.0.1:5674, with certificates made here by
//! openssl. It is restarted under a running hub, and the hub connects with a client certificate.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::until;
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_amqp::AmqpConfig;
use hub_core::{
    BackendConfig, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder};
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

/// The hub's log lines, captured by the test harness: shown when a test fails.
fn log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

/// The client ports of the node's connections, sorted (a connection recovered gets a new one).
fn client_ports() -> Vec<String> {
    let out = Command::new("rabbitmqctl")
        .args(["-n", NODE, "-q", "list_connections", "peer_port"])
        .output()
        .expect("rabbitmqctl");
    let mut ports: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    ports.sort();
    ports
}

fn port_open() -> bool {
    std::net::TcpStream::connect(("127.0.0.1", 5673)).is_ok()
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(format!("{DIR}/tls"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost, and a client certificate, all PEM (keys PKCS#8).
fn make_certificates() {
    let tls = format!("{DIR}/tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(
        format!("{tls}/san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=hub-test-ca",
    ]);
    for (name, cn) in [("server", "localhost"), ("client", "hub-client")] {
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
    }
    Command::new("chmod")
        .args(["-R", "a+rX", &tls])
        .status()
        .unwrap();
}

/// Starts the private node (fresh state) and waits until it accepts connections.
fn start_node() {
    ctl(&["stop"]);
    let _ = std::fs::remove_dir_all(DIR);
    std::fs::create_dir_all(DIR).unwrap();
    Command::new("chmod").args(["777", DIR]).status().unwrap();
    make_certificates();
    let conf = format!("{DIR}/rabbitmq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.local = 127.0.0.1:5673\nlisteners.ssl.local = 127.0.0.1:5674\n\
             ssl_options.cacertfile = {DIR}/tls/ca.pem\nssl_options.certfile = {DIR}/tls/server.pem\n\
             ssl_options.keyfile = {DIR}/tls/server.key\nssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n"
        ),
    )
    .unwrap();
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
    while !port_open() || std::net::TcpStream::connect(("127.0.0.1", 5674)).is_err() {
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

/// Builds and starts the engine, and waits until it is ready.
async fn ready(builder: EngineBuilder) -> hub_engine::RunningEngine {
    let running = builder.build().unwrap().start().await.unwrap();
    until("ready", Duration::from_secs(30), || {
        running.readiness().ready
    })
    .await;
    running
}

/// Starts hub `name` with one consumer on backend `backend`, waits until it is ready, and
/// publishes `n` messages `{"i": 0..n}` on `topic` through it.
async fn start_and_fill(
    name: &str,
    backend: &Arc<dyn hub_core::Backend>,
    spec: ConsumerSpec,
    consumer: Arc<dyn Consumer>,
    topic: &str,
    n: u64,
) -> hub_engine::RunningEngine {
    let running = ready(
        EngineBuilder::new(name)
            .backend(spec.backend.as_str(), Arc::clone(backend))
            .consumer(spec, consumer),
    )
    .await;
    for i in 0..n {
        backend
            .publish(&Message::new(topic, json!({"i": i})))
            .await
            .unwrap();
    }
    running
}

/// The tests here share one private node: one at a time, each with a fresh node.
static NODE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_and_publishing_resume_after_a_broker_restart() {
    let _one_at_a_time = NODE_LOCK.lock().await;
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
        dead_letter: None,
    };
    let keep = Arc::new(Keep(seen.clone()));
    let running = start_and_fill("hubrestart", &backend, spec, keep, "restart.before", 50).await;
    until("50 before the restart", Duration::from_secs(20), || {
        seen.lock().unwrap().len() == 50
    })
    .await;

    // Watch readiness during the whole restart: the outage may be shorter than the restart.
    let probe = running.readiness_probe();
    let saw_outage = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = {
        let saw = saw_outage.clone();
        tokio::spawn(async move {
            loop {
                if !probe.readiness().ready {
                    saw.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let t = Instant::now();
    assert!(
        tokio::task::spawn_blocking(|| ctl(&["stop_app"]) && ctl(&["start_app"]))
            .await
            .unwrap()
    );
    until("reconnected", Duration::from_secs(60), || {
        running.readiness().ready && saw_outage.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    watching.abort();
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

/// For each message, publishes a reply `reply.<i>` through its context and succeeds only once
/// the reply was accepted (a failed publish is a transient error: the hub retries the message).
struct Replier {
    done: Arc<Mutex<BTreeSet<u64>>>,
    calls: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Consumer for Replier {
    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let i = msg.body()["i"].as_u64().unwrap();
        sleep(Duration::from_millis(20)).await;
        cx.publish_json(&format!("reply.{i}"), json!({"i": i}))
            .await
            .map_err(ConsumeError::transient)?;
        self.done.lock().unwrap().insert(i);
        Ok(())
    }
}

/// Fault suite: the broker restarted while a consumer is publishing replies. Every request is
/// handled and every reply arrives (duplicates allowed: at least once), on durable queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_while_consumers_publish_replies_loses_no_reply() {
    log();
    let _one_at_a_time = NODE_LOCK.lock().await;
    tokio::task::spawn_blocking(start_node).await.unwrap();
    let _node = Node;
    let cfg: AmqpConfig = serde_json::from_value(json!({
        "url": "amqp://guest:guest@127.0.0.1:5673/%2f",
        "max_attempts": 1000, "retry_delay": "50ms", "retry_delay_max": "500ms"
    }))
    .unwrap();
    let backend = cfg.build("r").unwrap();
    let done = Arc::new(Mutex::new(BTreeSet::new()));
    let replies = Arc::new(Mutex::new(BTreeSet::new()));
    let replier = Arc::new(Replier {
        done: Arc::clone(&done),
        calls: std::sync::atomic::AtomicU64::new(0),
    });
    let durable = |name: &str, pattern: &str| ConsumerSpec {
        name: name.into(),
        backend: "r".into(),
        patterns: vec![Pattern::new(pattern).unwrap()],
        options: ConsumerOptions {
            durable: true,
            concurrency: 4,
            ..ConsumerOptions::default()
        },
        dead_letter: None,
    };
    let running = ready(
        EngineBuilder::new("hubreplies")
            .backend("r", Arc::clone(&backend))
            .consumer(
                durable("replier", "ask.#"),
                Arc::clone(&replier) as Arc<dyn Consumer>,
            )
            .consumer(
                durable("collector", "reply.#"),
                Arc::new(Keep(Arc::clone(&replies))),
            ),
    )
    .await;
    const N: u64 = 600;
    for i in 0..N {
        backend
            .publish(&Message::new("ask.q", json!({"i": i})))
            .await
            .unwrap();
    }
    // Mid-stream (4 at a time, 20 ms each: about 3 s of work), the broker goes away and back.
    until("replies flowing", Duration::from_secs(20), || {
        replies.lock().unwrap().len() >= 50
    })
    .await;
    assert!(
        tokio::task::spawn_blocking(|| ctl(&["stop_app"]))
            .await
            .unwrap()
    );
    let at_restart = done.lock().unwrap().len();
    sleep(Duration::from_millis(500)).await;
    assert!(
        tokio::task::spawn_blocking(|| ctl(&["start_app"]))
            .await
            .unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    // Both sets: a reply can reach the collector before its publish's confirm has reached the
    // replier, which records the request as handled only then.
    while (replies.lock().unwrap().len() as u64) < N || (done.lock().unwrap().len() as u64) < N {
        if Instant::now() > deadline {
            // What a failure needs to be understood: where the replies are.
            let queues = tokio::task::spawn_blocking(|| {
                Command::new("rabbitmqctl")
                    .args(["-n", NODE, "-q", "list_queues", "name", "messages_ready"])
                    .args(["messages_unacknowledged", "consumers"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            })
            .await
            .unwrap();
            panic!(
                "timed out: {} replies of {N}, {} requests handled\nqueues (ready, unacked, consumers):\n{queues}\n{}",
                replies.lock().unwrap().len(),
                done.lock().unwrap().len(),
                running.metrics().render()
            );
        }
        sleep(Duration::from_millis(50)).await;
    }
    let handled = done.lock().unwrap().clone();
    assert_eq!(
        handled,
        (0..N).collect::<BTreeSet<_>>(),
        "every request handled"
    );
    let calls = replier.calls.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "{at_restart} of {N} handled when the broker had stopped; {calls} calls for {N} requests"
    );
    assert!(
        (at_restart as u64) < N,
        "the restart came after the stream: nothing was tested"
    );
    running.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_mutual_tls_with_a_client_certificate() {
    let _one_at_a_time = NODE_LOCK.lock().await;
    tokio::task::spawn_blocking(start_node).await.unwrap();
    let _node = Node;
    let tls = format!("{DIR}/tls");
    let url = "amqps://guest:guest@localhost:5674/%2f";
    let with_cert: AmqpConfig = serde_json::from_value(json!({
        "url": url, "ca_file": format!("{tls}/ca.pem"), "cert_file": format!("{tls}/client.pem"), "key_file": format!("{tls}/client.key")
    }))
    .unwrap();
    let backend = with_cert.build("tls").unwrap();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let spec = ConsumerSpec {
        name: "secure".into(),
        backend: "tls".into(),
        patterns: vec![Pattern::new("tls.#").unwrap()],
        options: ConsumerOptions::default(),
        dead_letter: None,
    };
    let running = EngineBuilder::new("hubtls")
        .backend("tls", backend.clone())
        .consumer(spec, Arc::new(Keep(seen.clone())))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    until("connected over TLS", Duration::from_secs(30), || {
        running.readiness().ready
    })
    .await;
    backend
        .publish(&Message::new("tls.hello", json!({"i": 7})))
        .await
        .unwrap();
    until(
        "the message came back over TLS",
        Duration::from_secs(10),
        || seen.lock().unwrap().contains(&7),
    )
    .await;
    running.shutdown(Duration::from_secs(5)).await;

    // Without the client certificate the broker refuses the connection: the hub never gets ready.
    let without: AmqpConfig =
        serde_json::from_value(json!({"url": url, "ca_file": format!("{tls}/ca.pem")})).unwrap();
    let running = EngineBuilder::new("hubtls2")
        .backend("tls", without.build("tls").unwrap())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    sleep(Duration::from_secs(3)).await;
    assert!(
        !running.readiness().ready,
        "connected without a client certificate"
    );
    running.shutdown(Duration::from_secs(2)).await;
}

/// Counts what it consumes, once its gate opens.
struct Gated {
    seen: Arc<Mutex<BTreeSet<u64>>>,
    gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait]
impl Consumer for Gated {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.gate.acquire().await.expect("open").forget();
        self.seen
            .lock()
            .unwrap()
            .insert(msg.body()["i"].as_u64().unwrap());
        Ok(())
    }
}

/// Ready plus unacknowledged messages in a queue of the private node.
fn depth(queue: &str) -> Option<u64> {
    let out = Command::new("rabbitmqctl")
        .args(["-n", NODE, "-q", "list_queues", "name", "messages"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (name, n) = l.split_once(char::is_whitespace)?;
        (name == queue).then(|| n.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_alarm_blocks_publishing_but_not_consuming_and_acknowledging() {
    let _one_at_a_time = NODE_LOCK.lock().await;
    tokio::task::spawn_blocking(start_node).await.unwrap();
    let _node = Node;
    let cfg: AmqpConfig =
        serde_json::from_value(json!({"url": "amqp://guest:guest@127.0.0.1:5673/%2f"})).unwrap();
    let backend = cfg.build("alarmed").unwrap();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let spec = ConsumerSpec {
        name: "held".into(),
        backend: "alarmed".into(),
        patterns: vec![Pattern::new("alarm.#").unwrap()],
        options: ConsumerOptions {
            durable: true,
            ..ConsumerOptions::default()
        },
        dead_letter: None,
    };
    let gated = Arc::new(Gated {
        seen: seen.clone(),
        gate: gate.clone(),
    });
    let running = start_and_fill("hubalarm", &backend, spec, gated, "alarm.before", 200).await;
    let metrics = running.metrics();
    // A memory alarm: the broker blocks every connection that publishes.
    assert!(ctl(&["set_vm_memory_high_watermark", "absolute", "1"]));
    let late = {
        let backend = backend.clone();
        tokio::spawn(async move {
            backend
                .publish(&Message::new("alarm.late", json!({"i": 200})))
                .await
        })
    };
    let blocked = r#"hub_amqp_connection_blocked{backend="alarmed"} 1"#;
    until("the blocked state shown", Duration::from_secs(20), || {
        metrics.render().contains(blocked)
    })
    .await;
    // Consuming and acknowledging go on while publishing is blocked.
    gate.add_permits(10_000);
    until("all 200 consumed", Duration::from_secs(30), || {
        seen.lock().unwrap().len() == 200
    })
    .await;
    until("all 200 acknowledged", Duration::from_secs(30), || {
        depth("hubalarm.held") == Some(0)
    })
    .await;
    assert!(
        !late.is_finished(),
        "the publish waits for the alarm to clear"
    );
    assert!(ctl(&["set_vm_memory_high_watermark", "0.4"]));
    tokio::time::timeout(Duration::from_secs(30), late)
        .await
        .expect("publishing resumed once the alarm cleared")
        .unwrap()
        .unwrap();
    until("unblocked shown", Duration::from_secs(20), || {
        metrics
            .render()
            .contains(r#"hub_amqp_connection_blocked{backend="alarmed"} 0"#)
    })
    .await;
    until("the late message consumed", Duration::from_secs(20), || {
        seen.lock().unwrap().len() == 201
    })
    .await;
    running.shutdown(Duration::from_secs(5)).await;
}

/// Takes 4 s over the first delivery of message 0, no time over anything else; counts calls per
/// message.
struct Slowpoke {
    calls: Arc<Mutex<std::collections::BTreeMap<u64, u32>>>,
}

#[async_trait]
impl Consumer for Slowpoke {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let i = msg.body()["i"].as_u64().unwrap();
        let first = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(i).or_default();
            *n += 1;
            *n == 1
        };
        if i == 0 && first {
            sleep(Duration::from_secs(4)).await;
        }
        Ok(())
    }
}

/// A delivery left unacknowledged past RabbitMQ's `consumer_timeout` makes the broker close the
/// consumer's channel (it checks on every channel tick; both are made short on this node). The
/// hub subscribes again on a new channel and goes on: the redelivered messages are handled and
/// the queue empties (it used to stop the backend, and the hub: "its channel did not recover").
/// The copies of the closed channel still queued in the hub are dropped, not handled next to
/// their redelivered twins: each message behind the slow one is handled once (each close used
/// to add a round of duplicates: 7 calls of every message, 35 calls for 5 messages; now 6). And
/// the channel is replaced on the same connection: dropping the dead channel's consumer made
/// lapin recover the whole connection (every consumer's deliveries again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_broker_closes_for_consumer_timeout_is_subscribed_again() {
    log();
    let _one_at_a_time = NODE_LOCK.lock().await;
    tokio::task::spawn_blocking(start_node).await.unwrap();
    let _node = Node;
    assert!(
        tokio::task::spawn_blocking(|| {
            ctl(&[
                "eval",
                "application:set_env(rabbit, consumer_timeout, 1000).",
            ]) && ctl(&[
                "eval",
                "application:set_env(rabbit, channel_tick_interval, 250).",
            ])
        })
        .await
        .unwrap()
    );
    let cfg: AmqpConfig =
        serde_json::from_value(json!({"url": "amqp://guest:guest@127.0.0.1:5673/%2f"})).unwrap();
    let backend = cfg.build("r").unwrap();
    // "slowpoke" on a durable queue; "passing" on the exclusive, auto-delete queue of a
    // consumer that is not durable, which the broker deletes with the channel (and what it had
    // not acknowledged with it): its copies in the hub are all there is, and are handled.
    let spec = |name: &str, topic: &str, durable: bool| ConsumerSpec {
        name: name.into(),
        backend: "r".into(),
        patterns: vec![Pattern::new(topic).unwrap()],
        options: ConsumerOptions {
            durable,
            ..ConsumerOptions::default()
        },
        dead_letter: None,
    };
    let calls = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let passing = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let running = ready(
        EngineBuilder::new("hubtimeout")
            .backend("r", Arc::clone(&backend))
            .consumer(
                spec("slowpoke", "timeout.d.#", true),
                Arc::new(Slowpoke {
                    calls: calls.clone(),
                }),
            )
            .consumer(
                spec("passing", "timeout.e.#", false),
                Arc::new(Slowpoke {
                    calls: passing.clone(),
                }),
            ),
    )
    .await;
    let connections = tokio::task::spawn_blocking(client_ports).await.unwrap();
    assert_eq!(
        connections.len(),
        2,
        "consuming and publishing: {connections:?}"
    );
    for topic in ["timeout.d.x", "timeout.e.x"] {
        for i in 0..5u64 {
            backend
                .publish(&Message::new(topic, json!({"i": i})))
                .await
                .unwrap();
        }
    }
    until(
        "every message handled, message 0 again after the channel closed",
        Duration::from_secs(30),
        || {
            let c = calls.lock().unwrap();
            c.len() == 5 && c.get(&0).is_some_and(|n| *n >= 2)
        },
    )
    .await;
    until(
        "every message of the non-durable consumer handled",
        Duration::from_secs(30),
        || passing.lock().unwrap().len() == 5,
    )
    .await;
    let empty = || depth("hubtimeout.slowpoke") == Some(0);
    until("the queue empties", Duration::from_secs(20), || {
        empty() && running.readiness().ready
    })
    .await;
    // A closed channel is replaced on the same connection: no reconnect (lapin used to
    // recover the whole consuming connection when the dead channel's consumer was dropped).
    assert_eq!(
        tokio::task::spawn_blocking(client_ports).await.unwrap(),
        connections,
        "the hub's connections were not replaced"
    );
    let calls = calls.lock().unwrap().clone();
    eprintln!(
        "calls per message: {calls:?}; not durable: {:?}",
        passing.lock().unwrap()
    );
    // Message 0 twice (its first call outlived the channel); the others once, unless a channel
    // closed between taking a copy and acknowledging it. Every close used to add a round (7
    // calls each); and lapin's recovery of the whole connection another ({0: 3, 1: 2, ...}).
    let behind: u32 = (1..5).map(|i| calls[&i]).sum();
    assert!(
        behind <= 6,
        "messages behind the slow one handled again: {calls:?}"
    );
    let text = running.metrics().render();
    let withdrawn = |consumer: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("hub_consumer_dropped_messages_total{")
                    && l.contains(r#"reason="withdrawn""#)
                    && l.contains(&format!(r#"consumer="{consumer}""#))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_default()
    };
    assert!(
        withdrawn("slowpoke") >= 4.0,
        "the closed channel's queued copies counted: {text}"
    );
    assert_eq!(
        withdrawn("passing"),
        0.0,
        "nothing withdrawn from a queue deleted with its channel: {text}"
    );
    running.shutdown(Duration::from_secs(5)).await;
}
