//! `http` consumer harness: prints a table. Run: `scripts/bench-http`
//! (or `cargo bench -p hub-http --bench webhook`).
//!
//! A local HTTP server (axum, in a child process: this binary again, run with
//! `HUB_BENCH_SERVER=<delay ms>:<port file>`, so its memory is not counted here) answers every
//! POST after 100 ms, or at once. Against it, N messages (`HUB_BENCH_MESSAGES`, default 10 000)
//! go through the memory backend into an `http` consumer (rate = messages / time from the first
//! publish until the consumer has finished N, every one counted `outcome="ok"` in
//! `hub_consumer_processed_messages_total`), beside raw reqwest (the
//! crate's `client_builder()`) sending N POSTs with the same concurrency
//! (`buffer_unordered`): the floor for any hub design. Each case runs twice, the hub and raw runs
//! in turns, after a warm-up of `max(HUB_BENCH_WARMUP (300), concurrency)` requests that fills
//! the keep-alive pool; the better run counts. Each run also gives this process's CPU time per
//! request (the client side: the server is another process).
//! `HUB_BENCH_ONLY=c100|c1000|fast|memory` runs one part (for profiling), without the table.
//!
//! Memory per request in flight: a fresh child process (`HUB_BENCH_MEMORY=hub|raw:...`) runs
//! one concurrency-1000 case against the 100 ms server; (VmHWM at the end − VmRSS before the
//! first request) / 1000.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

/// The allocator the `hub` binary ships with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream;
use hub_core::{ConsumerOptions, Message, Pattern, Resources, RetryPolicy};
use hub_engine::metrics::sample;
use hub_engine::{ConsumerSpec, EngineBuilder, MemoryBackend, RunningEngine};
use hub_http::HttpConfig;
use hub_http::reqwest;
use hub_testkit::build_consumer;
use serde_json::json;

const SERVER_ENV: &str = "HUB_BENCH_SERVER";
const MEMORY_ENV: &str = "HUB_BENCH_MEMORY";
const OK_SERIES: &str = r#"hub_consumer_processed_messages_total{consumer="hook",outcome="ok"}"#;
const FAILED_OUTCOMES: [&str; 4] = ["transient", "invalid", "timeout", "panic"];
/// How often the hub's counter is read while a run goes on.
const POLL: Duration = Duration::from_millis(1);
const SLOW_MS: u64 = 100;
const MEMORY_CONCURRENCY: usize = 1000;

/// The environment variable `name` parsed, or `default` when it is unset or does not parse.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn messages() -> usize {
    env_or("HUB_BENCH_MESSAGES", 10_000_usize).max(1)
}

fn warmup(concurrency: usize) -> usize {
    env_or("HUB_BENCH_WARMUP", 300_usize).max(concurrency)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The server (child process)

/// Nanoseconds on a CPU of this process's live threads so far (`/proc/self/task/*/schedstat`).
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One measured run.
#[derive(Clone, Copy)]
struct Run {
    /// Messages (or requests) per second.
    rate: f64,
    /// CPU time of this process (the client side; the server is another process) per message.
    cpu_us: f64,
}

impl Run {
    /// `n` done in `secs`, from `cpu_before` ([`cpu_ns`]) until now.
    fn new(n: usize, secs: f64, cpu_before: u64) -> Self {
        let cpu = cpu_ns().saturating_sub(cpu_before);
        Self {
            rate: n as f64 / secs,
            cpu_us: cpu as f64 / 1000.0 / n as f64,
        }
    }
}

/// `HUB_BENCH_SERVER=<delay ms>:<port file>`: serves `POST /hook` (200, empty body, after the
/// delay) on 127.0.0.1:0, writes the port to the file, and exits when its stdin closes (the
/// parent gone, whatever the reason).
fn serve(spec: &str) {
    let (delay, port_file) = spec.split_once(':').expect("<delay ms>:<port file>");
    let delay = Duration::from_millis(delay.parse().expect("delay in ms"));
    let port_file = PathBuf::from(port_file);
    runtime().block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // Room for 1000 connections opened at once.
        let listener = socket.listen(4096).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tmp = port_file.with_extension("tmp");
        std::fs::write(&tmp, port.to_string()).unwrap();
        std::fs::rename(&tmp, &port_file).unwrap();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |_body: axum::body::Bytes| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                axum::http::StatusCode::OK
            }),
        );
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(listener, app);
        let parent_gone = tokio::task::spawn_blocking(|| {
            let mut sink = [0_u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        });
        tokio::select! {
            r = server => r.unwrap(),
            _ = parent_gone => {}
        }
    });
}

