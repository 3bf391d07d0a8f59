//! Hostile input against the `hub` binary, with its resident memory measured: a 200 MB ZeroMQ
//! frame from a libzmq (pyzmq) publisher is refused unread; a publisher at full speed into a
//! stuck consumer leaves the hub under its `max_queued_bytes` ceiling plus the documented
//! overhead; 8 MiB AMQP bodies over `max_message_bytes` leave it bounded by its prefetch window.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

/// Peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Metrics page of the hub on `port`.
fn metrics(port: u16) -> String {
    http_get(port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// A pyzmq PUB bound on `endpoint` running `body` (Python; `sock` and `send(topic, msg)` given).
fn publisher(py: &PathBuf, endpoint: &str, body: &str) -> Proc {
    let script = format!(
        r#"
import json, sys, time, uuid, select
import zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.PUB)
sock.setsockopt(zmq.SNDHWM, 1000)
sock.setsockopt(zmq.LINGER, 0)
sock.bind({endpoint:?})
i = 0
def send(topic, msg):
    global i
    i += 1
    env = {{"topic": topic, "msg": msg, "msg_id": str(uuid.uuid4()), "timestamp": int(time.time()), "i": i, "username": "t"}}
    sock.send_multipart([topic.encode(), json.dumps(env).encode()])
def stdin_line():
    return select.select([sys.stdin], [], [], 0)[0] and sys.stdin.readline()
{body}
"#
    );
    spawn(
        Command::new(py)
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    )
}

fn start_hub(dir: &std::path::Path, config: &str) -> (Proc, u16) {
    let port = free_port();
    let cfg = write_config(
        dir,
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{config}"),
    );
    let mut child = spawn(
        hub(&["run", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_ready(port, &mut child);
    (child, port)
}

#[test]
fn a_200_mb_zeromq_frame_is_refused_unread_and_memory_stays_flat() {
    let Some(py) = interop_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("tcp://127.0.0.1:{}", free_port());
    // Small messages until told, then one of 200 MB, then small ones again until killed.
    let mut publisher = publisher(
        &py,
        &ep,
        r#"
while not stdin_line():
    send("warm.up", {})
    time.sleep(0.01)
sock.send_multipart([b"huge.one", b"x" * (200 * 1024 * 1024)])
while True:
    send("after.it", {})
    time.sleep(0.01)
"#,
    );
    let (hub, port) = start_hub(
        dir.path(),
        &format!(
            r##"
[backends.z]
type = "zeromq"
subscribe = ["{ep}"]
max_message_bytes = 1048576

[consumers.all]
type = "echo"
topics = ["#"]
when_full = "drop_oldest"
"##
        ),
    );
    let received = |topic_count: &str| {
        sample(
            &metrics(port),
            &format!(r#"hub_consumer_received_messages_total{{consumer="{topic_count}"}}"#),
        )
        .unwrap_or(0.0)
    };
    wait_until("warm-up messages", Duration::from_secs(20), || {
        received("all") > 0.0
    });
    let before = peak_rss_mib(hub.id());
    writeln!(publisher.stdin.as_mut().unwrap()).unwrap();
    wait_until("the frame refused", Duration::from_secs(30), || {
        sample(
            &metrics(port),
            r#"hub_backend_oversized_messages_total{backend="z"}"#,
        ) == Some(1.0)
    });
    let at_refusal = received("all");
    wait_until(
        "messages again after the reconnect",
        Duration::from_secs(30),
        || received("all") > at_refusal + 5.0,
    );
    let peak = peak_rss_mib(hub.id());
    eprintln!("hub peak RSS: {before:.1} MiB before the 200 MB frame, {peak:.1} MiB after");
    assert!(
        peak < before + 32.0,
        "the hub's peak RSS went from {before:.1} to {peak:.1} MiB"
    );
    let text = metrics(port);
    assert_eq!(
        sample(&text, r#"hub_backend_invalid_messages_total{backend="z"}"#),
        Some(1.0)
    );
    drop(publisher);
    let mut hub = hub;
    signal(&hub, "-TERM");
    assert!(wait_exit(&mut hub, Duration::from_secs(15)).success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(hub.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("max_message_bytes"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_publisher_at_full_speed_into_a_stuck_consumer_stays_under_the_byte_ceiling() {
    let Some(py) = interop_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("tcp://127.0.0.1:{}", free_port());
    // 10 KB bodies as fast as libzmq sends them, until killed.
    let _publisher = publisher(
        &py,
        &ep,
        r#"
pad = "x" * 10000
while True:
    send("load.n", {"pad": pad})
"#,
    );
    const CEILING_MIB: f64 = 40.0;
    let (hub, port) = start_hub(
        dir.path(),
        &format!(
            r##"
[hub]
max_queued_bytes = {}

[backends.z]
type = "zeromq"
subscribe = ["{ep}"]

[consumers.stuck]
type = "delay"
topics = ["#"]
queue_capacity = 10000000
when_full = "drop_oldest"
[consumers.stuck.settings]
delay = "1h"
"##,
            (CEILING_MIB * 1024.0 * 1024.0) as u64
        ),
    );
    let baseline = peak_rss_mib(hub.id());
    // Without the ceiling, 10 million places of 10 KB: the hub would grow without bound.
    wait_until(
        "the ceiling reached and messages dropped",
        Duration::from_secs(60),
        || {
            sample(
                &metrics(port),
                r#"hub_consumer_dropped_messages_total{consumer="stuck",reason="queue_full"}"#,
            )
            .unwrap_or(0.0)
                > 20_000.0
        },
    );
    let text = metrics(port);
    let queued = sample(&text, "hub_dispatcher_queued_bytes").unwrap();
    let received = sample(
        &text,
        r#"hub_consumer_received_messages_total{consumer="stuck"}"#,
    )
    .unwrap();
    let peak = peak_rss_mib(hub.id());
    eprintln!(
        "received {received}, queued {:.1} MiB, peak RSS {peak:.1} MiB (baseline {baseline:.1}, ceiling {CEILING_MIB})",
        queued / 1048576.0
    );
    assert!(queued <= CEILING_MIB * 1048576.0, "{queued}");
    // The documented overhead: the process itself, a read buffer, one message per consumer
    // and what the allocator keeps.
    assert!(
        peak < baseline + CEILING_MIB + 48.0,
        "peak RSS {peak:.1} MiB, baseline {baseline:.1} MiB, ceiling {CEILING_MIB} MiB"
    );
}

/// A tiny HTTP server on 127.0.0.1 answering every request with `status` (no body), counting
/// the requests; runs until the test ends.
fn http_server(status: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&hits);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let counted = std::sync::Arc::clone(&counted);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut seen = Vec::new();
                // One request per connection: read to the end of the headers and the body.
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 {status} Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
            });
        }
    });
    (port, hits)
}

/// Security: a whole run with secrets everywhere a configuration may hold one (an AMQP
/// password, HTTP header tokens and an HMAC secret from the environment, a token in a webhook
/// URL's query and one in a chat webhook's path, a PostgreSQL password in a url and one from the
/// environment, an IRC password), each
/// part failing so it logs its errors (a refused broker, a refused database, a 500 webhook, an
/// unreachable IRC server) at debug level: no secret in `hub check`'s output, any log line,
/// `/ready`, `/metrics`, or the dead letters.
#[test]
fn no_secret_reaches_logs_check_output_or_pages() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let (hook_port, hits) = http_server(500);
    let port = free_port();
    let dead = dir.path().join("dead.jsonl");
    let secrets = [
        "S3cretAmqpPw",
        "tok-Secret-123",
        "hmac-Secret-456",
        "UrlQuerySecret789",
        "WebhookPathSecret",
        "PgSecret321",
        "PgEnvSecret222",
        "IrcSecret654",
        "AdminSecret987",
    ];
    let config = write_config(
        dir.path(),
        &format!(
            r##"
[hub]
shutdown_grace = "3s"
[http]
listen = "127.0.0.1:{port}"
admin_token = {{ env = "HUB_TEST_ADMIN" }}
live_tail = 3
[backends.mem]
type = "memory"
[backends.rabbit]
type = "amqp"
url = "amqp://guest:S3cretAmqpPw@127.0.0.1:{closed}/%2f"
[resources.pg]
type = "postgres_pool"
url = "host=127.0.0.1 port={closed} user=postgres password=PgSecret321 dbname=test"
connect_timeout = "1s"
[resources.pg2]
type = "postgres_pool"
url = "host=127.0.0.1 port={closed} user=postgres dbname=test"
password = {{ env = "HUB_TEST_PG" }}
connect_timeout = "1s"
[producers.tick]
type = "ticker"
backend = "mem"
[producers.tick.settings]
topic = "org.secret.tick"
rate = 20.0
[consumers.hook]
type = "http"
backend = "mem"
topics = ["org.secret.#"]
retry = {{ max_attempts = 2, delay = "100ms" }}
dead_letter = {{ file = "{dead}" }}
[consumers.hook.settings]
url = "http://127.0.0.1:{hook_port}/hook?token=UrlQuerySecret789"
headers = {{ Authorization = {{ env = "HUB_TEST_TOKEN" }} }}
secret = {{ env = "HUB_TEST_HMAC" }}
[consumers.chat]
type = "notify"
backend = "mem"
topics = ["org.secret.#"]
retry = {{ max_attempts = 2, delay = "100ms" }}
dead_letter = {{ file = "{dead}" }}
[consumers.chat.settings]
sink = "webhook"
url = "http://127.0.0.1:{hook_port}/hooks/WebhookPathSecret"
[consumers.irc]
type = "notify"
backend = "mem"
topics = ["org.secret.#"]
retry = {{ max_attempts = 2, delay = "100ms" }}
dead_letter = {{ file = "{dead}" }}
[consumers.irc.settings]
sink = "irc"
server = "127.0.0.1"
port = {closed}
nick = "secretbot"
channel = "#secret"
password = {{ env = "HUB_TEST_IRC" }}
reconnect_delay = "100ms"
[consumers.store]
type = "postgres"
backend = "mem"
topics = ["org.secret.#"]
retry = {{ max_attempts = 2, delay = "100ms" }}
dead_letter = {{ file = "{dead}" }}
[consumers.store.settings]
pool = "pg"
[consumers.store2]
type = "postgres"
backend = "mem"
topics = ["org.secret.#"]
retry = {{ max_attempts = 2, delay = "100ms" }}
dead_letter = {{ file = "{dead}" }}
[consumers.store2.settings]
pool = "pg2"
[consumers.broker]
type = "delay"
backend = "rabbit"
topics = ["org.secret.#"]
settings = {{ delay = "1ms" }}
"##,
            dead = dead.display(),
        ),
    );
    let cfg = config.to_str().unwrap();
    let with_env = |c: &mut Command| {
        c.env("HUB_TEST_TOKEN", "Bearer tok-Secret-123")
            .env("HUB_TEST_HMAC", "hmac-Secret-456")
            .env("HUB_TEST_IRC", "IrcSecret654")
            .env("HUB_TEST_PG", "PgEnvSecret222")
            .env("HUB_TEST_ADMIN", "AdminSecret987")
            .env("RUST_LOG", "debug");
    };
    let mut text = String::new();
    for args in [
        vec!["check", "--config", cfg],
        vec!["consumers", "--config", cfg],
    ] {
        let mut c = hub(&args);
        with_env(&mut c);
        let out = c.output().unwrap();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let mut c = hub(&["run", "--config", cfg]);
    with_env(&mut c);
    let log_path = dir.path().join("run.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut p = spawn(
        c.stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file)),
    );
    wait_until("the hub serves", Duration::from_secs(20), || {
        http_get(port, "/live").is_some()
    });
    // Long enough for every part to fail a few times and dead letters to be written.
    wait_until(
        "webhook calls and dead letters",
        Duration::from_secs(20),
        || {
            hits.load(std::sync::atomic::Ordering::SeqCst) >= 10
                && std::fs::read_to_string(&dead).is_ok_and(|d| d.lines().count() >= 4)
        },
    );
    for path in [
        "/ready",
        "/metrics",
        "/live",
        "/",
        "/api/v1/status",
        "/api/v1/consumers/hook",
        "/api/v1/consumers/hook/tail",
    ] {
        if let Some((_, body)) = http_get(port, path) {
            text.push_str(&body);
        }
    }
    // API writes, refused (a wrong token) and done (the right one): logged, the token never.
    for token in ["wrong-token", "AdminSecret987"] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "POST /api/v1/consumers/hook/pause HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
        text.push_str(answer.split_once("\r\n\r\n").map_or("", |(_, b)| b));
    }
    assert!(
        text.contains("\"paused\":true"),
        "the pause with the token went through"
    );
    signal(&p, "-TERM");
    let _ = wait_exit(&mut p, Duration::from_secs(20));
    text.push_str(&std::fs::read_to_string(&log_path).unwrap());
    text.push_str(&std::fs::read_to_string(&dead).unwrap_or_default());
    assert!(text.lines().count() > 100, "a run that logged: {text}");
    // Each part did fail (so its error text is in what was searched).
    for (what, needle) in [
        ("the broker", "rabbit"),
        ("the webhook", "500"),
        ("PostgreSQL", "PostgreSQL"),
        ("IRC", "irc"),
    ] {
        assert!(text.contains(needle), "no sign of {what} in the run");
    }
    eprintln!(
        "searched {} lines of check output, logs, pages and dead letters",
        text.lines().count()
    );
    for secret in secrets {
        let at: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(secret))
            .take(3)
            .collect();
        assert!(at.is_empty(), "{secret} leaked: {at:?}");
    }
}

