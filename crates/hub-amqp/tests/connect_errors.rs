//! Issue #21 (5, 6): a backend that cannot connect says why at once (the OS's or the broker's
//! reason, the redacted URL, on the first attempt), keeps retrying, and shuts down without a
//! panic anywhere (lapin's own threads included). The broker cases run against the real
//! RabbitMQ at 127.0.0.1:5672 (guest/guest; `HUB_TEST_AMQP_URL` overrides its host and port).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hub_amqp::{AmqpConfig, redact};
use hub_core::{
    BackendConfig, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder};
use hub_testkit::TcpProxy;
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Every log line of the process (spans' fields included), as text.
#[derive(Default)]
struct Capture {
    lines: Mutex<Vec<String>>,
    next_span: AtomicU64,
}

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl Subscriber for &'static Capture {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        *meta.level() <= Level::DEBUG
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = format!("SPAN {}", span.metadata().name());
        span.record(&mut Text(&mut line));
        self.lines.lock().unwrap().push(line);
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = "SPAN+".to_owned();
        values.record(&mut Text(&mut line));
        self.lines.lock().unwrap().push(line);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut line = format!("{} {}:", meta.level(), meta.target());
        event.record(&mut Text(&mut line));
        self.lines.lock().unwrap().push(line);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::default());
        tracing::subscriber::set_global_default(c).expect("no other global subscriber");
        c
    })
}

/// One test at a time: the log capture, the panic hook and the thread list are the process's.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// lapin's connection threads still alive in this process.
fn lapin_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with("lapin"))
                .count()
        })
        .unwrap_or(0)
}

struct Nop;

#[async_trait]
impl Consumer for Nop {
    async fn consume(&self, _cx: &Context, _msg: &Message) -> Result<(), ConsumeError> {
        Ok(())
    }
}

/// The broker's `host:port` (127.0.0.1:5672 unless `HUB_TEST_AMQP_URL` says otherwise).
fn broker() -> String {
    std::env::var("HUB_TEST_AMQP_URL")
        .ok()
        .and_then(|u| {
            let rest = u.split_once("://")?.1;
            let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
            Some(rest.split('/').next()?.to_owned())
        })
        .unwrap_or_else(|| "127.0.0.1:5672".into())
}

/// One test's watch over the process: the test lock, the log capture cleared, and a panic hook
/// counting every panic (on any thread, lapin's included) until [`Watch::finish`].
struct Watch {
    _serial: MutexGuard<'static, ()>,
    logs: &'static Capture,
    previous: Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>,
}

struct Outcome {
    panics: usize,
    threads_left: usize,
    lines: Vec<String>,
}

impl Outcome {
    fn shown(&self) -> String {
        self.lines.join("\n")
    }

    /// No panic, no lapin thread left, `secret` in no line, no panic logged.
    fn assert_clean(&self, secret: &str) {
        assert_eq!(
            self.panics,
            0,
            "panics during or after shutdown; logs:\n{}",
            self.shown()
        );
        assert_eq!(self.threads_left, 0, "lapin threads left after shutdown");
        assert!(
            !self.lines.iter().any(|l| l.contains(secret)),
            "the password was logged:\n{}",
            self.shown()
        );
        assert!(
            !self.lines.iter().any(|l| l.contains("panicked")),
            "a panic was logged:\n{}",
            self.shown()
        );
        assert!(
            !self
                .lines
                .iter()
                .any(|l| l.contains("still running at close")),
            "close left a connection thread behind:\n{}",
            self.shown()
        );
    }
}

impl Watch {
    fn start() -> Self {
        let serial = serial();
        let logs = capture();
        logs.lines.lock().unwrap().clear();
        PANICS.store(0, Ordering::SeqCst);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            eprintln!("PANIC: {info}");
        }));
        Self {
            _serial: serial,
            logs,
            previous,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.logs.lines.lock().unwrap().clone()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Drops the runtime, then waits a moment for lapin's threads: one left behind would keep
    /// retrying, and panic once the runtime is gone.
    fn finish(self, rt: tokio::runtime::Runtime) -> Outcome {
        drop(rt);
        let deadline = Instant::now() + Duration::from_secs(2);
        while lapin_threads() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let threads_left = lapin_threads();
        std::thread::sleep(Duration::from_millis(200));
        let panics = PANICS.load(Ordering::SeqCst);
        let lines = self.lines();
        std::panic::set_hook(self.previous);
        if std::env::var_os("HUB_TEST_SHOW_LOGS").is_some() {
            eprintln!("{}", lines.join("\n"));
        }
        Outcome {
            panics,
            threads_left,
            lines,
        }
    }
}

fn hub(url: &str, hub: &str, topic: &str, consumer: Arc<dyn Consumer>) -> hub_engine::Engine {
    let cfg: AmqpConfig = serde_json::from_value(json!({ "url": url })).unwrap();
    let spec = ConsumerSpec {
        name: "c".into(),
        backend: "rabbit".into(),
        patterns: vec![Pattern::new(topic).unwrap()],
        options: ConsumerOptions::default(),
        dead_letter: None,
    };
    EngineBuilder::new(hub)
        .backend("rabbit", cfg.build("rabbit").unwrap())
        .consumer(spec, consumer)
        .build()
        .unwrap()
}

