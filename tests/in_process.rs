//! Whole hubs started in this process (`HubBuilder::run` on a listener bound to port 0), each
//! with its own metrics: what the end-to-end tests check that is not the binary itself (its
//! CLI, signals and exit codes stay in `e2e.rs`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hub::{ConfigSource, Hub};
use hub_core::CancellationToken;
use hub_engine::ShutdownReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

/// A hub running on a task of this test's runtime.
struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<ShutdownReport, hub::RunError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Writes `toml` (where `{dir}` stands for a fresh temp dir) and runs it until it is ready.
    async fn start(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = toml.replace("{dir}", &dir.path().display().to_string());
        // The environment the tests run in does not change what they check.
        let config = Hub::builder()
            .stock()
            .env_overrides(false)
            .check(&ConfigSource::Text(text))
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let until = stop.clone();
        let hub = Hub::builder().stock().env_overrides(false);
        let task = tokio::spawn(hub.run(config, listener, async move {
            until.cancelled().await;
        }));
        let running = Self {
            addr,
            stop,
            task,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, body)) = running.get("/ready").await {
                assert!(body.contains("\"ready\":true"), "{body}");
                return running;
            }
            assert!(
                !running.task.is_finished(),
                "hub stopped before it was ready"
            );
            assert!(Instant::now() < deadline, "hub never became ready");
            sleep(Duration::from_millis(20)).await;
        }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, None).await
    }

    /// One HTTP/1.0 request (with `Authorization: Bearer token` when given): status and body,
    /// `None` when the hub does not answer within 5 s.
    async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(self.addr).await.ok()?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let length = if method == "POST" {
            "Content-Length: 0\r\n"
        } else {
            ""
        };
        s.write_all(
            format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}{length}\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
            .await
            .ok()?
            .ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    }

    /// `POST path` with `Authorization: Bearer token` when given; (status, JSON body).
    async fn post(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let (status, body) = self.request("POST", path, token).await.expect("answers");
        (status, serde_json::from_str(&body).unwrap_or_default())
    }

    /// `GET path` with `Authorization: Bearer token`, as JSON (200 expected).
    async fn get_with_token(&self, path: &str, token: &str) -> serde_json::Value {
        let (status, body) = self
            .request("GET", path, Some(token))
            .await
            .expect("answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `GET path` as JSON (200 expected).
    async fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path).await.expect("answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200);
        body
    }

    /// Stops it (drain included) and returns its report, and its dir (kept until dropped).
    async fn stop(self) -> (ShutdownReport, tempfile::TempDir) {
        self.stop.cancel();
        let report = tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the hub stops within 20 s")
            .unwrap()
            .unwrap();
        (report, self._dir)
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    hub_engine::metrics::sample(text, series)
}

fn free_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("tcp://127.0.0.1:{port}")
}

