//! Scale-out on one durable AMQP queue (`scripts/bench-amqp-scale`): 1, 2 and 4 `hub`
//! processes consuming one pre-filled queue of fedora-messaging-shaped messages with a no-op
//! consumer: the total rate and each hub's share; then two hubs, one killed with SIGKILL
//! mid-stream: what was handled twice, and that nothing was lost. Prints Markdown tables.
//! `HUB_BIN` is the hub binary; `HUB_SCALE_N` the messages per run (default 100 000).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hub_amqp::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use hub_amqp::lapin::types::FieldTable;
use hub_amqp::lapin::{Channel, Connection, ConnectionProperties};
use hub_core::Message;
use serde_json::json;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const QUEUE: &str = "scale.c";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

fn processed(port: u16) -> u64 {
    let series = "hub_consumer_processed_messages_total{consumer=\"c\",outcome=\"ok\"} ";
    get(port, "/metrics")
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(series).map(str::to_owned))
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

struct Hub {
    child: Child,
    port: u16,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hub named `scale` whose consumer `c` (no-op, or `echo` to `file`) reads the durable queue.
fn start(dir: &std::path::Path, k: usize, file: Option<&std::path::Path>) -> Hub {
    let port = free_port();
    let consumer = match file {
        None => "type = \"delay\"\nsettings = { delay = \"0ms\" }".to_owned(),
        Some(f) => format!(
            "type = \"echo\"\nsettings = {{ path = \"{}\" }}",
            f.display()
        ),
    };
    let cfg = dir.join(format!("hub{k}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[hub]\nname = \"scale\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [backends.rabbit]\ntype = \"amqp\"\nurl = \"{URL}\"\nprefetch = 1000\n\
             [consumers.c]\ntopics = [\"scale.unused\"]\ndurable = true\nqueue_capacity = 2000\n{consumer}\n"
        ),
    )
    .unwrap();
    let bin = std::env::var("HUB_BIN").expect("HUB_BIN: the hub binary");
    let child = Command::new(bin)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Hub { child, port }
}

fn ready(h: &Hub) -> bool {
    get(h.port, "/ready").is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.contains(" 200 "))
}

async fn fill(ch: &Channel, n: u64) {
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_purge(QUEUE.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    let m = Message::builder(
        "org.fedoraproject.prod.bodhi.update.comment",
        json!({"pad": "x".repeat(180)}),
    )
    .header("fedora_messaging_user_alice", true)
    .build();
    let mut pending = FuturesUnordered::new();
    for i in 0..n {
        // A distinct message_id each: the duplicates run counts them.
        let m = Message::builder(m.topic(), m.body().clone())
            .id(uuid::Uuid::from_u128(u128::from(i) + 1).to_string())
            .header("fedora_messaging_user_alice", true)
            .build();
        let (props, body) = hub_amqp::wire::encode(&m);
        let c = ch
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap();
        pending.push(c);
        if pending.len() >= 1000 {
            pending.next().await.unwrap().unwrap();
        }
    }
    while let Some(c) = pending.next().await {
        c.unwrap();
    }
}

async fn depth(ch: &Channel) -> u32 {
    let opts = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(QUEUE.into(), opts, FieldTable::default())
        .await
        .map_or(u32::MAX, |q| q.message_count())
}

fn main() {
    let n: u64 = std::env::var("HUB_SCALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn = rt
        .block_on(Connection::connect(URL, ConnectionProperties::default()))
        .expect("RabbitMQ at 127.0.0.1:5672");
    let ch = rt.block_on(conn.create_channel()).unwrap();
    rt.block_on(ch.confirm_select(ConfirmSelectOptions::default()))
        .unwrap();
    println!("| hubs | messages | total rate | each hub's share |");
    println!("|---|---|---|---|");
    for k in [1usize, 2, 4] {
        rt.block_on(fill(&ch, n));
        let hubs: Vec<Hub> = (0..k).map(|i| start(dir.path(), i, None)).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !hubs.iter().any(ready) {
            assert!(Instant::now() < deadline, "no hub became ready");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t0 = Instant::now();
        loop {
            let done: u64 = hubs.iter().map(|h| processed(h.port)).sum();
            if done >= n && rt.block_on(depth(&ch)) == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{done} of {n} after 120 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs = t0.elapsed().as_secs_f64();
        let shares: Vec<String> = hubs
            .iter()
            .map(|h| format!("{:.0} %", processed(h.port) as f64 * 100.0 / n as f64))
            .collect();
        println!(
            "| {k} | {n} | {:.1} k msg/s | {} |",
            n as f64 / secs / 1e3,
            shares.join(", ")
        );
        drop(hubs);
    }

    // Two hubs writing each message they handle; one killed with SIGKILL after a third.
    rt.block_on(fill(&ch, n));
    let files = [dir.path().join("a.jsonl"), dir.path().join("b.jsonl")];
    let mut a = start(dir.path(), 10, Some(&files[0]));
    let b = start(dir.path(), 11, Some(&files[1]));
    let deadline = Instant::now() + Duration::from_secs(180);
    while processed(a.port) + processed(b.port) < n / 3 {
        assert!(Instant::now() < deadline, "too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    while rt.block_on(depth(&ch)) != 0 || processed(b.port) == 0 {
        assert!(Instant::now() < deadline, "the queue never emptied");
        std::thread::sleep(Duration::from_millis(50));
    }
    // b finishes what it holds.
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = processed(b.port);
        if now == last {
            break;
        }
        last = now;
    }
    drop(b);
    let mut lines = 0u64;
    let mut ids = HashSet::new();
    for f in &files {
        for l in std::fs::read_to_string(f).unwrap_or_default().lines() {
            lines += 1;
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            ids.insert(v["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    println!();
    println!(
        "| kill -9 of one of 2 hubs after a third (prefetch 1000) | handled | distinct | handled twice | lost |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {n} messages | {lines} | {} | {} | {} |",
        ids.len(),
        lines - ids.len() as u64,
        n - ids.len() as u64
    );
    rt.block_on(ch.queue_delete(QUEUE.into(), Default::default()))
        .ok();
    rt.block_on(ch.queue_delete("scale.dead-letters".into(), Default::default()))
        .ok();
}
