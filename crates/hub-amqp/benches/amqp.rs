//! AMQP harness against the local RabbitMQ: prints a table. Run: `scripts/bench-amqp`.
//!
//! Messages are shaped as fedora-messaging publishes them (see `fedora_shaped`).
//! Consume: 50 000 (`HUB_BENCH_N`) pre-filled persistent 200-byte messages, (a) raw lapin, prefetch 1000, acking
//! with `multiple` every 100 deliveries; (b) the hub, one no-op consumer on a durable queue,
//! prefetch 1000. Publish: 20 000 messages, (c) raw lapin with up to 1000 unconfirmed; (d) the
//! hub's publish path (`Backend::publish`, confirmed and mandatory) with 1000 calls in flight.
//!
//! Each consume run also reports the CPU time spent per message, from the first delivery to
//! the last, by this process (raw lapin, or lapin plus the hub) and by RabbitMQ (every
//! `beam.smp` on the machine), from `/proc` (10 ms ticks). `HUB_BENCH_N` changes the number of
//! consumed messages; `HUB_BENCH_QUORUM_ROUNDS` repeats the quorum pair (raw, hub) that many
//! times, alternating which goes first.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

/// The allocator the `hub` binary ships with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hub_amqp::AmqpConfig;
use hub_amqp::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use hub_amqp::lapin::types::{AMQPValue, FieldTable};
use hub_amqp::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use hub_core::{
    BackendConfig, BrokerQueue, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern,
    QueueType, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder};
use serde_json::json;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PUBLISH_N: u64 = 20_000;

fn consume_n() -> u64 {
    std::env::var("HUB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

/// User + system CPU seconds of process `pid` ("self" for this one), from `/proc/PID/stat`.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name (in parentheses): state is field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every RabbitMQ node (`beam.smp`) on the machine.
fn broker_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .map(|pid| cpu_secs(&pid))
        .sum()
}

/// When a run's first delivery came, and the CPU seconds spent until then.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    client: f64,
    broker: f64,
}

impl Mark {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            client: cpu_secs("self"),
            broker: broker_cpu_secs(),
        }
    }
}

/// A consume run: messages a second, and CPU microseconds per message (this process, RabbitMQ).
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    client_us: f64,
    broker_us: f64,
}

impl Run {
    fn since(start: Mark, n: u64) -> Self {
        let end = Mark::now();
        let per = |a: f64, b: f64| (b - a) * 1e6 / n as f64;
        Self {
            rate: n as f64 / end.at.duration_since(start.at).as_secs_f64(),
            client_us: per(start.client, end.client),
            broker_us: per(start.broker, end.broker),
        }
    }

    /// CPU cores busy during the run (this process and RabbitMQ).
    fn cores(&self) -> f64 {
        (self.client_us + self.broker_us) * self.rate / 1e6
    }
}

/// A message as fedora-messaging publishes it: `application/json`, `utf-8`, persistent, a UUID4
/// `message_id`, and the `fedora_messaging_schema`, `fedora_messaging_severity` and `sent-at`
/// headers (plus two of the usual `fedora_messaging_user_*`/`_package_*` flags), 200-byte body.
fn fedora_shaped() -> (BasicProperties, Vec<u8>) {
    let m = Message::builder(
        "org.fedoraproject.prod.bodhi.update.comment",
        json!({"pad": "x".repeat(180)}),
    )
    .header("fedora_messaging_user_alice", true)
    .header("fedora_messaging_rpm_kernel", true)
    .build();
    hub_amqp::wire::encode(&m)
}

async fn prefill(ch: &Channel, queue: &str, n: u64) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .ok();
    let mut pending = FuturesUnordered::new();
    for _ in 0..n {
        let (props, body) = fedora_shaped();
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
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

/// The declare arguments of a queue of type `kind` (none for classic, as the hub declares it).
fn queue_args(kind: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if kind != QueueType::Classic {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(kind.as_str().into()),
        );
    }
    args
}

