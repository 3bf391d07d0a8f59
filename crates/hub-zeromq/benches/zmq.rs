//! End-to-end ZeroMQ harness: prints a table. Run: `scripts/bench-zeromq`
//! (or `cargo bench -p hub-zeromq --bench zmq`).
//!
//! In one process, on 127.0.0.1: a zeromq-crate PUB sends N fedmsg envelopes as fast as it can;
//! (a) a raw zeromq SUB counts them; (b) the hub (ZeroMQ backend) with 1 no-op consumer;
//! (c) with 4; (d, e) a floor for any hub design, for scale: the raw SUB plus a JSON check and a
//! batched hand-off to 1 or 4 consumer tasks over tokio channels. Rate = messages that arrived / time from
//! first to last arrival. The five cases run in turns (`HUB_BENCH_ROUNDS`, default 3) and the
//! table gives medians, each ratio taken within a turn. Then the round trip: PUB → hub → reply
//! consumer → hub PUB → SUB, one message at a time.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

/// The allocator the `hub` binary ships with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hub_core::{ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, async_trait};
use hub_engine::{ConsumerSpec, EngineBuilder, RunningEngine};
use hub_zeromq::{Format, ZeroMqBackend, ZeroMqConfig, codec};
use serde_json::json;
use tokio::time::sleep;
use zeromq::{PubSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};

/// Messages per measurement: long enough (seconds) that a scheduling hiccup does not decide it.
/// `HUB_BENCH_N` sets another count (fewer, to run a case under `valgrind --tool=callgrind`).
static N_SENT: std::sync::LazyLock<u64> =
    std::sync::LazyLock::new(|| env_or("HUB_BENCH_N", 1_000_000));
/// Distinct pre-encoded envelopes, sent in turn.
const DISTINCT: u64 = 100_000;
/// At most this many sent and not yet arrived: below the zeromq PUB's silent-drop point (about
/// 200 000 queued), so a slower receiver slows the sender instead of losing messages.
/// `HUB_BENCH_WINDOW` sets another (smaller, under valgrind, where the sender runs ahead).
static WINDOW: std::sync::LazyLock<u64> =
    std::sync::LazyLock::new(|| env_or("HUB_BENCH_WINDOW", 100_000));

/// The environment variable `name` parsed, or `default` when it is unset or does not parse.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const RTT_N: usize = 10_000;

fn endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("tcp://127.0.0.1:{port}")
}

fn envelope(topic: &str, i: u64, pad: usize) -> ZmqMessage {
    let msg = Message::builder(topic, json!({"n": i, "pad": "x".repeat(pad)})).build();
    let [t, b] = codec::encode(Format::Fedmsg, &msg, i + 1, "bench");
    let mut m = ZmqMessage::from(t);
    m.push_back(b);
    m
}

fn pad_for(target: usize) -> usize {
    let base = codec::encode(
        Format::Fedmsg,
        &Message::builder(
            "org.fedoraproject.prod.bench.msg",
            json!({"n": 0, "pad": ""}),
        )
        .build(),
        1,
        "bench",
    )[1]
    .len();
    target.saturating_sub(base)
}

/// Counts arrivals and when the first and the latest came. The clock is read for the first
/// arrival and every `STAMP_EVERY`th after it, not for each one: a consumer here must cost as
/// little as the raw reader's loop, or the harness measures its own clock reads (4 per message
/// with 4 consumers).
#[derive(Default)]
struct Arrivals {
    count: AtomicU64,
    first_ns: AtomicU64,
    /// Arrivals counted when `last_ns` was read.
    stamped: AtomicU64,
    last_ns: AtomicU64,
}

const STAMP_EVERY: u64 = 256;