/// 40 bodies of 8 MiB (320 MiB in all, each under RabbitMQ's own 16 MiB limit) to a hub whose
/// AMQP backend allows 1 MiB: each refused, counted and dead-lettered with its size, and the
/// hub's memory grows by what its prefetch window holds (lapin reads a body whole: a few
/// bodies at once), never by the whole stream; a small message behind them still flows.
#[test]
fn oversized_amqp_bodies_are_dead_lettered_and_memory_stays_bounded() {
    use hub_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use hub_amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
    const BODIES: usize = 40;
    const BODY_MIB: usize = 8;
    const PREFETCH: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let u = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let name = format!("big{u}");
    let echo = dir.path().join("echo.jsonl");
    let (hub, port) = start_hub(
        dir.path(),
        &format!(
            r##"
[hub]
name = "{name}"
[backends.rabbit]
type = "amqp"
url = "{URL}"
prefetch = {PREFETCH}
max_message_bytes = 1048576

[consumers.all]
type = "echo"
topics = ["{name}.#"]
[consumers.all.settings]
path = "{echo}"
"##,
            echo = echo.display()
        ),
    );
    let before = peak_rss_mib(hub.id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(BODY_MIB << 20));
        for body in std::iter::repeat_n(big.as_bytes(), BODIES).chain([&br#"{"small": 1}"#[..]]) {
            ch.basic_publish(
                "amq.topic".into(),
                format!("{name}.x").as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        let _ = conn.close(200, "done".into()).await;
    });
    wait_until("every big body refused", Duration::from_secs(60), || {
        sample(
            &metrics(port),
            r#"hub_backend_oversized_messages_total{backend="rabbit"}"#,
        ) == Some(BODIES as f64)
    });
    wait_until("the small message echoed", Duration::from_secs(20), || {
        std::fs::read_to_string(&echo).is_ok_and(|t| t.contains("small"))
    });
    let peak = peak_rss_mib(hub.id());
    // Bodies held at once: the prefetch window, the one lapin is reading, the dead letter being
    // published; twice that for the allocator's slack.
    let bound = (2 * (PREFETCH + 2) * BODY_MIB) as f64;
    eprintln!(
        "hub peak RSS: {before:.1} MiB before {BODIES} bodies of {BODY_MIB} MiB, {peak:.1} MiB \
         after (bound: +{bound} MiB)"
    );
    assert!(
        peak < before + bound,
        "the hub's peak RSS went from {before:.1} to {peak:.1} MiB"
    );
    let dead = rt.block_on(async {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut n = 0;
        let q = format!("{name}.dead-letters");
        while let Some(m) = ch
            .basic_get(q.as_str().into(), Default::default())
            .await
            .unwrap()
        {
            let h =
                hub_amqp::wire::table_to_json(m.delivery.properties.headers().as_ref().unwrap());
            let reason = h["x-hub-reason"].as_str().unwrap_or_default().to_owned();
            assert!(
                reason.contains("over max_message_bytes (1048576)"),
                "{reason}"
            );
            n += 1;
            m.delivery.ack(Default::default()).await.unwrap();
        }
        let _ = conn.close(200, "done".into()).await;
        n
    });
    assert_eq!(dead, BODIES, "each dead-lettered once");
    let mut hub = hub;
    signal(&hub, "-TERM");
    assert!(wait_exit(&mut hub, Duration::from_secs(15)).success());
    rt.block_on(amqp_delete_queues(&[format!("{name}.dead-letters")]));
}
