//! AMQP harness against the local RabbitMQ: prints a table. Run: `scripts/bench-amqp`.
//!
//! Messages are shaped as fedora-messaging publishes them (see `fedora_shaped`).
//! Consume: 50 000 pre-filled persistent 200-byte messages, (a) raw lapin, prefetch 1000, acking
//! with `multiple` every 100 deliveries; (b) the hub, one no-op consumer on a durable queue,
//! prefetch 1000. Publish: 20 000 messages, (c) raw lapin with up to 1000 unconfirmed; (d) the
//! hub's publish path (`Backend::publish`, confirmed and mandatory) with 1000 calls in flight.
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
use hub_amqp::lapin::types::FieldTable;
use hub_amqp::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use hub_core::{
    BackendConfig, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder};
use serde_json::json;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const CONSUME_N: u64 = 50_000;
const PUBLISH_N: u64 = 20_000;

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

async fn raw_consume(conn: &Connection) -> f64 {
    let ch = conn.create_channel().await.unwrap();
    let q = "hub.bench.raw";
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_purge(q.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    prefill(&ch, q, CONSUME_N).await;
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
        start.get_or_insert_with(Instant::now);
        n += 1;
        if n.is_multiple_of(100) || n == CONSUME_N {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
        if n == CONSUME_N {
            break;
        }
    }
    let rate = CONSUME_N as f64 / start.unwrap().elapsed().as_secs_f64();
    cch.close(200, "done".into()).await.ok();
    ch.queue_delete(q.into(), Default::default()).await.ok();
    rate
}

struct Count(Arc<AtomicU64>, Arc<std::sync::Mutex<Option<Instant>>>);

#[async_trait]
impl Consumer for Count {
    async fn consume(&self, _cx: &Context, _m: &Message) -> Result<(), ConsumeError> {
        self.1.lock().unwrap().get_or_insert_with(Instant::now);
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn config() -> AmqpConfig {
    serde_json::from_value(json!({"url": URL, "prefetch": 1000})).unwrap()
}

async fn hub_consume(conn: &Connection) -> f64 {
    let ch = conn.create_channel().await.unwrap();
    let q = "hubbench.noop";
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_purge(q.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    prefill(&ch, q, CONSUME_N).await;
    let (count, first) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(None)),
    );
    let spec = ConsumerSpec {
        name: "noop".into(),
        backend: "r".into(),
        patterns: vec![Pattern::new("hub.bench.unused").unwrap()],
        options: ConsumerOptions {
            durable: true,
            queue_capacity: 2000,
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
    while count.load(Ordering::Relaxed) < CONSUME_N {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = CONSUME_N as f64 / first.lock().unwrap().unwrap().elapsed().as_secs_f64();
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
    rate
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
        let a = raw_consume(&conn).await;
        let b = hub_consume(&conn).await;
        let c = raw_publish(&conn).await;
        let d = hub_publish(&conn).await;
        println!("| path | raw lapin | hub | hub / raw |");
        println!("|---|---|---|---|");
        println!("| consume {CONSUME_N} persistent 200 B messages (prefetch 1000) | {:.1} k msg/s (ack multiple every 100) | {:.1} k msg/s (1 no-op consumer, durable queue) | {:.2} |", a / 1e3, b / 1e3, b / a);
        println!("| publish {PUBLISH_N} persistent messages, confirmed | {:.1} k msg/s (window 1000) | {:.1} k msg/s (`Backend::publish`, 1000 in flight) | {:.2} |", c / 1e3, d / 1e3, d / c);
    });
}