impl Arrivals {
    fn hit(&self, epoch: Instant) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 {
            self.first_ns
                .store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        } else if n.is_multiple_of(STAMP_EVERY) || n == *N_SENT {
            self.last_ns
                .store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.stamped.store(n, Ordering::Relaxed);
        }
    }
    /// Arrivals per second between the first and the last stamped one.
    fn rate(&self) -> f64 {
        let n = self.stamped.load(Ordering::Relaxed);
        let span = self
            .last_ns
            .load(Ordering::Relaxed)
            .saturating_sub(self.first_ns.load(Ordering::Relaxed));
        if span == 0 {
            0.0
        } else {
            (n.saturating_sub(1)) as f64 / (span as f64 / 1e9)
        }
    }
}

struct Noop(Arc<Arrivals>, Instant);

#[async_trait]
impl Consumer for Noop {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        if msg.topic() != "warm.up" {
            self.0.hit(self.1);
        }
        Ok(())
    }
}

/// Sends warm-up messages until `ready()`, then N envelopes (never more than `WINDOW` ahead of
/// `arrived()`), then waits until arrivals stop. Returns the process CPU seconds from the first
/// of the N sends until then (encoding and warm-up excluded; idle runtime threads cost nothing).
async fn blast(
    publisher: &mut PubSocket,
    pad: usize,
    ready: impl Fn() -> bool,
    arrived: impl Fn() -> u64,
) -> f64 {
    let mut w = 0;
    while !ready() {
        publisher.send(envelope("warm.up", w, 0)).await.unwrap();
        w += 1;
        sleep(Duration::from_millis(5)).await;
    }
    // Encode first: the sender must not be what is measured.
    let topic = "org.fedoraproject.prod.bench.msg";
    let batch: Vec<ZmqMessage> = (0..DISTINCT).map(|i| envelope(topic, i, pad)).collect();
    sleep(Duration::from_millis(200)).await;
    let cpu0 = cpu_seconds();
    for k in 0..*N_SENT {
        while k.saturating_sub(arrived()) >= *WINDOW {
            sleep(Duration::from_millis(1)).await;
        }
        publisher
            .send(batch[(k % DISTINCT) as usize].clone())
            .await
            .unwrap();
    }
    let mut last = u64::MAX;
    loop {
        sleep(Duration::from_millis(500)).await;
        let now = arrived();
        if now == last || now >= *N_SENT {
            break;
        }
        last = now;
    }
    cpu_seconds() - cpu0
}

/// What one case measured.
struct Run {
    /// Messages per second (at the slowest consumer).
    rate: f64,
    /// Messages that arrived (at the slowest consumer).
    arrived: u64,
    /// Process CPU microseconds per message sent, sender included.
    cpu_us: f64,
}

impl Run {
    /// The slowest consumer's figures, given the CPU seconds the case used.
    fn of(counters: &[Arc<Arrivals>], cpu: f64) -> Self {
        Self {
            rate: counters
                .iter()
                .map(|c| c.rate())
                .fold(f64::INFINITY, f64::min),
            arrived: slowest(counters),
            cpu_us: cpu / *N_SENT as f64 * 1e6,
        }
    }
}

/// Arrivals at the slowest consumer: the sender's window follows it.
fn slowest(counters: &[Arc<Arrivals>]) -> u64 {
    counters
        .iter()
        .map(|c| c.count.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0)
}

/// A bound PUB and a SUB connected to it, subscribed to everything.
async fn pub_sub() -> (PubSocket, SubSocket) {
    let ep = endpoint();
    let mut publisher = PubSocket::new();
    publisher.bind(&ep).await.unwrap();
    let mut sub = SubSocket::new();
    sub.connect(&ep).await.unwrap();
    sub.subscribe("").await.unwrap();
    (publisher, sub)
}

