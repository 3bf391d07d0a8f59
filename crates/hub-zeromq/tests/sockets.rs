//! The ZeroMQ backend against real sockets on 127.0.0.1 (free ports).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hub_core::{
    BackendConfig, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, WhenFull,
    async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder, RunningEngine};
use hub_zeromq::{Format, ZeroMqConfig};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};
use zeromq::{PubSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

fn free_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("tcp://127.0.0.1:{port}")
}

#[derive(Default)]
struct Seen(Mutex<Vec<Message>>);

struct Rec(Arc<Seen>);

#[async_trait]
impl Consumer for Rec {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.0.0.lock().unwrap().push(msg.clone());
        Ok(())
    }
}

impl Seen {
    fn topics(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.topic().to_owned())
            .collect()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

struct Hub {
    running: Option<RunningEngine>,
}

impl Hub {
    async fn start(cfg: ZeroMqConfig, consumers: Vec<(&str, &[&str], Arc<Seen>)>) -> Self {
        let engine = {
            let mut b = EngineBuilder::new("t").backend("z", cfg.build("z").unwrap());
            for (name, topics, seen) in consumers {
                let spec = ConsumerSpec {
                    name: name.into(),
                    backend: "z".into(),
                    patterns: topics.iter().map(|t| Pattern::new(t).unwrap()).collect(),
                    options: ConsumerOptions {
                        when_full: WhenFull::DropOldest,
                        queue_capacity: 100_000,
                        ..Default::default()
                    },
                    dead_letter: None,
                };
                b = b.consumer(spec, Arc::new(Rec(seen)));
            }
            b.build().unwrap()
        };
        let running = engine.start().await.unwrap();
        Self {
            running: Some(running),
        }
    }

    async fn wait_ready(&self) {
        let r = self.running.as_ref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.readiness().ready {
            assert!(Instant::now() < deadline, "backend never connected");
            sleep(Duration::from_millis(10)).await;
        }
    }

    fn metric(&self, series: &str) -> Option<f64> {
        self.running.as_ref().unwrap().metrics().sample(series)
    }

