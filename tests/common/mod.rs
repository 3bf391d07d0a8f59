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
pub async fn amqp_publish(topic: &str, range: std::ops::Range<u64>, mut each: impl FnMut(u64)) {
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
            "amq.topic".into(),
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