/// A server child; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    /// Holds the port file.
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(delay_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let child = Command::new(std::env::current_exe().unwrap())
            .env(SERVER_ENV, format!("{delay_ms}:{}", port_file.display()))
            .env_remove(MEMORY_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the server child did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The two clients

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hook")
}

/// Waits until the consumer has finished `target` messages, then checks, in the hub's own
/// series, that every one was answered 2xx. Polls the dispatcher's state every millisecond (a
/// few atomics; rendering `/metrics` that often took a fifth of the process's CPU on 2 cores).
async fn wait_for(running: &RunningEngine, target: usize) -> Instant {
    let completed = || {
        running
            .dispatcher()
            .states()
            .iter()
            .find(|s| s.name == "hook")
            .map_or(0, |s| s.completed)
    };
    while completed() < target as u64 {
        tokio::time::sleep(POLL).await;
    }
    let now = Instant::now();
    let metrics = running.metrics().render();
    let failed: Vec<String> = FAILED_OUTCOMES
        .iter()
        .filter_map(|o| {
            let series = format!(
                r#"hub_consumer_processed_messages_total{{consumer="hook",outcome="{o}"}}"#
            );
            sample(&metrics, &series)
                .filter(|n| *n > 0.0)
                .map(|n| format!("{o}: {n}"))
        })
        .collect();
    assert!(failed.is_empty(), "callbacks failed: {failed:?}");
    assert_eq!(sample(&metrics, OK_SERIES), Some(target as f64));
    now
}

/// N messages through the memory backend into an `http` consumer; callbacks per second.
async fn hub_run(port: u16, concurrency: usize, n: usize, warm: usize) -> Run {
    hub_case(port, concurrency, n, warm, || {}).await
}

/// The hub run; `before_first` is called once the hub is up and warm, just before the first
/// measured publish.
async fn hub_case(
    port: u16,
    concurrency: usize,
    n: usize,
    warm: usize,
    before_first: impl FnOnce(),
) -> Run {
    let settings = format!("url = \"{}\"\ntimeout = \"30s\"", url(port));
    let consumer = build_consumer::<HttpConfig>(&settings, &Resources::new()).unwrap();
    let spec = ConsumerSpec {
        name: "hook".into(),
        backend: "mem".into(),
        patterns: vec![Pattern::new("bench.#").unwrap()],
        options: ConsumerOptions {
            concurrency,
            // Publishing never waits for room.
            queue_capacity: (n + warm).max(10_000),
            retry: Some(RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            }),
            ..ConsumerOptions::default()
        },
        dead_letter: None,
    };
    let running = EngineBuilder::new("bench")
        .backend("mem", Arc::new(MemoryBackend::new()))
        .consumer(spec, consumer)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    while !running.readiness().ready {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let publisher = running.publisher("mem").unwrap();
    for i in 0..warm {
        let msg = Message::new("bench.x", json!({"i": i}));
        publisher.publish(msg).await.unwrap();
    }
    wait_for(&running, warm).await;
    before_first();
    let cpu = cpu_ns();
    let start = Instant::now();
    for i in 0..n {
        let msg = Message::new("bench.x", json!({"i": i}));
        publisher.publish(msg).await.unwrap();
    }
    let end = wait_for(&running, warm + n).await;
    let secs = end.duration_since(start).as_secs_f64();
    let run = Run::new(n, secs, cpu);
    let report = running.shutdown(Duration::from_secs(30)).await;
    assert!(report.drain.is_clean(), "{:?}", report.drain);
    run
}

/// `count` POSTs, `concurrency` at once, like the consumer's (JSON body, `X-Hub-*` headers,
/// answer read); panics on any failure.
async fn raw_batch(client: &reqwest::Client, url: &str, concurrency: usize, count: usize) {
    let failed = stream::iter(0..count)
        .map(|i| {
            let request = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-hub-topic", "bench.x")
                .header("x-hub-message-id", "0b6a2bb4-6d0c-4c7e-9d1e-6f1f0f2c8a11")
                .header("x-hub-attempt", "1")
                .timeout(Duration::from_secs(30))
                .body(serde_json::to_vec(&json!({"i": i})).unwrap());
            async move {
                let response = request.send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                response.bytes().await.map_err(|e| e.to_string())?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            }
        })
        .buffer_unordered(concurrency)
        .filter_map(|r: Result<(), String>| async move { r.err() })
        .collect::<Vec<_>>()
        .await;
    assert!(
        failed.is_empty(),
        "{} requests failed, first: {}",
        failed.len(),
        failed[0]
    );
}

fn raw_client() -> reqwest::Client {
    hub_http::client_builder().unwrap().build().unwrap()
}

/// N raw reqwest POSTs at `concurrency`; requests per second.
async fn raw_run(port: u16, concurrency: usize, n: usize, warm: usize) -> Run {
    let client = raw_client();
    let url = url(port);
    raw_batch(&client, &url, concurrency, warm).await;
    let cpu = cpu_ns();
    let start = Instant::now();
    raw_batch(&client, &url, concurrency, n).await;
    Run::new(n, start.elapsed().as_secs_f64(), cpu)
}

// ---------------------------------------------------------------------------------------------
// Memory (child process)

/// `(name, kB)` of the `Vm*` lines of /proc/self/status.
fn proc_status_kb(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `HUB_BENCH_MEMORY=<hub|raw>:<port>:<messages>`: one concurrency-1000 run from a fresh
/// process; prints `MEMORY <rss before kB> <peak kB> <rate>`.
fn memory_child(spec: &str) {
    let mut parts = spec.split(':');
    let (kind, port, n) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().parse::<u16>().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
    );
    let before = Arc::new(std::sync::Mutex::new(0_u64));
    let rate = runtime().block_on(async {
        match kind.as_str() {
            // A few messages first, so one-off initialisation is not counted.
            "hub" => {
                let before = Arc::clone(&before);
                hub_case(port, MEMORY_CONCURRENCY, n, 10, move || {
                    *before.lock().unwrap() = proc_status_kb("VmRSS");
                })
                .await
                .rate
            }
            "raw" => {
                let client = raw_client();
                let url = url(port);
                raw_batch(&client, &url, 1, 10).await;
                *before.lock().unwrap() = proc_status_kb("VmRSS");
                let start = Instant::now();
                raw_batch(&client, &url, MEMORY_CONCURRENCY, n).await;
                n as f64 / start.elapsed().as_secs_f64()
            }
            other => panic!("unknown memory case {other}"),
        }
    });
    let before = *before.lock().unwrap();
    println!("MEMORY {before} {} {rate}", proc_status_kb("VmHWM"));
}

struct Memory {
    before_kb: u64,
    peak_kb: u64,
}

impl Memory {
    fn per_request_kib(&self) -> f64 {
        self.peak_kb.saturating_sub(self.before_kb) as f64 / MEMORY_CONCURRENCY as f64
    }
}

fn memory_case(kind: &str, port: u16, n: usize) -> Memory {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(MEMORY_ENV, format!("{kind}:{port}:{n}"))
        .env_remove(SERVER_ENV)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "memory child failed: {}", out.status);
    let line = out
        .stdout
        .lines()
        .map(Result::unwrap)
        .find(|l| l.starts_with("MEMORY "))
        .expect("the memory child printed no MEMORY line");
    let f: Vec<&str> = line.split_whitespace().collect();
    let m = Memory {
        before_kb: f[1].parse().unwrap(),
        peak_kb: f[2].parse().unwrap(),
    };
    let rate: f64 = f[3].parse().unwrap();
    println!(
        "  memory {kind:<3} {n:>6} msgs: RSS before {:>7} kB, peak (VmHWM) {:>7} kB → {:>6.1} KiB per request in flight ({rate:.0}/s)",
        m.before_kb,
        m.peak_kb,
        m.per_request_kib()
    );
    m
}