async fn raw(pad: usize) -> Run {
    let (mut publisher, mut sub) = pub_sub().await;
    let arrivals = Arc::new(Arrivals::default());
    let warm = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let (a, wm) = (arrivals.clone(), warm.clone());
    let reader = tokio::spawn(async move {
        while let Ok(m) = sub.recv().await {
            if m.get(0).is_some_and(|t| &t[..] == b"warm.up") {
                wm.fetch_add(1, Ordering::Relaxed);
            } else {
                a.hit(epoch);
            }
        }
    });
    let cpu = blast(
        &mut publisher,
        pad,
        || warm.load(Ordering::Relaxed) > 0,
        || arrivals.count.load(Ordering::Relaxed),
    )
    .await;
    reader.abort();
    Run::of(&[arrivals], cpu)
}

/// The least any hub can do with a message: what (a) does, plus checking the envelope is JSON
/// (the issue requires rejecting invalid JSON) and handing the message to each of `consumers`
/// tasks through its own bounded tokio channel (each consumer on its own task with its own queue
/// is the product's point), in batches of what the socket already holds (up to 64), as the
/// hub's receive loop does. No routing, no metrics, no message type: a ceiling for b/a and c/a
/// on this machine. `consumers = 0` reads inline (no hand-off); `validate = false` skips the
/// check; `HUB_FLOOR_BATCH=1` hands over one message at a time.
async fn floor(pad: usize, validate: bool, consumers: usize) -> Run {
    let (mut publisher, mut sub) = pub_sub().await;
    let counters: Vec<Arc<Arrivals>> = (0..consumers.max(1))
        .map(|_| Arc::new(Arrivals::default()))
        .collect();
    let warm = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let count = move |m: &ZmqMessage, a: &Arrivals, w: &AtomicU64| {
        if m.get(0).is_some_and(|t| &t[..] == b"warm.up") {
            w.fetch_add(1, Ordering::Relaxed);
        } else {
            a.hit(epoch);
        }
    };
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    for a in counters.iter().take(consumers) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Vec<ZmqMessage>>>(*WINDOW as usize);
        senders.push(tx);
        let (a, w) = (a.clone(), warm.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                for m in batch.iter() {
                    count(m, &a, &w);
                }
            }
        }));
    }
    let batch_max: usize = env_or("HUB_FLOOR_BATCH", 64);
    let (inline, w) = (counters[0].clone(), warm.clone());
    tasks.push(tokio::spawn(async move {
        let valid = |m: &ZmqMessage| {
            m.len() == 2
                && (!validate
                    || m.get(1).is_some_and(|b| {
                        serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok()
                    }))
        };
        while let Ok(first) = sub.recv().await {
            let mut batch = Vec::with_capacity(batch_max);
            batch.extend(Some(first).filter(valid));
            while batch.len() < batch_max {
                match sub.recv().now_or_never() {
                    Some(Ok(m)) => batch.extend(Some(m).filter(valid)),
                    _ => break,
                }
            }
            if senders.is_empty() {
                for m in &batch {
                    count(m, &inline, &w);
                }
                continue;
            }
            let batch = Arc::new(batch);
            for tx in &senders {
                if tx.send(batch.clone()).await.is_err() {
                    return;
                }
            }
        }
    }));
    let cpu = blast(
        &mut publisher,
        pad,
        || warm.load(Ordering::Relaxed) > 0,
        || slowest(&counters),
    )
    .await;
    for t in tasks {
        t.abort();
    }
    Run::of(&counters, cpu)
}

