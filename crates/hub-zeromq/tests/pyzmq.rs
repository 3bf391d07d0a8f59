//! Interop with a real libzmq peer (pyzmq), both ways. `scripts/test` creates the venv
//! (`target/pyzmq-venv`, or set `HUB_TEST_PYTHON`); under CI a missing one fails the run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, Producer,
    WhenFull, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder};
use hub_zeromq::{Format, ZeroMqBackend, ZeroMqConfig};
use serde_json::json;
use tokio::time::{Instant, sleep};

fn python() -> Option<PathBuf> {
    let path = std::env::var_os("HUB_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/pyzmq-venv/bin/python"
            ))
        });
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no Python with pyzmq at {}: scripts/test creates it",
        path.display()
    );
    eprintln!(
        "skipped: no Python with pyzmq at {} (run scripts/test to create it)",
        path.display()
    );
    None
}

fn script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn free_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("tcp://127.0.0.1:{port}")
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Tally {
    warm: AtomicU64,
    main: AtomicU64,
    next_n: AtomicU64,
    out_of_order: AtomicU64,
}

struct Count(Arc<Tally>);

#[async_trait]
impl Consumer for Count {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        if msg.topic() == "warm.up" {
            self.0.warm.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let n = msg.body()["n"].as_u64().unwrap();
        if self.0.next_n.swap(n + 1, Ordering::Relaxed) != n {
            self.0.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        self.0.main.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fedmsg_publisher_on_libzmq_is_consumed_completely() {
    let Some(py) = python() else { return };
    const N: u64 = 20_000;
    let ep = free_endpoint();
    let tally = Arc::new(Tally::default());
    let cfg = ZeroMqConfig {
        subscribe: vec![ep.clone()],
        publish: None,
        format: Format::Fedmsg,
        username: None,
        max_message_bytes: hub_core::DEFAULT_MAX_MESSAGE_BYTES,
    };
    let zmq = Arc::new(ZeroMqBackend::new("py", cfg));
    let options = ConsumerOptions {
        queue_capacity: 100_000,
        when_full: WhenFull::DropOldest,
        ..Default::default()
    };
    let engine = EngineBuilder::new("t")
        .backend("py", zmq.clone())
        .consumer(
            ConsumerSpec {
                name: "count".into(),
                backend: "py".into(),
                patterns: vec![Pattern::new("#").unwrap()],
                options,
                dead_letter: None,
            },
            Arc::new(Count(tally.clone())),
        )
        .build()
        .unwrap();
    let running = engine.start().await.unwrap();
    let mut publisher = Kill(
        Command::new(&py)
            .args([script("fedmsg_pub.py"), ep.clone(), N.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while tally.warm.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "no warm-up message from the Python publisher"
        );
        sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    writeln!(publisher.0.stdin.as_mut().unwrap(), "go").unwrap();
    while tally.main.load(Ordering::Relaxed) < N {
        assert!(
            Instant::now() < deadline + Duration::from_secs(20),
            "got {} of {N}",
            tally.main.load(Ordering::Relaxed)
        );
        sleep(Duration::from_millis(5)).await;
    }
    let took = start.elapsed();
    assert_eq!(tally.main.load(Ordering::Relaxed), N);
    assert_eq!(
        tally.out_of_order.load(Ordering::Relaxed),
        0,
        "messages out of order or missing"
    );
    assert_eq!(zmq.endpoint_stats()[0].2, 0, "fedmsg `i` gaps");
    eprintln!(
        "consumed {N} fedmsg messages from pyzmq in {took:?} ({:.0} msg/s)",
        N as f64 / took.as_secs_f64()
    );
    running.shutdown(Duration::from_secs(5)).await;
}

struct Ticks;

#[async_trait]
impl Producer for Ticks {
    fn interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(5))
    }
    async fn produce(&self, cx: &Context) -> Result<(), BoxError> {
        cx.publish(Message::new(
            "org.hub.interop.tick",
            json!({"text": "héllo", "n": 1}),
        ))
        .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_hub_publishes_is_a_valid_fedmsg_envelope_for_libzmq() {
    let Some(py) = python() else { return };
    let ep = free_endpoint();
    let cfg = ZeroMqConfig {
        subscribe: vec![],
        publish: Some(ep.clone()),
        format: Format::Fedmsg,
        username: Some("hub".into()),
        max_message_bytes: hub_core::DEFAULT_MAX_MESSAGE_BYTES,
    };
    let engine = EngineBuilder::new("t")
        .backend("out", Arc::new(ZeroMqBackend::new("out", cfg)))
        .producer("ticks", "out", Arc::new(Ticks))
        .build()
        .unwrap();
    let running = engine.start().await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&py)
            .args([script("fedmsg_sub.py"), ep, "20".into()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "ok 20");
    running.shutdown(Duration::from_secs(5)).await;
}