fn ticker_hub(consumer: &str, rate: u32) -> String {
    format!(
        r#"
[hub]
name = "{consumer}"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
settings = {{ topic = "t.tick", rate = {rate}.0 }}
[consumers.{consumer}]
type = "delay"
topics = ["t.#"]
settings = {{ delay = "0ms" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_in_one_process_each_with_its_own_metrics() {
    let fast = Running::start(&ticker_hub("fast", 400)).await;
    let slow = Running::start(&ticker_hub("slow", 20)).await;
    assert_ne!(fast.addr, slow.addr);
    sleep(Duration::from_millis(1000)).await;
    let (f, s) = (fast.metrics().await, slow.metrics().await);
    let received = |text: &str, c: &str| {
        sample(
            text,
            &format!(r#"hub_consumer_received_messages_total{{consumer="{c}"}}"#),
        )
    };
    let (nf, ns) = (received(&f, "fast").unwrap(), received(&s, "slow").unwrap());
    assert!(ns >= 1.0, "the slow hub counted its own messages: {s}");
    assert!(
        nf > 4.0 * ns,
        "fast {nf} vs slow {ns}: each hub counts only its own"
    );
    // Each registry holds only its own hub's series.
    assert_eq!(received(&f, "slow"), None, "{f}");
    assert_eq!(received(&s, "fast"), None, "{s}");
    fast.stop().await;
    slow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_backlog_grows_and_a_stop_drains_in_order() {
    let hub = Running::start(
        r#"
[hub]
name = "flow"
shutdown_grace = "8s"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
[producers.tick.settings]
topic = "org.e2e.tick"
rate = 200.0
[consumers.fast]
type = "echo"
topics = ["org.e2e.#"]
[consumers.fast.settings]
path = "{dir}/fast.jsonl"
[consumers.slow]
type = "delay"
topics = ["org.*.tick"]
queue_capacity = 50
when_full = "drop_oldest"
[consumers.slow.settings]
delay = "20ms"
"#,
    )
    .await;
    sleep(Duration::from_millis(1500)).await;
    let first = hub.metrics().await;
    sleep(Duration::from_millis(500)).await;
    let second = hub.metrics().await;
    let received = |t: &str| {
        sample(
            t,
            r#"hub_consumer_received_messages_total{consumer="fast"}"#,
        )
        .unwrap()
    };
    assert!(received(&first) > 100.0, "{first}");
    assert!(received(&second) > received(&first), "counters must rise");
    let gauge =
        |name: &str, c: &str| sample(&second, &format!(r#"{name}{{consumer="{c}"}}"#)).unwrap();
    let slow_backlog = gauge("hub_consumer_backlog_messages", "slow");
    assert!(slow_backlog > 10.0, "slow backlog {slow_backlog}");
    assert!(gauge("hub_consumer_backlog_messages", "fast") <= 5.0);
    assert!(gauge("hub_consumer_oldest_message_age_seconds", "slow") > 0.0);
    assert!(gauge("hub_consumer_catch_up_seconds", "slow") > 0.0);
    assert!(
        sample(
            &second,
            r#"hub_consumer_dropped_messages_total{consumer="slow",reason="queue_full"}"#
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        sample(&second, r#"hub_backend_connected{backend="mem"}"#),
        Some(1.0)
    );
    assert!(second.contains(
        "hub_consumer_processing_duration_seconds_bucket{consumer=\"fast\",le=\"0.001\"}"
    ));
    assert_eq!(hub.get("/live").await.unwrap().0, 200);

    let echo = hub.dir().join("fast.jsonl");
    let t = Instant::now();
    let (report, _dir) = hub.stop().await;
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "drain took {:?}",
        t.elapsed()
    );
    assert!(
        report.drain.is_clean(),
        "every queued message finished: {report:?}"
    );
    // Every message the fast consumer finished is in the file, in order, with no gap.
    let lines = std::fs::read_to_string(&echo).unwrap();
    let seqs: Vec<u64> = lines
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["topic"], "org.e2e.tick");
            v["body"]["seq"].as_u64().unwrap()
        })
        .collect();
    assert!(
        seqs.len() as f64 >= received(&second),
        "{} lines",
        seqs.len()
    );
    assert!(
        seqs.iter().copied().eq(0..seqs.len() as u64),
        "gap or reorder in echo output"
    );
}

/// `promtool check metrics` (Debian's prometheus package; scripts/test installs it) on a live
/// hub's `/metrics` with a memory, a ZeroMQ and an AMQP backend, each with traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_wrong_in_a_live_metrics_page() {
    let u = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let zmq = free_endpoint();
    let hub = Running::start(&format!(
        r#"
[hub]
name = "prom{u}"
[backends.mem]
type = "memory"
[backends.bus]
type = "zeromq"
publish = "{zmq}"
subscribe = ["{zmq}"]
[backends.rabbit]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
[producers.mem_tick]
type = "ticker"
backend = "mem"
settings = {{ topic = "m.tick", rate = 100.0 }}
[producers.bus_tick]
type = "ticker"
backend = "bus"
settings = {{ topic = "z.tick", rate = 100.0 }}
[producers.rabbit_tick]
type = "ticker"
backend = "rabbit"
settings = {{ topic = "prom{u}.tick", rate = 50.0 }}
[consumers.on_mem]
type = "delay"
backend = "mem"
topics = ["m.#"]
settings = {{ delay = "0ms" }}
[consumers.throttled]
type = "delay"
backend = "mem"
topics = ["m.#"]
rate_limit = {{ rate = 20, burst = 1 }}
retry = {{ max_attempts = 2, delay = "10ms" }}
dead_letter = {{ topic = "dead.m" }}
settings = {{ delay = "0ms" }}
[consumers.on_bus]
type = "delay"
backend = "bus"
topics = ["z.#"]
settings = {{ delay = "0ms" }}
[consumers.on_rabbit]
type = "delay"
backend = "rabbit"
topics = ["prom{u}.#"]
settings = {{ delay = "1ms" }}
"#
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = hub.metrics().await;
        let got = |c: &str| {
            sample(
                &text,
                &format!(r#"hub_consumer_received_messages_total{{consumer="{c}"}}"#),
            )
            .unwrap_or(0.0)
        };
        let throttled = sample(
            &text,
            r#"hub_consumer_throttled_seconds_total{consumer="throttled"}"#,
        )
        .unwrap_or(0.0);
        if ["on_mem", "on_bus", "on_rabbit"]
            .iter()
            .all(|c| got(c) > 0.0)
            && throttled > 0.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "traffic on every backend: {text}"
        );
        sleep(Duration::from_millis(100)).await;
    };
    for family in [
        "hub_zeromq_endpoint_connected",
        "hub_amqp_queue_messages",
        "hub_consumer_processing_duration_seconds",
        "hub_consumer_throttled_seconds_total",
        "hub_consumer_retries_total",
        "hub_consumer_retry_waiting_messages",
        "hub_consumer_dead_letters_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: {text}"
        );
    }
    let out = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map(|mut child| {
            let mut stdin = child.stdin.take().unwrap();
            let text = text.clone();
            tokio::spawn(async move {
                let _ = stdin.write_all(text.as_bytes()).await;
            });
            child
        })
        .expect("promtool is installed (scripts/test installs Debian's prometheus package)")
        .wait_with_output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
    // The rate limit end to end: over a second, the throttled consumer's waiting time grows and
    // it takes at most its 20 a second (plus the burst of 1), while `on_mem`, on the same
    // stream (100 a second), is not slowed: its queue stays empty and it takes them all.
    let read = |text: &str, series: &str, c: &str| {
        sample(text, &format!(r#"{series}{{consumer="{c}"}}"#)).unwrap_or(f64::NAN)
    };
    let before = hub.metrics().await;
    let t0 = Instant::now();
    sleep(Duration::from_millis(1500)).await;
    let after = hub.metrics().await;
    let secs = t0.elapsed().as_secs_f64();
    let grew = |series: &str, c: &str| read(&after, series, c) - read(&before, series, c);
    let throttled = grew("hub_consumer_throttled_seconds_total", "throttled");
    let free = grew("hub_consumer_received_messages_total", "on_mem");
    assert!(throttled > 0.5, "throttled time grew by {throttled}s");
    assert!(
        read(&after, "hub_consumer_backlog_messages", "throttled") > 0.0,
        "the throttled consumer's messages wait in its queue"
    );
    let done = sample(
        &after,
        r#"hub_consumer_processed_messages_total{consumer="throttled",outcome="ok"}"#,
    )
    .unwrap_or(f64::NAN)
        - sample(
            &before,
            r#"hub_consumer_processed_messages_total{consumer="throttled",outcome="ok"}"#,
        )
        .unwrap_or(f64::NAN);
    assert!(done <= 20.0 * secs + 2.0, "{done} in {secs:.2}s at 20/s");
    assert!(free >= 60.0 * secs, "on_mem took {free} in {secs:.2}s");
    assert_eq!(read(&after, "hub_consumer_backlog_messages", "on_mem"), 0.0);
    hub.stop().await;
}

/// A consumer type that needs a `Greeting` resource (made asynchronously by the program).
mod needs_greeting {
    use std::sync::Arc;

    use hub_core::{
        BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Message, Resources, async_trait,
    };

    pub struct Greeting(pub String);

    #[derive(serde::Deserialize)]
    pub struct Config {}

    struct Greeter;

    #[async_trait]
    impl Consumer for Greeter {
        async fn consume(&self, _: &Context, _: &Message) -> Result<(), ConsumeError> {
            Ok(())
        }
    }

    impl ConsumerConfig for Config {
        const TYPE: &'static str = "greets";
        fn build(self, resources: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
            let greeting = resources.require::<Greeting>()?;
            if greeting.0.is_empty() {
                return Err("an empty greeting".into());
            }
            Ok(Arc::new(Greeter))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_resource_is_made_before_the_configuration_is_checked() {
    let config = ConfigSource::Text(
        "[backends.mem]\ntype = \"memory\"\n[consumers.g]\ntype = \"greets\"\ntopics = [\"#\"]\n"
            .into(),
    );
    let builder = || {
        Hub::builder()
            .env_overrides(false)
            .consumer::<needs_greeting::Config>()
            .resource_async(|| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(needs_greeting::Greeting("hello".into()))
            })
    };
    // Not prepared: the resource is not there, and `check` says which type is missing.
    let err = builder()
        .check(&config)
        .err()
        .expect("missing resource")
        .to_string();
    assert!(
        err.contains("consumers.g.settings") && err.contains("Greeting` is registered"),
        "{err}"
    );
    // Prepared: made once, then found by the consumer's build.
    let prepared = builder().prepare().await.unwrap();
    prepared.check(&config).unwrap_or_else(|e| panic!("{e}"));
}

/// The HTTP server's bounds: at most `max_connections` served at once (an idle flood waits, the
/// hub answers again once one closes), a request body over `max_body_bytes` gets 413, and a
/// head over hyper's bounds (100 headers, about 400 KiB) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_server_bounds_connections_and_body_sizes() {
    let hub = Running::start(
        r#"
[http]
max_connections = 2
max_body_bytes = 64
idle_timeout = "2s"
[backends.mem]
type = "memory"
[consumers.c]
type = "delay"
topics = ["x.#"]
settings = { delay = "0ms" }
"#,
    )
    .await;
    // Two idle connections hold both places.
    let a = TcpStream::connect(hub.addr).await.unwrap();
    let b = TcpStream::connect(hub.addr).await.unwrap();
    sleep(Duration::from_millis(200)).await;
    let waiting = tokio::spawn({
        let addr = hub.addr;
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /live HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).await.unwrap();
            text
        }
    });
    sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection was served");
    drop(a);
    let text = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a place was free")
        .unwrap();
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    drop(b);
    // A body over the limit.
    let mut s = TcpStream::connect(hub.addr).await.unwrap();
    let body = "x".repeat(1000);
    s.write_all(
        format!(
            "POST /dead-letters/requeue HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    assert!(text.starts_with("HTTP/1.0 413"), "{text}");
    // Headers: more than 100, or a head of more than about 400 KiB, is refused (hyper's
    // bounds): 431, or the connection closed, never served and never buffered without end.
    let refused = |request: String| async move {
        let mut s = TcpStream::connect(hub.addr).await.unwrap();
        // The server may answer and close before it read everything: a write error is fine.
        let _ = s.write_all(request.as_bytes()).await;
        let mut text = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut text))
            .await
            .expect("answered or closed at once");
        String::from_utf8_lossy(&text).into_owned()
    };
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let text = refused(format!(
        "GET /live HTTP/1.1\r\nHost: localhost\r\n{many}\r\n"
    ))
    .await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "200 headers: {text}"
    );
    let huge = "y".repeat(1 << 20);
    let text = refused(format!(
        "GET /live HTTP/1.1\r\nHost: localhost\r\nX-Big: {huge}\r\n\r\n"
    ))
    .await;
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "a 1 MiB header: {}",
        &text[..text.len().min(200)]
    );
    // And the server still answers.
    let text = refused("GET /live HTTP/1.0\r\nHost: localhost\r\n\r\n".into()).await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    // Idle connections do not hold the places for ever: after `idle_timeout` they are closed
    // and a waiting client is served, with no help from the idle ones.
    let mut idle_a = TcpStream::connect(hub.addr).await.unwrap();
    let _idle_b = TcpStream::connect(hub.addr).await.unwrap();
    sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let text = refused("GET /live HTTP/1.0\r\nHost: localhost\r\n\r\n".into()).await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "served at once: {:?}",
        t.elapsed()
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle_a.read(&mut buf))
        .await
        .expect("the idle connection was closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    hub.stop().await;
}

/// The JSON API: the status and history shapes, pause and resume with the admin token (a
/// paused consumer's count stops while its queue fills; resume goes on), writes refused
/// without it (401) and on a hub without one (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_shows_status_and_history_and_pauses_with_the_token() {
    let hub = Running::start(
        r#"
[hub]
name = "apitest"
shutdown_grace = "1s"
[http]
admin_token = "tok-Api-123"
live_tail = 5
live_tail_bytes = 20
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
[producers.tick.settings]
topic = "org.api.tick"
rate = 100.0
[consumers.fast]
type = "delay"
topics = ["org.api.#"]
queue_capacity = 100000
settings = { delay = "0ms" }
[consumers.slow]
type = "delay"
topics = ["org.api.#"]
queue_capacity = 100000
settings = { delay = "50ms" }
"#,
    )
    .await;
    sleep(Duration::from_millis(2500)).await;
    let status = hub.json("/api/v1/status").await;
    assert_eq!(status["api"], "v1");
    assert_eq!(status["hub"]["name"], "apitest");
    assert_eq!(status["hub"]["writable"], true);
    assert_eq!(status["backends"][0]["id"], "mem");
    assert_eq!(status["backends"][0]["connected"], true);
    assert_eq!(status["backends"][0]["outages"], serde_json::json!([]));
    let consumers = status["consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 2);
    let by = |v: &serde_json::Value, id: &str| -> serde_json::Value {
        v["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap()
    };
    let fast = by(&status, "fast");
    assert_eq!(fast["type"], "delay");
    assert_eq!(fast["topics"], serde_json::json!(["org.api.#"]));
    assert_eq!(fast["state"], "running");
    assert_eq!(fast["backlog"], 0);
    assert!(fast["outcomes"]["ok"].as_u64().unwrap() > 100, "{fast}");
    assert!(fast["in_per_s"].as_f64().unwrap() > 0.0, "{fast}");
    let slow = by(&status, "slow");
    assert!(
        slow["backlog"].as_u64().unwrap() > 50,
        "the slow one falls behind: {slow}"
    );
    assert!(slow["oldest_age_s"].as_f64().unwrap() > 0.5, "{slow}");
    // History: one sample a second so far.
    let one = hub.json("/api/v1/consumers/slow").await;
    let fine = one["history"]["fine"]["samples"].as_array().unwrap();
    assert!(fine.len() >= 2, "{one}");
    assert!(fine.last().unwrap()["backlog"].as_u64().unwrap() > 0);
    assert_eq!(one["history"]["coarse"]["resolution_s"], 10);
    assert_eq!(hub.get("/api/v1/consumers/nobody").await.unwrap().0, 404);
    // The live tail: with an admin token set, it needs the token (bodies can be private).
    let (code, _) = hub.get("/api/v1/consumers/fast/tail").await.unwrap();
    assert_eq!(code, 401);
    // The last five, newest first, each text cut to 20 bytes.
    let tail = hub
        .get_with_token("/api/v1/consumers/fast/tail", "tok-Api-123")
        .await;
    let messages = tail["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5, "{tail}");
    for m in messages {
        assert_eq!(m["topic"], "org.api.tick");
        assert!(m["body"].as_str().unwrap().len() <= 20, "{m}");
        assert_eq!(m["truncated"], true, "{m}");
        assert!(m["body_bytes"].as_u64().unwrap() > 20, "{m}");
    }
    assert!(
        messages[0]["timestamp"].as_str().unwrap() >= messages[4]["timestamp"].as_str().unwrap(),
        "newest first: {tail}"
    );

    // Writes need the token.
    let (code, body) = hub.post("/api/v1/consumers/fast/pause", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = hub
        .post("/api/v1/consumers/fast/pause", Some("wrong"))
        .await;
    assert_eq!(code, 401);
    let (code, body) = hub
        .post("/api/v1/consumers/fast/pause", Some("tok-Api-123"))
        .await;
    assert_eq!(
        (code, &body["paused"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );
    sleep(Duration::from_millis(300)).await;
    let ok_at = |v: &serde_json::Value| by(v, "fast")["outcomes"]["ok"].as_u64().unwrap();
    let a = hub.json("/api/v1/status").await;
    sleep(Duration::from_millis(700)).await;
    let b = hub.json("/api/v1/status").await;
    assert_eq!(ok_at(&a), ok_at(&b), "a paused consumer finishes nothing");
    assert_eq!(by(&b, "fast")["state"], "paused");
    assert!(
        by(&b, "fast")["backlog"].as_u64().unwrap() > by(&a, "fast")["backlog"].as_u64().unwrap()
    );
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("hub_consumer_paused{consumer=\"fast\"} 1"),
        "{metrics}"
    );
    let (code, _) = hub
        .post("/api/v1/consumers/fast/resume", Some("tok-Api-123"))
        .await;
    assert_eq!(code, 200);
    sleep(Duration::from_millis(500)).await;
    let c = hub.json("/api/v1/status").await;
    assert!(ok_at(&c) > ok_at(&b), "resumed");
    assert_eq!(by(&c, "fast")["state"], "running");
    let (code, _) = hub
        .post("/api/v1/consumers/nobody/pause", Some("tok-Api-123"))
        .await;
    assert_eq!(code, 404);
    hub.stop().await;

    // A hub without a token is read-only.
    let ro = Running::start(
        r#"
[backends.mem]
type = "memory"
[consumers.c]
type = "delay"
topics = ["x.#"]
settings = { delay = "0ms" }
"#,
    )
    .await;
    let (code, body) = ro.post("/api/v1/consumers/c/pause", Some("anything")).await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin_token"));
    assert_eq!(ro.json("/api/v1/status").await["hub"]["writable"], false);
    let (code, body) = ro.get("/api/v1/consumers/c/tail").await.unwrap();
    assert_eq!(code, 404, "the live tail is off by default: {body}");
    assert!(body.contains("live_tail"), "{body}");
    ro.stop().await;
}

/// `hub top` in a real terminal (tmux): the table shows the consumers and their numbers, `p`
/// pauses the selected consumer with the token, and `q` exits 0 with the terminal restored
/// (the normal screen back, canonical mode on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_top_shows_the_consumers_pauses_resumes_sorts_and_q_restores_the_terminal() {
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is missing: scripts/test installs it"
        );
        eprintln!("skipped: no tmux");
        return;
    }
    let hub = Running::start(
        r#"
[hub]
shutdown_grace = "1s"
[http]
admin_token = "tok-Top-7"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
[producers.tick.settings]
topic = "org.top.tick"
rate = 50.0
[consumers.alpha]
type = "delay"
topics = ["org.top.#"]
settings = { delay = "0ms" }
[consumers.beta]
type = "delay"
topics = ["org.top.#"]
queue_capacity = 100000
settings = { delay = "50ms" }
"#,
    )
    .await;
    let session = format!("hubtop{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .unwrap()
    };
    let command = format!(
        "{} top --url http://{} --token tok-Top-7; echo \"exit=$?\"; stty -a | grep -o -- '-\\?icanon'; sleep 30",
        env!("CARGO_BIN_EXE_hub"),
        hub.addr
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "150",
        "-y",
        "20",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-t", &session, "-p"]).stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut text = screen();
    while !(text.contains("alpha") && text.contains("beta") && text.contains("running")) {
        assert!(Instant::now() < deadline, "no table: {text}");
        sleep(Duration::from_millis(200)).await;
        text = screen();
    }
    assert!(
        text.contains("backlog") && text.contains("catch-up"),
        "{text}"
    );
    // Sorted by name, alpha is selected: p pauses it.
    tmux(&["send-keys", "-t", &session, "p"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !screen().contains("paused alpha") {
        assert!(Instant::now() < deadline, "not paused: {}", screen());
        sleep(Duration::from_millis(200)).await;
    }
    let status = hub.json("/api/v1/status").await;
    assert_eq!(status["consumers"][0]["paused"], true, "{status}");
    // r resumes it.
    tmux(&["send-keys", "-t", &session, "r"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !screen().contains("resumed alpha") {
        assert!(Instant::now() < deadline, "not resumed: {}", screen());
        sleep(Duration::from_millis(200)).await;
    }
    let status = hub.json("/api/v1/status").await;
    assert_eq!(status["consumers"][0]["paused"], false, "{status}");
    // s sorts by backlog: beta (behind) above alpha (caught up again), and the first row,
    // now beta, is the one p pauses.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = hub.json("/api/v1/status").await;
        if s["consumers"][0]["backlog"] == 0 && s["consumers"][1]["backlog"].as_u64() > Some(5) {
            break;
        }
        assert!(Instant::now() < deadline, "alpha never caught up: {s}");
        sleep(Duration::from_millis(100)).await;
    }
    tmux(&["send-keys", "-t", &session, "s"]);
    let row = |text: &str, name: &str| {
        text.lines().position(|l| {
            l.trim_start_matches(['│', ' ', '>'])
                .starts_with(&format!("{name} "))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = screen();
    while !(text.contains("sorted by backlog")
        && matches!((row(&text, "beta"), row(&text, "alpha")), (Some(b), Some(a)) if b < a))
    {
        assert!(Instant::now() < deadline, "not sorted by backlog: {text}");
        sleep(Duration::from_millis(200)).await;
        text = screen();
    }
    tmux(&["send-keys", "-t", &session, "p"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !screen().contains("paused beta") {
        assert!(Instant::now() < deadline, "beta not paused: {}", screen());
        sleep(Duration::from_millis(200)).await;
    }
    let status = hub.json("/api/v1/status").await;
    assert_eq!(status["consumers"][1]["paused"], true, "{status}");
    tmux(&["send-keys", "-t", &session, "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = screen();
    // The exit status, then stty's line (a moment later): wait for both.
    while !(text.contains("exit=") && text.contains("icanon")) {
        assert!(Instant::now() < deadline, "hub top did not quit: {text}");
        sleep(Duration::from_millis(200)).await;
        text = screen();
    }
    tmux(&["kill-server"]);
    assert!(text.contains("exit=0"), "{text}");
    assert!(
        !text.contains("consumers ·"),
        "the normal screen is back: {text}"
    );
    assert!(
        text.lines().any(|l| l.trim() == "icanon"),
        "the terminal left raw mode: {text}"
    );
    hub.stop().await;
}

/// `GET /api/v1/consumers/{id}/dead-letters`: a consumer writing to a dead-letter file shows
/// its count, its newest letters (no bodies) and the `hub dead` commands; one without a sink
/// says so; an unknown one is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letters_endpoint_shows_what_hub_dead_offers() {
    let hub = Running::start(
        r#"
[hub]
name = "deadtest"
shutdown_grace = "1s"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
[producers.tick.settings]
topic = "org.dead.tick"
rate = 50.0
body = { secret = "body-Secret-7" }
[consumers.picky]
type = "exec"
topics = ["org.dead.#"]
dead_letter = { file = "{dir}/dead.jsonl" }
settings = { command = ["python3", "-c", "import json,sys\nprint(json.dumps({'type':'ready','protocol':1}),flush=True)\nfor l in sys.stdin:\n m=json.loads(l)\n if m.get('type')=='message': print(json.dumps({'type':'reject','id':m['id'],'reason':'seq %d refused' % m['body']['seq']}),flush=True)"] }
[consumers.quiet]
type = "delay"
topics = ["org.dead.#"]
settings = { delay = "0ms" }
"#,
    )
    .await;
    let file = hub.dir().join("dead.jsonl");
    let lines = || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count() as u64
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines() < 10 {
        assert!(Instant::now() < deadline, "no dead letters written");
        sleep(Duration::from_millis(50)).await;
    }
    let before = lines();
    let d = hub
        .json("/api/v1/consumers/picky/dead-letters?limit=3")
        .await;
    let after = lines();
    assert_eq!(d["kind"], "file", "{d}");
    assert_eq!(d["path"], file.display().to_string());
    let count = d["count"].as_u64().unwrap();
    assert!(
        (before..=after).contains(&count),
        "{count} letters counted, the file had {before} then {after}"
    );
    assert_eq!(d["unreadable_lines"], 0);
    let newest = d["newest"].as_array().unwrap();
    assert_eq!(newest.len(), 3, "{d}");
    // Newest first: the reasons name descending sequence numbers.
    let seqs: Vec<u64> = newest
        .iter()
        .map(|l| {
            let r = l["reason"].as_str().unwrap();
            assert!(r.contains("refused"), "{r}");
            assert_eq!(l["topic"], "org.dead.tick");
            assert_eq!(l["attempts"], 1);
            assert!(l["id"].as_str().is_some_and(|id| !id.is_empty()));
            r.split_whitespace().find_map(|w| w.parse().ok()).unwrap()
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    assert!(!d.to_string().contains("body-Secret-7"), "no bodies: {d}");
    let commands = &d["commands"];
    assert!(
        commands["list"]
            .as_str()
            .unwrap()
            .starts_with("hub dead list picky --config "),
        "{commands}"
    );
    assert!(
        commands["requeue"]
            .as_str()
            .unwrap()
            .starts_with("hub dead requeue picky"),
        "{commands}"
    );
    // The limit is capped; 0 counts without listing.
    let all = hub
        .json("/api/v1/consumers/picky/dead-letters?limit=100000")
        .await;
    assert!(all["newest"].as_array().unwrap().len() <= 200);
    let none = hub
        .json("/api/v1/consumers/picky/dead-letters?limit=0")
        .await;
    assert_eq!(none["newest"], serde_json::json!([]));
    assert!(none["count"].as_u64().unwrap() >= count);
    // The status names each consumer's kind of sink.
    let status = hub.json("/api/v1/status").await;
    let kinds: Vec<(String, String)> = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["dead_letters"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("picky".into(), "file".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("quiet".into(), "none".into())),
        "{kinds:?}"
    );
    let q = hub.json("/api/v1/consumers/quiet/dead-letters").await;
    assert_eq!(q["kind"], "none");
    assert!(q["note"].as_str().unwrap().contains("no dead-letter sink"));
    let (status, body) = hub
        .get("/api/v1/consumers/nobody/dead-letters")
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    hub.stop().await;
}

/// A request whose `Host` names a site other than the hub (DNS rebinding: a page on another
/// site pointing its name at 127.0.0.1) is refused on a loopback hub; IP literals and
/// `localhost` are answered, and `[http] allowed_hosts` adds names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_hub_refuses_other_host_names() {
    async fn with_host(addr: SocketAddr, host: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /api/v1/status HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, text.split_once("\r\n\r\n").unwrap().1.to_owned())
    }
    let plain = Running::start("[backends.mem]\ntype = \"memory\"\n").await;
    let port = plain.addr.port();
    for ok in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "127.0.0.1".into(),
    ] {
        assert_eq!(with_host(plain.addr, &ok).await.0, 200, "{ok}");
    }
    let (status, body) = with_host(plain.addr, &format!("rebind.example:{port}")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allowed_hosts"), "{body}");
    plain.stop().await;
    let listed = Running::start(
        "[http]\nallowed_hosts = [\"hub.example.org\"]\n[backends.mem]\ntype = \"memory\"\n",
    )
    .await;
    assert_eq!(with_host(listed.addr, "hub.example.org:80").await.0, 200);
    assert_eq!(with_host(listed.addr, "127.0.0.1").await.0, 200);
    assert_eq!(with_host(listed.addr, "rebind.example").await.0, 403);
    listed.stop().await;
}