async fn hub(pad: usize, consumers: usize) -> Run {
    let ep = endpoint();
    let mut publisher = PubSocket::new();
    publisher.bind(&ep).await.unwrap();
    let cfg = ZeroMqConfig {
        subscribe: vec![ep.clone()],
        publish: None,
        format: Format::Fedmsg,
        username: None,
        max_message_bytes: hub_core::DEFAULT_MAX_MESSAGE_BYTES,
    };
    let epoch = Instant::now();
    let counters: Vec<Arc<Arrivals>> = (0..consumers)
        .map(|_| Arc::new(Arrivals::default()))
        .collect();
    let warm = Arc::new(Arrivals::default());
    let mut b = EngineBuilder::new("bench").backend("z", Arc::new(ZeroMqBackend::new("z", cfg)));
    let options = ConsumerOptions {
        queue_capacity: *WINDOW as usize,
        ..Default::default()
    };
    for (i, c) in counters.iter().enumerate() {
        let spec = ConsumerSpec {
            name: format!("c{i}"),
            backend: "z".into(),
            patterns: vec![Pattern::new("org.fedoraproject.#").unwrap()],
            options: options.clone(),
            dead_letter: None,
        };
        b = b.consumer(spec, Arc::new(Noop(c.clone(), epoch)));
    }
    struct Warm(Arc<Arrivals>, Instant);
    #[async_trait]
    impl Consumer for Warm {
        async fn consume(&self, _cx: &Context, _m: &Message) -> Result<(), ConsumeError> {
            self.0.hit(self.1);
            Ok(())
        }
    }
    let spec = ConsumerSpec {
        name: "warm".into(),
        backend: "z".into(),
        patterns: vec![Pattern::new("warm.up").unwrap()],
        options,
        dead_letter: None,
    };
    b = b.consumer(spec, Arc::new(Warm(warm.clone(), epoch)));
    let running = b.build().unwrap().start().await.unwrap();
    let cpu = blast(
        &mut publisher,
        pad,
        || warm.count.load(Ordering::Relaxed) > 0,
        || slowest(&counters),
    )
    .await;
    running.shutdown(Duration::from_secs(5)).await;
    Run::of(&counters, cpu)
}

struct Echo;

#[async_trait]
impl Consumer for Echo {
    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        cx.publish(Message::new("rt.back", msg.body().clone()))
            .await
            .map_err(ConsumeError::transient)
    }
}

async fn round_trip() -> (Duration, Duration, Duration) {
    let (inp, out) = (endpoint(), endpoint());
    let mut publisher = PubSocket::new();
    publisher.bind(&inp).await.unwrap();
    let cfg = ZeroMqConfig {
        subscribe: vec![inp.clone()],
        publish: Some(out.clone()),
        format: Format::Fedmsg,
        username: None,
        max_message_bytes: hub_core::DEFAULT_MAX_MESSAGE_BYTES,
    };
    let spec = ConsumerSpec {
        name: "reply".into(),
        backend: "z".into(),
        patterns: vec![Pattern::new("rt.go").unwrap()],
        options: ConsumerOptions::default(),
        dead_letter: None,
    };
    let running: RunningEngine = EngineBuilder::new("rt")
        .backend("z", Arc::new(ZeroMqBackend::new("z", cfg)))
        .consumer(spec, Arc::new(Echo))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let mut sub = SubSocket::new();
    while sub.connect(&out).await.is_err() {
        sleep(Duration::from_millis(20)).await;
    }
    sub.subscribe("rt.back").await.unwrap();
    // Warm up until replies come back.
    loop {
        publisher.send(envelope("rt.go", 0, 0)).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(50), sub.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    sleep(Duration::from_millis(200)).await;
    while tokio::time::timeout(Duration::from_millis(50), sub.recv())
        .await
        .is_ok()
    {}
    let mut times = Vec::with_capacity(RTT_N);
    for i in 0..RTT_N as u64 {
        let t = Instant::now();
        publisher
            .send(envelope("rt.go", i, pad_for(200)))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), sub.recv())
            .await
            .expect("reply within 2 s")
            .unwrap();
        times.push(t.elapsed());
    }
    running.shutdown(Duration::from_secs(5)).await;
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    (pct(0.50), pct(0.99), pct(0.999))
}