/// Starts a hub whose one amqp backend (with one consumer) points at `url`; waits until a log
/// line satisfies `wanted` (at most `within`), then shuts the hub down, drops its runtime, and
/// checks: no panic anywhere, no lapin thread left behind, the password (`secret`) in no line,
/// and the hub never ready. Returns the line found.
fn scenario(url: &str, secret: &str, within: Duration, wanted: impl Fn(&str) -> bool) -> String {
    let watch = Watch::start();
    let rt = Watch::runtime();
    let found = rt.block_on(async {
        let running = hub(url, "connect-errors", "t.#", Arc::new(Nop))
            .start()
            .await
            .unwrap();
        let started = Instant::now();
        let found = loop {
            if let Some(l) = watch.lines().into_iter().find(|l| wanted(l)) {
                break Some((l, started.elapsed()));
            }
            if started.elapsed() > within {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Still connecting (retrying): stop the hub now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!running.readiness().ready, "never connected, never ready");
        let t = Instant::now();
        running.shutdown(Duration::from_secs(2)).await;
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "shutdown took {:?}",
            t.elapsed()
        );
        found
    });
    let outcome = watch.finish(rt);
    let (line, after) = found.unwrap_or_else(|| {
        panic!(
            "no such log line within {within:?} ({url}); the logs:\n{}",
            outcome.shown()
        )
    });
    eprintln!("after {after:?}: {line}");
    outcome.assert_clean(secret);
    line
}

fn is_warning_about(url: &str, l: &str) -> bool {
    l.starts_with("WARN") && l.contains(&redact(url))
}

#[test]
fn a_refused_connection_is_reported_at_once() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("amqp://guest:pw-closed-port-77@127.0.0.1:{port}/%2f");
    let line = scenario(&url, "pw-closed-port-77", Duration::from_secs(2), |l| {
        is_warning_about(&url, l) && l.to_lowercase().contains("refused")
    });
    assert!(line.contains("Connection refused"), "{line}");
}

#[test]
fn an_unresolvable_host_is_reported_at_once() {
    let url = "amqp://guest:pw-no-such-host-77@nonexistent.invalid:5672/%2f";
    scenario(url, "pw-no-such-host-77", Duration::from_secs(2), |l| {
        is_warning_about(url, l) && l.contains("cannot resolve")
    });
}

#[test]
fn a_wrong_password_is_reported_at_once() {
    let url = format!("amqp://guest:pw-wrong-77@{}/%2f", broker());
    scenario(&url, "pw-wrong-77", Duration::from_secs(2), |l| {
        is_warning_about(&url, l) && l.contains("ACCESS_REFUSED")
    });
}

#[test]
fn a_missing_vhost_is_reported_at_once() {
    let url = format!("amqp://guest:guest@{}/no-such-vhost-77", broker());
    scenario(&url, "guest:guest", Duration::from_secs(2), |l| {
        is_warning_about(&url, l) && l.contains("NOT_ALLOWED") && l.contains("no-such-vhost-77")
    });
}

#[test]
fn a_failed_tls_handshake_is_reported_at_once() {
    // The plain AMQP port does not speak TLS.
    let url = format!("amqps://guest:pw-tls-77@{}/%2f", broker());
    scenario(&url, "pw-tls-77", Duration::from_secs(2), |l| {
        is_warning_about(&url, l) && l.contains("TLS")
    });
}

#[derive(Default)]
struct Seen(Mutex<Vec<Message>>);

#[async_trait]
impl Consumer for Seen {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.0.lock().unwrap().push(msg.clone());
        Ok(())
    }
}

async fn until(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn recovery_reconnects_and_a_shutdown_during_recovery_is_clean() {
    let watch = Watch::start();
    let rt = Watch::runtime();
    rt.block_on(async {
        let mut proxy = TcpProxy::start(broker()).await;
        // A name, so lapin's reconnects resolve it (on lapin's thread) and try each address.
        let url = format!("amqp://guest:guest@localhost:{}/%2f", proxy.port());
        let u = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("t{}.recovery", &u[..8]);
        let seen = Arc::new(Seen::default());
        let engine = hub(
            &url,
            &format!("hub{}", &u[..8]),
            &topic,
            Arc::clone(&seen) as Arc<dyn Consumer>,
        );
        let running = engine.start().await.unwrap();
        until("ready", Duration::from_secs(5), || {
            running.readiness().ready
        })
        .await;

        // The broker goes away and comes back: lapin reconnects through our transport.
        proxy.cut().await;
        until("the outage shows", Duration::from_secs(3), || {
            !running.readiness().ready
        })
        .await;
        proxy.up().await;
        until("ready again", Duration::from_secs(5), || {
            running.readiness().ready
        })
        .await;
        let publisher = running.publisher("rabbit").unwrap();
        let sent = Message::new(topic.clone(), json!({"after": "recovery"}));
        let deadline = Instant::now() + Duration::from_secs(5);
        // Publishing waits for the channels' recovery, which may lag the connection's.
        while publisher.publish(sent.clone()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "could not publish after the recovery"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        until(
            "consumed after the recovery",
            Duration::from_secs(5),
            || !seen.0.lock().unwrap().is_empty(),
        )
        .await;

        // Gone again, for good: the hub stops while lapin is still trying to reconnect.
        proxy.cut().await;
        until("the second outage shows", Duration::from_secs(3), || {
            !running.readiness().ready
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let t = Instant::now();
        running.shutdown(Duration::from_secs(2)).await;
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "shutdown took {:?}",
            t.elapsed()
        );
    });
    let outcome = watch.finish(rt);
    outcome.assert_clean("guest:guest");
}