// ---------------------------------------------------------------------------------------------
// The table

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("?")
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{nproc} CPUs (nproc), {model}; Linux {}; open files soft limit {nofile}",
        kernel.trim()
    )
}

/// Two hub runs and two raw runs, in turns.
struct Case {
    title: String,
    hub: Vec<Run>,
    raw: Vec<Run>,
}

impl Case {
    fn hub_best(&self) -> Run {
        best(&self.hub)
    }
    fn raw_best(&self) -> Run {
        best(&self.raw)
    }
    fn ratio(&self) -> f64 {
        self.hub_best().rate / self.raw_best().rate
    }
}

/// The fastest run.
fn best(runs: &[Run]) -> Run {
    runs.iter()
        .copied()
        .reduce(|a, b| if a.rate >= b.rate { a } else { b })
        .expect("at least one run")
}

fn runs(v: &[Run]) -> String {
    v.iter()
        .map(|r| format!("{:.0}", r.rate))
        .collect::<Vec<_>>()
        .join(", ")
}

fn run_case(
    rt: &tokio::runtime::Runtime,
    title: &str,
    port: u16,
    concurrency: usize,
    n: usize,
) -> Case {
    let warm = warmup(concurrency);
    println!("{title} ({n} messages, warm-up {warm}):");
    let mut case = Case {
        title: title.to_owned(),
        hub: Vec::new(),
        raw: Vec::new(),
    };
    for round in 1..=2 {
        let hub = rt.block_on(hub_run(port, concurrency, n, warm));
        println!(
            "  run {round}  hub {:>8.0} callbacks/s  client CPU {:>5.1} µs/callback",
            hub.rate, hub.cpu_us
        );
        case.hub.push(hub);
        let raw = rt.block_on(raw_run(port, concurrency, n, warm));
        println!(
            "  run {round}  raw {:>8.0} requests/s   client CPU {:>5.1} µs/request   (hub/raw {:.3})",
            raw.rate,
            raw.cpu_us,
            hub.rate / raw.rate
        );
        case.raw.push(raw);
    }
    println!(
        "  best     hub {:.0}/s, raw {:.0}/s, hub/raw {:.3}",
        case.hub_best().rate,
        case.raw_best().rate,
        case.ratio()
    );
    case
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "FAIL" }
}

