//! Helpers shared by the tests that run the `hub` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const HUB: &str = env!("CARGO_BIN_EXE_hub");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// POSTs `body` as JSON with an optional bearer token; the status and the body of the answer.
pub fn http_post(port: u16, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let answer = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, answer.to_owned())
}

pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("hub.toml");
    std::fs::write(&p, body).unwrap();
    p
}

/// A child process killed when the test ends, even by a failed assertion.
pub struct Proc(pub Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(cmd: &mut Command) -> Proc {
    Proc(cmd.spawn().unwrap())
}

pub fn hub(args: &[&str]) -> Command {
    let mut c = Command::new(HUB);
    c.args(args)
        .env_remove("HUB_CONFIG")
        .env("RUST_LOG", "info");
    c
}

pub fn check(config: &Path) -> Output {
    hub(&["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

pub fn signal(child: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

pub fn wait_exit(child: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hub did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_ready(port: u16, child: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = http_get(port, "/ready") {
            assert!(body.contains("\"ready\":true"), "{body}");
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("hub exited early: {status}");
        }
        assert!(Instant::now() < deadline, "hub never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The shared RabbitMQ of the AMQP tests.
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Publishes `{"i": i}` for each `i` of `range` on `topic` through `amq.topic` (persistent,
/// confirmed one by one, 2 ms apart), calling `each(i)` after each confirm.
pub async fn amqp_publish(topic: &str, range: std::ops::Range<u64>, each: impl FnMut(u64)) {
    amqp_publish_to("amq.topic", topic, range, each).await;
}

/// [`amqp_publish`] through `exchange`.
pub async fn amqp_publish_to(
    exchange: &str,
    topic: &str,
    range: std::ops::Range<u64>,
    mut each: impl FnMut(u64),
) {
    use hub_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use hub_amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in range {
        let body = serde_json::to_vec(&serde_json::json!({ "i": i })).unwrap();
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        ch.basic_publish(
            exchange.into(),
            topic.into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
        each(i);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Deletes queues on the shared RabbitMQ (best effort).
pub async fn amqp_delete_queues(names: &[String]) {
    use hub_amqp::lapin::{Connection, ConnectionProperties};
    let Ok(conn) = Connection::connect(URL, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in names {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// Deletes an exchange on the shared RabbitMQ (best effort).
pub async fn amqp_delete_exchange(name: &str) {
    use hub_amqp::lapin::{Connection, ConnectionProperties};
    let Ok(conn) = Connection::connect(URL, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch.exchange_delete(name.into(), Default::default()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// Checks a consumer's books in a metrics page: `received + retries = processed (every
/// outcome) + dropped + backlog + in_flight + retry_waiting`; returns `received`.
pub fn assert_balanced(metrics: &str, consumer: &str) -> f64 {
    let get =
        |name: &str| sample(metrics, &format!("{name}{{consumer=\"{consumer}\"}}")).unwrap_or(0.0);
    let processed: f64 = ["ok", "transient", "invalid", "timeout", "panic"]
        .iter()
        .map(|o| {
            sample(
                metrics,
                &format!(
                    "hub_consumer_processed_messages_total{{consumer=\"{consumer}\",outcome=\"{o}\"}}"
                ),
            )
            .unwrap_or(0.0)
        })
        .sum();
    let received = get("hub_consumer_received_messages_total");
    let retries = get("hub_consumer_retries_total");
    let dropped: f64 = ["queue_full", "shutdown"]
        .iter()
        .map(|r| {
            sample(
                metrics,
                &format!(
                    "hub_consumer_dropped_messages_total{{consumer=\"{consumer}\",reason=\"{r}\"}}"
                ),
            )
            .unwrap_or(0.0)
        })
        .sum();
    let backlog = get("hub_consumer_backlog_messages");
    let in_flight = get("hub_consumer_in_flight_messages");
    let waiting = get("hub_consumer_retry_waiting_messages");
    assert_eq!(
        received + retries,
        processed + dropped + backlog + in_flight + waiting,
        "{consumer}: received {received} + retries {retries} = processed {processed} + dropped \
         {dropped} + backlog {backlog} + in flight {in_flight} + retry waiting {waiting}"
    );
    received
}

/// Polls `cond` every 50 ms until it holds; fails the test after `limit`, naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The interop venv's Python (pyzmq, websockets), made by `scripts/test`; `None` (the test
/// skips) outside CI when it is missing, a failure in CI.
pub fn interop_python() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("HUB_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/pyzmq-venv/bin/python"
            ))
        });
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no Python with pyzmq and websockets at {}: scripts/test creates it",
        path.display()
    );
    eprintln!("skipped: no Python with pyzmq and websockets (run scripts/test to create it)");
    None
}

/// An exec stream consumer (Python) that rejects every message with the reason "not for us";
/// written in `dir`, its path returned.
pub fn rejecting_script(dir: &Path) -> PathBuf {
    let path = dir.join("reject.py");
    std::fs::write(
        &path,
        r#"import json, sys
sys.stdout.write(json.dumps({"type": "ready", "protocol": 1}) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    if m.get("type") == "message":
        sys.stdout.write(json.dumps({"type": "reject", "id": m["id"], "reason": "not for us"}) + "\n")
        sys.stdout.flush()
"#,
    )
    .unwrap();
    path
}

/// The lines of a file (none when it does not exist).
pub fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Messages ready in queue `name` on the shared RabbitMQ (0 when it does not exist).
pub async fn amqp_ready(name: &str) -> u32 {
    use hub_amqp::lapin::options::QueueDeclareOptions;
    use hub_amqp::lapin::types::FieldTable;
    use hub_amqp::lapin::{Connection, ConnectionProperties};
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let opts = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let n = ch
        .queue_declare(name.into(), opts, FieldTable::default())
        .await
        .map_or(0, |q| q.message_count());
    let _ = conn.close(200, "bye".into()).await;
    n
}

/// Which way a [`frame_filter_proxy`] looks at frames.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Hub to broker (after the 8-byte protocol header).
    ToBroker,
    /// Broker to hub.
    ToHub,
}

/// A proxy to the test broker (127.0.0.1:5672) that passes every AMQP frame both ways, except
/// those going `direction` that the connection's own filter (made by `filter` for each
/// connection) refuses: it is given the frame's 7-byte head (type, channel, size) and the rest
/// (payload and end byte) and says whether to pass it. Returns its port.
pub async fn frame_filter_proxy<F>(
    direction: Direction,
    filter: impl Fn() -> F + Send + 'static,
) -> u16
where
    F: FnMut(&[u8; 7], &[u8]) -> bool + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((hub, _)) = listener.accept().await {
            let mut pass = filter();
            tokio::spawn(async move {
                let Ok(broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let (hr, hw) = hub.into_split();
                let (br, bw) = broker.into_split();
                let ((mut from, mut to), (mut other_from, mut other_to)) = match direction {
                    Direction::ToBroker => ((hr, bw), (br, hw)),
                    Direction::ToHub => ((br, hw), (hr, bw)),
                };
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut other_from, &mut other_to).await;
                });
                if direction == Direction::ToBroker {
                    let mut proto = [0u8; 8];
                    if from.read_exact(&mut proto).await.is_err()
                        || to.write_all(&proto).await.is_err()
                    {
                        return;
                    }
                }
                // Frames: type (1 byte), channel (2), size (4), payload (size), end (0xCE).
                loop {
                    let mut head = [0u8; 7];
                    if from.read_exact(&mut head).await.is_err() {
                        return; // one side is gone: dropping the other half closes it
                    }
                    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
                    let mut rest = vec![0u8; size + 1];
                    if from.read_exact(&mut rest).await.is_err() {
                        return;
                    }
                    if !pass(&head, &rest) {
                        continue;
                    }
                    if to.write_all(&head).await.is_err() || to.write_all(&rest).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}