    async fn stop(mut self) {
        self.running
            .take()
            .unwrap()
            .shutdown(Duration::from_secs(5))
            .await;
    }
}

fn sub_config(endpoints: &[&str]) -> ZeroMqConfig {
    ZeroMqConfig {
        subscribe: endpoints.iter().map(|e| e.to_string()).collect(),
        publish: None,
        format: Format::Fedmsg,
        username: None,
        max_message_bytes: hub_core::DEFAULT_MAX_MESSAGE_BYTES,
    }
}

fn fedmsg(topic: &str, i: u64, msg: Value) -> ZmqMessage {
    let env = json!({"topic": topic, "msg": msg, "i": i, "msg_id": format!("2026-{}", uuid_like(i)), "timestamp": 1_795_374_000, "username": "test"});
    let mut m = ZmqMessage::from(topic.to_owned());
    m.push_back(Bytes::from(env.to_string()));
    m
}

fn uuid_like(i: u64) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Publishes `make(n)` until `done()` or 10 s: PUB/SUB has a slow-joiner window, so the first
/// few messages may be lost by design; this keeps sending until the hub has seen enough.
async fn send_until(
    publisher: &mut PubSocket,
    mut make: impl FnMut(u64) -> ZmqMessage,
    done: impl Fn() -> bool,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while !done() {
        assert!(Instant::now() < deadline, "messages never arrived");
        publisher.send(make(n)).await.unwrap();
        n += 1;
        sleep(Duration::from_millis(2)).await;
    }
    n
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_and_hash_patterns_route_exactly() {
    let ep = free_endpoint();
    let mut publisher = PubSocket::new();
    publisher.bind(&ep).await.unwrap();
    let (star, hash, all) = (
        Arc::new(Seen::default()),
        Arc::new(Seen::default()),
        Arc::new(Seen::default()),
    );
    let hub = Hub::start(
        sub_config(&[&ep]),
        vec![
            ("star", &["org.*.build"], star.clone()),
            ("hash", &["org.#.done"], hash.clone()),
            ("all", &["#"], all.clone()),
        ],
    )
    .await;
    hub.wait_ready().await;
    // Warm up past the slow-joiner window with a topic only `all` wants.
    send_until(
        &mut publisher,
        |i| fedmsg("warm.up", i, json!({})),
        || all.len() > 0,
    )
    .await;
    let topics = [
        "org.a.build",
        "org.a.b.build",
        "org.done",
        "org.x.y.done",
        "org.a.build.done",
        "net.a.build",
    ];
    for (i, t) in topics.iter().enumerate() {
        publisher
            .send(fedmsg(t, 1000 + i as u64, json!({"n": i})))
            .await
            .unwrap();
    }
    publisher
        .send(fedmsg("end.marker", 2000, json!({})))
        .await
        .unwrap();
    eventually("end marker", || {
        all.topics().contains(&"end.marker".to_owned())
    })
    .await;
    assert_eq!(star.topics(), vec!["org.a.build"]);
    assert_eq!(
        hash.topics(),
        vec!["org.done", "org.x.y.done", "org.a.build.done"]
    );
    let seen = all
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|m| m.topic() == "org.x.y.done")
        .cloned()
        .unwrap();
    assert_eq!(seen.body(), &json!({"n": 3}));
    assert_eq!(seen.id(), format!("2026-{}", uuid_like(1003)));
    assert_eq!(seen.header("username"), Some(&json!("test")));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_counted_and_nothing_crashes() {
    let ep = free_endpoint();
    let mut publisher = PubSocket::new();
    publisher.bind(&ep).await.unwrap();
    let all = Arc::new(Seen::default());
    let hub = Hub::start(sub_config(&[&ep]), vec![("all", &["#"], all.clone())]).await;
    hub.wait_ready().await;
    send_until(
        &mut publisher,
        |i| fedmsg("warm.up", i, json!({})),
        || all.len() > 0,
    )
    .await;
    let good = json!({"topic": "a.b", "msg": {}, "msg_id": "2026-x", "timestamp": 1}).to_string();
    let frames = |parts: Vec<Bytes>| ZmqMessage::try_from(parts).unwrap();
    let bad = vec![
        frames(vec![Bytes::from_static(b"a.b")]),
        frames(vec![
            Bytes::from_static(b"a.b"),
            Bytes::from(good.clone()),
            Bytes::from_static(b"extra"),
        ]),
        frames(vec![
            Bytes::from_static(b"a.b"),
            Bytes::from_static(b"{oops"),
        ]),
        frames(vec![
            Bytes::from_static(b"a.\xff"),
            Bytes::from(good.clone()),
        ]),
        frames(vec![Bytes::from_static(b"a.c"), Bytes::from(good.clone())]),
    ];
    for m in bad {
        publisher.send(m).await.unwrap();
    }
    publisher
        .send(frames(vec![Bytes::from_static(b"a.b"), Bytes::from(good)]))
        .await
        .unwrap();
    eventually("the good message after the bad ones", || {
        all.topics().contains(&"a.b".to_owned())
    })
    .await;
    assert_eq!(
        hub.metric(r#"hub_backend_invalid_messages_total{backend="z"}"#),
        Some(5.0)
    );
    hub.stop().await;
}

/// `max_message_bytes`: a message over the limit is refused when its frame header arrives
/// (the publisher is disconnected, as libzmq's ZMQ_MAXMSGSIZE does, and reconnected to),
/// counted as oversized and invalid; messages under the limit flow before and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_bytes_is_refused_and_the_rest_flows() {
    let ep = free_endpoint();
    let mut publisher = PubSocket::new();
    publisher.bind(&ep).await.unwrap();
    let all = Arc::new(Seen::default());
    let mut cfg = sub_config(&[&ep]);
    cfg.max_message_bytes = 4096;
    let hub = Hub::start(cfg, vec![("all", &["#"], all.clone())]).await;
    hub.wait_ready().await;
    send_until(
        &mut publisher,
        |i| fedmsg("warm.up", i, json!({})),
        || all.len() > 0,
    )
    .await;
    // Just under the limit (both frames together) gets through; far over it does not.
    let fits = fedmsg("fits", 1, json!({"pad": "x".repeat(3800)}));
    let fits_len: usize = fits.iter().map(|f| f.len()).sum();
    assert!(fits_len <= 4096, "{fits_len}");
    publisher.send(fits).await.unwrap();
    eventually("the message under the limit", || {
        all.topics().contains(&"fits".to_owned())
    })
    .await;
    publisher
        .send(fedmsg("too.big", 2, json!({"pad": "x".repeat(1 << 20)})))
        .await
        .unwrap();
    eventually("the oversized message counted", || {
        hub.metric(r#"hub_backend_oversized_messages_total{backend="z"}"#) == Some(1.0)
    })
    .await;
    // Reconnected: later messages arrive again.
    send_until(
        &mut publisher,
        |i| fedmsg("after", 10 + i, json!({})),
        || all.topics().contains(&"after".to_owned()),
    )
    .await;
    assert!(!all.topics().contains(&"too.big".to_owned()));
    assert_eq!(
        hub.metric(r#"hub_backend_invalid_messages_total{backend="z"}"#),
        Some(1.0)
    );
    hub.stop().await;
}

/// A hostile peer that completes the ZMTP greeting and then announces a 1 TiB command frame:
/// refused when the length arrives (nothing reserved: an allocation that size would abort the
/// process), the peer disconnected, the hub unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_command_frame_is_refused_before_anything_is_buffered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ep = free_endpoint();
    let addr = ep.trim_start_matches("tcp://").to_owned();
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let all = Arc::new(Seen::default());
    let hub = Hub::start(sub_config(&[&ep]), vec![("all", &["#"], all.clone())]).await;
    let (mut peer, _) = timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the hub connects")
        .unwrap();
    // ZMTP 3.0 greeting: signature, version 3.0, mechanism NULL, as-server, filler.
    let mut greeting = vec![0xffu8, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    let mut mechanism = b"NULL".to_vec();
    mechanism.resize(20, 0);
    greeting.extend(mechanism);
    greeting.push(1);
    greeting.resize(64, 0);
    peer.write_all(&greeting).await.unwrap();
    let mut theirs = [0u8; 64];
    timeout(Duration::from_secs(5), peer.read_exact(&mut theirs))
        .await
        .expect("the hub's greeting")
        .unwrap();
    // A command frame (flags: command + long) of 1 TiB.
    let mut frame = vec![0x06u8];
    frame.extend((1u64 << 40).to_be_bytes());
    peer.write_all(&frame).await.unwrap();
    // The hub hangs up (it may first send its READY).
    let mut sink = Vec::new();
    let closed = timeout(Duration::from_secs(10), peer.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the hub did not disconnect the peer");
    // Still up: it reconnects to the endpoint by itself.
    let again = timeout(Duration::from_secs(10), listener.accept()).await;
    assert!(
        again.is_ok(),
        "the hub connects again after refusing the frame"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_publisher_is_picked_up_again() {
    let ep = free_endpoint();
    let mut publisher = PubSocket::new();
    publisher.bind(&ep).await.unwrap();
    let all = Arc::new(Seen::default());
    let hub = Hub::start(sub_config(&[&ep]), vec![("all", &["org.#"], all.clone())]).await;
    hub.wait_ready().await;
    send_until(
        &mut publisher,
        |i| fedmsg("org.before", i, json!({})),
        || all.len() >= 5,
    )
    .await;
    drop(publisher);
    sleep(Duration::from_millis(500)).await;
    let mut publisher = PubSocket::new();
    publisher.bind(&ep).await.unwrap();
    send_until(
        &mut publisher,
        |i| fedmsg("org.after", i, json!({})),
        || all.topics().contains(&"org.after".to_owned()),
    )
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_at_start_never_blocks_the_others() {
    let (up, down) = (free_endpoint(), free_endpoint());
    let mut p1 = PubSocket::new();
    p1.bind(&up).await.unwrap();
    let all = Arc::new(Seen::default());
    let hub = Hub::start(
        sub_config(&[&down, &up]),
        vec![("all", &["#"], all.clone())],
    )
    .await;
    // Ready through the endpoint that is up, while the other one is being retried.
    hub.wait_ready().await;
    send_until(
        &mut p1,
        |i| fedmsg("from.up", i, json!({})),
        || all.len() > 0,
    )
    .await;
    assert_eq!(
        hub.metric(r#"hub_backend_connected{backend="z"}"#),
        Some(1.0)
    );
    // The down endpoint comes up later and is picked up without a restart.
    sleep(Duration::from_millis(300)).await;
    let mut p2 = PubSocket::new();
    p2.bind(&down).await.unwrap();
    send_until(
        &mut p2,
        |i| fedmsg("from.late", i, json!({})),
        || all.topics().contains(&"from.late".to_owned()),
    )
    .await;
    hub.stop().await;
}

/// A PUB socket bound where the hub subscribes (`inp`), and a hub config that subscribes there
/// and publishes on `out`: `(inp, out, publisher, config)`.
async fn round_trip(username: Option<&str>) -> (String, String, PubSocket, ZeroMqConfig) {
    let (out, inp) = (free_endpoint(), free_endpoint());
    let mut publisher = PubSocket::new();
    publisher.bind(&inp).await.unwrap();
    let cfg = ZeroMqConfig {
        subscribe: vec![inp.clone()],
        publish: Some(out.clone()),
        format: Format::Fedmsg,
        username: username.map(Into::into),
        max_message_bytes: hub_core::DEFAULT_MAX_MESSAGE_BYTES,
    };
    (inp, out, publisher, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_publishes_fedmsg_envelopes_and_counts_gaps() {
    let (inp, out, mut publisher, cfg) = round_trip(Some("hubuser")).await;
    let zmq = Arc::new(hub_zeromq::ZeroMqBackend::new("z", cfg));
    let backend: Arc<dyn hub_core::Backend> = zmq.clone();
    let all = Arc::new(Seen::default());
    let engine = {
        EngineBuilder::new("t")
            .backend("z", Arc::clone(&backend))
            .consumer(
                ConsumerSpec {
                    name: "all".into(),
                    backend: "z".into(),
                    patterns: vec![Pattern::new("#").unwrap()],
                    options: ConsumerOptions::default(),
                    dead_letter: None,
                },
                Arc::new(Rec(all.clone())),
            )
            .build()
            .unwrap()
    };
    let running = engine.start().await.unwrap();
    let mut sub = SubSocket::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.connect(&out).await.is_err() {
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(50)).await;
    }
    sub.subscribe("org.out").await.unwrap();
    sleep(Duration::from_millis(300)).await;
    let mut got = None;
    for _ in 0..50 {
        backend
            .publish(&Message::new("org.out.test", json!({"hello": "world"})))
            .await
            .unwrap();
        if let Ok(Ok(m)) = timeout(Duration::from_millis(100), sub.recv()).await {
            got = Some(m);
            break;
        }
    }
    let frames = got.expect("a published message").into_vec();
    assert_eq!(frames.len(), 2);
    assert_eq!(&frames[0][..], b"org.out.test");
    let env: Value = serde_json::from_slice(&frames[1]).unwrap();
    assert_eq!(env["topic"], "org.out.test");
    assert_eq!(env["msg"], json!({"hello": "world"}));
    assert_eq!(env["username"], "hubuser");
    assert!(env["timestamp"].is_u64() && env["i"].is_u64());
    let text = std::str::from_utf8(&frames[1]).unwrap();
    assert!(text.starts_with(r#"{"i":"#), "sorted keys, compact: {text}");

    // Gaps in the fedmsg `i` sequence are counted per endpoint.
    send_until(
        &mut publisher,
        |i| fedmsg("warm", i, json!({})),
        || all.len() > 0,
    )
    .await;
    for i in [10_000u64, 10_001, 10_005, 10_006] {
        publisher.send(fedmsg("seq", i, json!({}))).await.unwrap();
    }
    eventually("sequence delivered", || {
        all.topics().iter().filter(|t| *t == "seq").count() == 4
    })
    .await;
    let stats = zmq.endpoint_stats();
    assert_eq!(stats.len(), 1);
    let (endpoint, connected, gaps) = &stats[0];
    assert_eq!((endpoint.as_str(), *connected), (inp.as_str(), true));
    // The warm-up ran 0, 1, 2, ... then jumped to 10 000: that jump restarts nothing (it grows),
    // so it counts too; the 10 001 -> 10 005 jump adds 3.
    // fedmsg's `i` of each message received on `topic`, in arrival order.
    let seqs = |topic: &str| -> Vec<u64> {
        all.0
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic() == topic)
            .filter_map(|m| m.header("i")?.as_u64())
            .collect()
    };
    let warm_last = seqs("warm").into_iter().max().unwrap();
    assert_eq!(*gaps, (10_000 - warm_last - 1) + 3, "gaps {gaps}");

    // A burst (taken from the socket in batches) arrives whole and in order, with no new gap.
    let gaps_before = *gaps;
    let burst = 10_007..30_007u64;
    for i in burst.clone() {
        publisher.send(fedmsg("burst", i, json!({}))).await.unwrap();
    }
    let burst_seen = || seqs("burst");
    eventually("burst delivered", || burst_seen().len() == 20_000).await;
    assert!(burst_seen().into_iter().eq(burst), "burst out of order");
    assert_eq!(zmq.endpoint_stats()[0].2, gaps_before);
    running.shutdown(Duration::from_secs(5)).await;
}

/// Publishes `{"from": <id>}` on `to` while handling each message.
struct Relay(&'static str);

#[async_trait]
impl Consumer for Relay {
    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        cx.publish_json(self.0, json!({ "from": msg.id() }))
            .await
            .map_err(ConsumeError::transient)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_consumer_publishes_while_handling_carries_the_correlation_id() {
    let (_, out, mut publisher, cfg) = round_trip(None).await;
    let running = EngineBuilder::new("t")
        .backend("z", cfg.build("z").unwrap())
        .consumer(
            ConsumerSpec {
                name: "relay".into(),
                backend: "z".into(),
                patterns: vec![Pattern::new("org.in").unwrap()],
                options: ConsumerOptions::default(),
                dead_letter: None,
            },
            Arc::new(Relay("org.relayed")),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut sub = SubSocket::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.connect(&out).await.is_err() {
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(50)).await;
    }
    sub.subscribe("org.relayed").await.unwrap();
    // Incoming messages that belong to a chain started by `origin-1` (fedmsg carries it in the
    // envelope's `headers`), sent until one comes back relayed.
    let mut got = None;
    for i in 0..100u64 {
        let env = json!({"topic": "org.in", "msg": {}, "i": i + 1, "msg_id": format!("2026-{}", uuid_like(i)),
            "timestamp": 1_795_374_000, "headers": {"correlation_id": "origin-1"}});
        let mut m = ZmqMessage::from("org.in".to_owned());
        m.push_back(Bytes::from(env.to_string()));
        publisher.send(m).await.unwrap();
        if let Ok(Ok(m)) = timeout(Duration::from_millis(100), sub.recv()).await {
            got = Some(m);
            break;
        }
    }
    let frames = got.expect("a relayed message").into_vec();
    let env: Value = serde_json::from_slice(&frames[1]).unwrap();
    // fedmsg's shape: inside the envelope's `headers`.
    let replied_to = env["msg"]["from"].as_str().unwrap().to_owned();
    assert!(
        replied_to.starts_with("2026-00000000-0000-4000-8000-"),
        "{env}"
    );
    assert_eq!(env["headers"]["in_reply_to"], json!(replied_to), "{env}");
    assert_eq!(env["headers"]["correlation_id"], json!("origin-1"), "{env}");
    // Read back by a hub, the correlation headers are where the hub looks for them.
    let back = hub_zeromq::codec::decode(Format::Fedmsg, &frames).unwrap();
    assert_eq!(back.header("correlation_id"), Some(&json!("origin-1")));
    assert_eq!(back.header("in_reply_to"), Some(&json!(replied_to)));
    running.shutdown(Duration::from_secs(5)).await;
}
