//! Exec consumers: messages per second through the hub, beside a raw baseline in the same run.
//! Run: `scripts/bench-exec` (= `cargo bench -p hub-exec --bench exec`); prints a table.
//!
//! - stream mode, `examples/exec/ack_all.py` (parse the line, answer ack), at concurrency 1
//!   and 8, through the whole hub (test kit: memory backend, dispatcher, worker, the stream
//!   consumer); raw: the same lines written into the same script over a pipe and its answers
//!   read, with no hub, at most 1 (or 8) lines ahead of the answers.
//! - per-message mode with `/bin/true`: process spawns per second (raw: spawning `/bin/true`
//!   from tokio in a loop, the same concurrency).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use hub_core::{ConsumerOptions, Message, Resources, json};
use hub_exec::ExecConfig;
use hub_testkit::{TestHub, build_consumer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const ACK_ALL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/exec/ack_all.py"
);

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn line(i: usize) -> String {
    let m = json!({"type": "message", "id": format!("m{i}"), "topic": "org.example.build",
        "timestamp": "2026-12-04T12:00:00Z", "headers": {}, "body": {"build": i, "name": "kernel"},
        "attempt": 1});
    format!("{m}\n")
}

/// The script fed directly: `window` lines ahead of its answers at most.
async fn raw_stream(n: usize, window: usize) -> f64 {
    let mut child = tokio::process::Command::new("python3")
        .arg(ACK_ALL)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut answers = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin
        .write_all(b"{\"type\":\"hello\",\"protocol\":1,\"consumer\":\"raw\",\"concurrency\":1}\n")
        .await
        .unwrap();
    answers.next_line().await.unwrap();
    let lines: Vec<String> = (0..n).map(line).collect();
    let start = Instant::now();
    let (mut sent, mut got) = (0, 0);
    while got < n {
        while sent < n && sent - got < window {
            stdin.write_all(lines[sent].as_bytes()).await.unwrap();
            sent += 1;
        }
        answers.next_line().await.unwrap();
        got += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(stdin);
    let _ = child.wait().await;
    rate
}

/// The same script as an exec consumer of a hub.
async fn hub_stream(n: usize, concurrency: usize) -> f64 {
    let settings = format!("command = [\"python3\", \"{ACK_ALL}\"]\n");
    let consumer = build_consumer::<ExecConfig>(&settings, &Resources::new()).unwrap();
    let options = ConsumerOptions {
        concurrency,
        queue_capacity: n + 1,
        ..ConsumerOptions::default()
    };
    let hub = TestHub::builder()
        .consumer_with("bench", &["#"], options, consumer)
        .start()
        .await;
    let msgs: Vec<Message> = (0..n)
        .map(|i| {
            Message::builder("org.example.build", json!({"build": i, "name": "kernel"}))
                .id(format!("m{i}"))
                .build()
        })
        .collect();
    let start = Instant::now();
    let sends = msgs.into_iter().map(|m| hub.send_message(m));
    let verdicts = futures_util::future::join_all(sends).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert!(verdicts.iter().all(|v| *v == hub_core::Verdict::Ack));
    hub.shutdown().await;
    rate
}

async fn raw_spawns(n: usize, concurrency: usize) -> f64 {
    let start = Instant::now();
    let mut next = 0;
    let mut running = tokio::task::JoinSet::new();
    while next < n || !running.is_empty() {
        while next < n && running.len() < concurrency {
            running.spawn(async {
                tokio::process::Command::new("/bin/true")
                    .stdin(Stdio::piped())
                    .status()
                    .await
                    .unwrap()
            });
            next += 1;
        }
        running.join_next().await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn hub_spawns(n: usize, concurrency: usize) -> f64 {
    let settings = "mode = \"per-message\"\ncommand = [\"/bin/true\"]\n";
    let consumer = build_consumer::<ExecConfig>(settings, &Resources::new()).unwrap();
    let options = ConsumerOptions {
        concurrency,
        queue_capacity: n + 1,
        timeout: Some(Duration::from_secs(30)),
        ..ConsumerOptions::default()
    };
    let hub = TestHub::builder()
        .consumer_with("spawn", &["#"], options, consumer)
        .start()
        .await;
    let start = Instant::now();
    let sends = (0..n).map(|i| hub.send("org.example.build", json!({"i": i})));
    let verdicts = futures_util::future::join_all(sends).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert!(verdicts.iter().all(|v| *v == hub_core::Verdict::Ack));
    hub.shutdown().await;
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs bench targets without `--bench`: nothing to check here.
    }
    let n = env_or("HUB_BENCH_N", 20_000);
    let spawns = env_or("HUB_BENCH_SPAWNS", 1_000);
    let rounds = env_or("HUB_BENCH_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("| case | run | hub msg/s | raw msg/s, same run | ratio |");
    println!("|---|---|---|---|---|");
    for round in 1..=rounds {
        for c in [1, 8] {
            let raw = rt.block_on(raw_stream(n, c));
            let hub = rt.block_on(hub_stream(n, c));
            println!(
                "| stream, python ack, concurrency {c}, {n} messages | {round} | {hub:.0} | {raw:.0} | {:.2} |",
                hub / raw
            );
        }
        let raw = rt.block_on(raw_spawns(spawns, 2));
        let hub = rt.block_on(hub_spawns(spawns, 2));
        println!(
            "| per-message, /bin/true, concurrency 2, {spawns} runs | {round} | {hub:.0} | {raw:.0} | {:.2} |",
            hub / raw
        );
    }
}