fn main() {
    if let Ok(spec) = std::env::var(SERVER_ENV) {
        return serve(&spec);
    }
    if let Ok(spec) = std::env::var(MEMORY_ENV) {
        return memory_child(&spec);
    }
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs bench targets without `--bench`: nothing to check here.
    }
    // HUB_BENCH_ONLY=c100|c1000|fast|memory runs one part (for profiling); no table then.
    let only = std::env::var("HUB_BENCH_ONLY").ok();
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let n = messages();
    let machine = machine();
    println!("# http consumer benchmark");
    println!("machine: {machine}");
    println!(
        "servers: axum in child processes on 127.0.0.1, one answering after {SLOW_MS} ms, one at once"
    );
    println!();
    let started = Instant::now();
    let slow = Server::start(SLOW_MS);
    let instant = Server::start(0);
    let rt = runtime();

    let c100 =
        wanted("c100").then(|| run_case(&rt, "100 ms server, concurrency 100", slow.port, 100, n));
    let c1000 = wanted("c1000")
        .then(|| run_case(&rt, "100 ms server, concurrency 1000", slow.port, 1000, n));
    let fast = wanted("fast").then(|| {
        run_case(
            &rt,
            "immediate server, concurrency 100 (max rate)",
            instant.port,
            100,
            n,
        )
    });
    drop(rt);
    let memory = wanted("memory").then(|| {
        println!("memory, concurrency {MEMORY_CONCURRENCY}, 100 ms server (each a fresh process):");
        [
            memory_case("hub", slow.port, n),
            memory_case("raw", slow.port, n),
            memory_case("hub", slow.port, MEMORY_CONCURRENCY),
            memory_case("raw", slow.port, MEMORY_CONCURRENCY),
        ]
    });
    drop(slow);
    drop(instant);
    let (Some(c100), Some(c1000), Some(fast), Some([mem_hub, mem_raw, mem_hub_1k, mem_raw_1k])) =
        (c100, c1000, fast, memory)
    else {
        println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
        return;
    };

    let ideal100 = 100.0 * 1000.0 / SLOW_MS as f64;
    let target100 = 0.9 * ideal100;
    println!();
    println!("## http consumer: {n} messages, memory backend → `http` consumer vs raw reqwest");
    println!();
    println!("Machine: {machine}.");
    println!();
    println!(
        "| case | hub callbacks/s (best; runs) | raw reqwest requests/s (best; runs) | hub/raw | client CPU µs per request, hub / raw |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for c in [&c100, &c1000, &fast] {
        println!(
            "| {} | {:.0} ({}) | {:.0} ({}) | {:.3} | {:.1} / {:.1} |",
            c.title,
            c.hub_best().rate,
            runs(&c.hub),
            c.raw_best().rate,
            runs(&c.raw),
            c.ratio(),
            c.hub_best().cpu_us,
            c.raw_best().cpu_us
        );
    }
    println!();
    println!(
        "| memory per request in flight (concurrency {MEMORY_CONCURRENCY}, 100 ms server; (VmHWM − VmRSS before) / {MEMORY_CONCURRENCY}) | hub | raw reqwest |"
    );
    println!("| --- | ---: | ---: |");
    println!(
        "| {n} messages (the hub's queue holds the {} not yet in flight) | {:.1} KiB | {:.1} KiB |",
        n.saturating_sub(MEMORY_CONCURRENCY),
        mem_hub.per_request_kib(),
        mem_raw.per_request_kib()
    );
    println!(
        "| {MEMORY_CONCURRENCY} messages (all in flight at once, no backlog) | {:.1} KiB | {:.1} KiB |",
        mem_hub_1k.per_request_kib(),
        mem_raw_1k.per_request_kib()
    );
    println!();
    println!("| target | measured | result |");
    println!("| --- | ---: | :---: |");
    let hub100 = c100.hub_best().rate;
    println!(
        "| ≥ {target100:.0} callbacks/s at concurrency 100, 100 ms server (ceiling {ideal100:.0}) | {hub100:.0} | {} |",
        verdict(hub100 >= target100)
    );
    for c in [&c100, &c1000] {
        println!(
            "| hub ≥ 0.9 × raw: {} | {:.3} | {} |",
            c.title,
            c.ratio(),
            verdict(c.ratio() >= 0.9)
        );
    }
    println!();
    println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
    std::io::stdout().flush().unwrap();
}