async fn raw_consume(conn: &Connection, kind: QueueType) -> Run {
    let n_total = consume_n();
    let ch = conn.create_channel().await.unwrap();
    let q = format!("hub.bench.raw.{}", kind.as_str());
    let q = q.as_str();
    ch.queue_declare(q.into(), QueueDeclareOptions::durable(), queue_args(kind))
        .await
        .unwrap();
    ch.queue_purge(q.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    prefill(&ch, q, n_total).await;
    let cch = conn.create_channel().await.unwrap();
    cch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = cch
        .basic_consume(
            q.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut n = 0u64;
    let mut start = None;
    while let Some(d) = consumer.next().await {
        let d = d.unwrap();
        start.get_or_insert_with(Mark::now);
        n += 1;
        if n.is_multiple_of(100) || n == n_total {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
        if n == n_total {
            break;
        }
    }
    let run = Run::since(start.unwrap(), n_total);
    cch.close(200, "done".into()).await.ok();
    ch.queue_delete(q.into(), Default::default()).await.ok();
    run
}

struct Count(Arc<AtomicU64>, Arc<std::sync::Mutex<Option<Mark>>>);

#[async_trait]
impl Consumer for Count {
    async fn consume(&self, _cx: &Context, _m: &Message) -> Result<(), ConsumeError> {
        self.1.lock().unwrap().get_or_insert_with(Mark::now);
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn config() -> AmqpConfig {
    serde_json::from_value(json!({"url": URL, "prefetch": 1000})).unwrap()
}

async fn hub_consume(conn: &Connection, kind: QueueType) -> Run {
    let n_total = consume_n();
    let ch = conn.create_channel().await.unwrap();
    let name = format!("noop{}", kind.as_str());
    let q = format!("hubbench.{name}");
    let q = q.as_str();
    ch.queue_declare(q.into(), QueueDeclareOptions::durable(), queue_args(kind))
        .await
        .unwrap();
    ch.queue_purge(q.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    prefill(&ch, q, n_total).await;
    let (count, first) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(None)),
    );
    let spec = ConsumerSpec {
        name: name.as_str().into(),
        backend: "r".into(),
        patterns: vec![Pattern::new("hub.bench.unused").unwrap()],
        options: ConsumerOptions {
            durable: true,
            queue_capacity: 2000,
            broker_queue: BrokerQueue {
                kind,
                ..BrokerQueue::default()
            },
            ..ConsumerOptions::default()
        },
        dead_letter: None,
    };
    let running = EngineBuilder::new("hubbench")
        .backend("r", config().build("r").unwrap())
        .consumer(spec, Arc::new(Count(count.clone(), first.clone())))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    while count.load(Ordering::Relaxed) < n_total {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let start = first.lock().unwrap().unwrap();
    let run = Run::since(start, n_total);
    running.shutdown(Duration::from_secs(10)).await;
    let left = ch
        .queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(left, 0, "every message acknowledged");
    ch.queue_delete(q.into(), Default::default()).await.ok();
    ch.queue_delete("hubbench.dead-letters".into(), Default::default())
        .await
        .ok();
    run
}

async fn sink(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    let q = "hub.bench.sink";
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        q.into(),
        "amq.topic".into(),
        "hub.bench.pub".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_purge(q.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    ch
}

async fn raw_publish(conn: &Connection) -> f64 {
    let admin = sink(conn).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    for _ in 0..PUBLISH_N {
        // The same shape and cost (encoding included) as the hub's path below.
        let (props, body) = fedora_shaped();
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        pending.push(
            ch.basic_publish(
                "amq.topic".into(),
                "hub.bench.pub".into(),
                opts,
                &body,
                props,
            )
            .await
            .unwrap(),
        );
        if pending.len() >= 1000 {
            pending.next().await.unwrap().unwrap();
        }
    }
    while let Some(c) = pending.next().await {
        c.unwrap();
    }
    let rate = PUBLISH_N as f64 / start.elapsed().as_secs_f64();
    admin
        .queue_purge("hub.bench.sink".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    rate
}

async fn hub_publish(conn: &Connection) -> f64 {
    let admin = sink(conn).await;
    let backend = config().build("r").unwrap();
    let running = EngineBuilder::new("hubbenchpub")
        .backend("r", backend.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    while !running.readiness().ready {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let msg = Message::builder("hub.bench.pub", json!({"pad": "x".repeat(180)}))
        .header("fedora_messaging_user_alice", true)
        .header("fedora_messaging_rpm_kernel", true)
        .build();
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    for _ in 0..PUBLISH_N {
        let b = backend.clone();
        let m = msg.clone();
        pending.push(async move { b.publish(&m).await });
        if pending.len() >= 1000 {
            pending.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = pending.next().await {
        r.unwrap();
    }
    let rate = PUBLISH_N as f64 / start.elapsed().as_secs_f64();
    running.shutdown(Duration::from_secs(5)).await;
    admin
        .queue_delete("hub.bench.sink".into(), Default::default())
        .await
        .ok();
    admin
        .queue_delete("hubbenchpub.dead-letters".into(), Default::default())
        .await
        .ok();
    rate
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = Connection::connect(URL, ConnectionProperties::default()).await.expect("RabbitMQ at 127.0.0.1:5672");
        let a = raw_consume(&conn, QueueType::Classic).await;
        let b = hub_consume(&conn, QueueType::Classic).await;
        // HUB_BENCH_HUB_FIRST=1: the hub's quorum run before raw lapin's (does the order matter?);
        // HUB_BENCH_QUORUM_ROUNDS=K: K pairs, alternating which goes first.
        let rounds: usize = std::env::var("HUB_BENCH_QUORUM_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let hub_first = std::env::var_os("HUB_BENCH_HUB_FIRST").is_some();
        let mut quorum = Vec::new();
        for round in 0..rounds {
            if hub_first ^ (round % 2 == 1) {
                let qb = hub_consume(&conn, QueueType::Quorum).await;
                quorum.push((raw_consume(&conn, QueueType::Quorum).await, qb));
            } else {
                let qa = raw_consume(&conn, QueueType::Quorum).await;
                quorum.push((qa, hub_consume(&conn, QueueType::Quorum).await));
            }
        }
        let c = raw_publish(&conn).await;
        let d = hub_publish(&conn).await;
        let n = consume_n();
        println!("| path | raw lapin | hub | hub / raw |");
        println!("|---|---|---|---|");
        println!("| consume {n} persistent 200 B messages (prefetch 1000) | {:.1} k msg/s (ack multiple every 100) | {:.1} k msg/s (1 no-op consumer, durable queue) | {:.2} |", a.rate / 1e3, b.rate / 1e3, b.rate / a.rate);
        for (qa, qb) in &quorum {
            println!("| consume {n} persistent 200 B messages, quorum queue (prefetch 1000) | {:.1} k msg/s (ack multiple every 100) | {:.1} k msg/s (1 no-op consumer, `queue_type = \"quorum\"`) | {:.2} |", qa.rate / 1e3, qb.rate / 1e3, qb.rate / qa.rate);
        }
        println!("| publish {PUBLISH_N} persistent messages, confirmed | {:.1} k msg/s (window 1000) | {:.1} k msg/s (`Backend::publish`, 1000 in flight) | {:.2} |", c / 1e3, d / 1e3, d / c);
        println!();
        println!("CPU per consumed message, first delivery to last (µs; cores = both together):");
        println!();
        println!("| run | raw: client | raw: RabbitMQ | raw: cores | hub: client | hub: RabbitMQ | hub: cores |");
        println!("|---|---|---|---|---|---|---|");
        let row = |name: &str, r: &Run, h: &Run| {
            println!(
                "| {name} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} |",
                r.client_us, r.broker_us, r.cores(), h.client_us, h.broker_us, h.cores()
            );
        };
        row("classic", &a, &b);
        for (k, (qa, qb)) in quorum.iter().enumerate() {
            row(&format!("quorum {}", k + 1), qa, qb);
        }
    });
}