/// The hub's own work per message without sockets or threads, for instruction counts under
/// `valgrind --tool=callgrind` (deterministic where times on a shared VM are not): on one
/// thread, decode batches of 64 envelopes, hand each batch to the dispatcher, and let the
/// `consumers` no-op workers run it. Prints the time per message too, for what it is worth.
fn pipeline(consumers: usize) {
    use hub_core::{Delivery, Resources, Sink};
    use hub_engine::{Dispatcher, MemoryBackend, Registry};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = *N_SENT;
    let frames: Vec<Vec<bytes::Bytes>> = (0..64)
        .map(|i| envelope("org.fedoraproject.prod.bench.msg", i, pad_for(200)).into_vec())
        .collect();
    rt.block_on(async {
        let mut b = Dispatcher::builder(Registry::new());
        let backend = b.backend("bench");
        let mem: Arc<dyn hub_core::Backend> = Arc::new(MemoryBackend::new());
        let epoch = Instant::now();
        let counters: Vec<Arc<Arrivals>> = (0..consumers)
            .map(|_| Arc::new(Arrivals::default()))
            .collect();
        for (i, c) in counters.iter().enumerate() {
            let cx = Context::new(
                format!("c{i}"),
                b.publisher(backend, Arc::clone(&mem)),
                Resources::new(),
                hub_core::CancellationToken::new(),
            );
            b.consumer(
                backend,
                vec![Pattern::new("org.fedoraproject.#").unwrap()],
                ConsumerOptions::default(),
                Arc::new(Noop(c.clone(), epoch)),
                cx,
            );
        }
        let d = b.build();
        d.start();
        let sink = Sink::new(d.intake(backend));
        let t = Instant::now();
        let mut sent = 0;
        let mut batch = Vec::with_capacity(64);
        while sent < n {
            for f in &frames {
                let (msg, _) = codec::decode_with_seq(Format::Fedmsg, f).unwrap();
                batch.push(Delivery::new(msg));
            }
            sent += 64;
            sink.deliver_many(batch.drain(..)).await.unwrap();
            while slowest(&counters) < sent {
                tokio::task::yield_now().await;
            }
        }
        println!(
            "pipeline, {consumers} consumer(s): {:.0} ns per message on one thread",
            t.elapsed().as_nanos() as f64 / sent as f64
        );
        d.drain(Duration::from_secs(5)).await;
    });
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`, 100 ticks/s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command name start at field 3 (state): utime is 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // HUB_BENCH_ONLY=raw|floor1|floor4|validate-inline|handoff-only|hub1|hub4 runs one case five times (`HUB_BENCH_RUNS`; for profiling), with the CPU time
    // the process used; =rtt the round trip three times; =decode the decoder alone.
    let only = std::env::var("HUB_BENCH_ONLY").ok();
    if only.as_deref() == Some("decode") {
        // Decoding alone: one ~200-byte envelope, decoded and dropped, 1 000 000 times.
        let m = envelope("org.fedoraproject.prod.bench.msg", 7, pad_for(200));
        let frames = m.into_vec();
        let n = 1_000_000u32;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(
                codec::decode(Format::Fedmsg, std::hint::black_box(&frames)).unwrap(),
            );
        }
        println!(
            "decode: {:.0} ns per envelope",
            t.elapsed().as_nanos() as f64 / f64::from(n)
        );
        // The floor under any decoder that rejects invalid JSON: serde_json checking the
        // envelope and keeping nothing.
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(
                serde_json::from_slice::<serde::de::IgnoredAny>(std::hint::black_box(&frames[1]))
                    .unwrap(),
            );
        }
        println!(
            "validate only: {:.0} ns per envelope ({} B)",
            t.elapsed().as_nanos() as f64 / f64::from(n),
            frames[1].len()
        );
        return;
    }
    if let Some(consumers) = match only.as_deref() {
        Some("pipeline1") => Some(1),
        Some("pipeline4") => Some(4),
        _ => None,
    } {
        pipeline(consumers);
        return;
    }
    if only.as_deref() == Some("rtt") {
        rt.block_on(async {
            for _ in 0..3 {
                let (p50, p99, p999) = round_trip().await;
                println!(
                    "round trip: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
                    p50.as_secs_f64() * 1e6,
                    p99.as_secs_f64() * 1e6,
                    p999.as_secs_f64() * 1e6
                );
            }
        });
        return;
    }
    if let Some(only) = only.as_deref() {
        let runs: usize = env_or("HUB_BENCH_RUNS", 5);
        rt.block_on(async {
            for _ in 0..runs {
                let run = match only {
                    "raw" => raw(pad_for(200)).await,
                    "floor1" => floor(pad_for(200), true, 1).await,
                    "floor4" => floor(pad_for(200), true, 4).await,
                    "validate-inline" => floor(pad_for(200), true, 0).await,
                    "handoff-only" => floor(pad_for(200), false, 1).await,
                    "hub4" => hub(pad_for(200), 4).await,
                    _ => hub(pad_for(200), 1).await,
                };
                println!(
                    "{only}: {:.0} k msg/s ({} arrived); process CPU {:.2} µs per message",
                    run.rate / 1e3,
                    run.arrived,
                    run.cpu_us
                );
            }
        });
        return;
    }
    // On a shared VM the machine's speed drifts within a minute, so the cases run in turns
    // (a, b, c, d, e, then again) and each ratio is taken within one turn: a figure is the
    // median over the turns, with the range of the ratios beside it.
    let rounds: usize = env_or("HUB_BENCH_ROUNDS", 3_usize).max(1);
    rt.block_on(async {
        println!("Median of {rounds} turns (ratios: median, and min–max over the turns).");
        println!();
        println!("| envelope | (a) raw zeromq PUB→SUB | (b) hub, 1 consumer | (c) hub, 4 consumers | b/a | c/a | (d) floor, 1 task | (e) floor, 4 tasks | d/a | e/a | b/d | c/e | process CPU per message a / b / c / d / e |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for size in [200usize, 1024] {
            let pad = pad_for(size);
            let mut turns: Vec<[Run; 5]> = Vec::new();
            for _ in 0..rounds {
                turns.push([
                    raw(pad).await,
                    hub(pad, 1).await,
                    hub(pad, 4).await,
                    floor(pad, true, 1).await,
                    floor(pad, true, 4).await,
                ]);
            }
            let n = *N_SENT;
            let rate = |i: usize| median(turns.iter().map(|t| t[i].rate).collect());
            let cpu = |i: usize| median(turns.iter().map(|t| t[i].cpu_us).collect());
            let least = |i: usize| turns.iter().map(|t| t[i].arrived).min().unwrap_or(0);
            let k = |i: usize| format!("{:.0} k msg/s", rate(i) / 1e3);
            let ratio = |x: usize, y: usize| {
                let r: Vec<f64> = turns.iter().map(|t| t[x].rate / t[y].rate).collect();
                let (lo, hi) = r.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                format!("{:.2} ({lo:.2}–{hi:.2})", median(r))
            };
            println!(
                "| {size} B | {} ({}/{n} arrived) | {} ({}/{n}) | {} ({}/{n} at the slowest) | {} | {} | {} ({}/{n}) | {} ({}/{n}) | {} | {} | {} | {} | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} µs |",
                k(0), least(0), k(1), least(1), k(2), least(2),
                ratio(1, 0), ratio(2, 0),
                k(3), least(3), k(4), least(4),
                ratio(3, 0), ratio(4, 0), ratio(1, 3), ratio(2, 4),
                cpu(0), cpu(1), cpu(2), cpu(3), cpu(4)
            );
        }
        let (p50, p99, p999) = round_trip().await;
        println!();
        println!("Round trip PUB → hub → reply consumer → hub PUB → SUB, {RTT_N} messages one at a time (~200 B):");
        println!("p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs", p50.as_secs_f64() * 1e6, p99.as_secs_f64() * 1e6, p999.as_secs_f64() * 1e6);
    });
}
