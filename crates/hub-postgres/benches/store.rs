//! `postgres` store harness: prints Markdown tables. Run: `scripts/bench-postgres`
//! (or `cargo bench -p hub-postgres --bench store`). Needs PostgreSQL at 127.0.0.1:5432, user
//! `postgres`, database `test`; works in a schema of its own (`hub_bench_<uuid>`), dropped at
//! the end.
//!
//! - **hub**: N messages (`HUB_BENCH_MESSAGES`, default 100 000; bodies of 200 bytes of
//!   JSON) published on the memory backend into a `postgres` store consumer with
//!   `batch_size = 500` (`batch_delay` 20 ms, concurrency 1): rows per second from the first
//!   publish until the consumer has stored N (counted OK by a thin wrapper that forwards
//!   `consume_batch`), then checked with `count(*)`.
//! - **raw**: the same rows, with the same pool (tokio-postgres under deadpool), the same
//!   statement, 500 rows per transaction, one transaction after the other, no hub.
//! - **hub, batch_size 1**: one row per transaction (`HUB_BENCH_SINGLE` messages, default
//!   10 000), for contrast.
//!
//! Each case writes into a fresh table of its own (created by the store's migration). hub and
//! raw run three times, in turns; the best run of each counts (the server's own noise,
//! checkpoints and autovacuum, is ±15 % from run to run on a 2-core machine). `synchronous_commit` is left at the server's
//! setting (printed).
//!
//! A second table compares ways to send a batch of 500 (raw, same rows, three runs each, in
//! turns): `unnest` of arrays (what the store does), one multi-row `VALUES` statement, and
//! binary `COPY` into a temporary table followed by `INSERT ... SELECT ... ON CONFLICT DO
//! NOTHING`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

/// The allocator the `hub` binary ships with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, ConsumerOptions, Context, Message, Pattern,
    ResourceConfig, Resources, RetryPolicy, Timestamp, async_trait, json,
};
use hub_engine::{ConsumerSpec, EngineBuilder, MemoryBackend};
use hub_postgres::deadpool_postgres::Pool;
use hub_postgres::tokio_postgres::binary_copy::BinaryCopyInWriter;
use hub_postgres::tokio_postgres::types::{Json, ToSql, Type};
use hub_postgres::{PgPoolConfig, PostgresStoreConfig};

const URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test application_name=hub_bench";
const BATCH: usize = 500;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` messages with bodies of 200 bytes of JSON, ids starting with `prefix`.
fn messages(prefix: &str, n: usize) -> Vec<Message> {
    let text = "the quick brown fox jumps over the lazy dog; ".repeat(5);
    (0..n)
        .map(|i| {
            // `{"i":N,"user":"bench","text":"..."}`, the text filling it to 200 bytes.
            let frame = format!(r#"{{"i":{i},"user":"bench","text":""}}"#).len();
            let body = json!({"i": i, "user": "bench", "text": &text[..200 - frame]});
            debug_assert_eq!(body.to_string().len(), 200);
            Message::builder(format!("org.example.bench.t{}", i % 16), body)
                .id(format!("{prefix}-{i:08}"))
                .build()
        })
        .collect()
}

/// Counts what the store finished OK; forwards everything.
struct Counting {
    inner: Arc<dyn Consumer>,
    ok: AtomicUsize,
    failed: AtomicUsize,
    calls: AtomicUsize,
}

#[async_trait]
impl Consumer for Counting {
    async fn start(&self, cx: &Context) -> Result<(), BoxError> {
        self.inner.start(cx).await
    }

    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let r = self.inner.consume(cx, msg).await;
        self.calls.fetch_add(1, Ordering::Relaxed);
        match &r {
            Ok(()) => self.ok.fetch_add(1, Ordering::Release),
            Err(_) => self.failed.fetch_add(1, Ordering::Release),
        };
        r
    }

    async fn consume_batch(
        &self,
        cx: &Context,
        batch: &[Message],
    ) -> Vec<Result<(), ConsumeError>> {
        let results = self.inner.consume_batch(cx, batch).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.failed.fetch_add(batch.len() - ok, Ordering::Release);
        self.ok.fetch_add(ok, Ordering::Release);
        results
    }
}

struct Run {
    rows: usize,
    secs: f64,
    calls: usize,
}

impl Run {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

/// The messages through the hub into a store on `table`, `batch_size` at a time.
async fn hub_run(pool: &Pool, table: &str, msgs: &[Message], batch_size: usize) -> Run {
    let resources = Resources::new().with_named("main", pool.clone());
    let store = PostgresStoreConfig {
        pool: "main".into(),
        table: table.into(),
        create_schema: true,
    }
    .build(&resources)
    .unwrap();
    let counting = Arc::new(Counting {
        inner: store,
        ok: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
    });
    let spec = ConsumerSpec {
        name: "store".into(),
        backend: "mem".into(),
        patterns: vec![Pattern::new("org.#").unwrap()],
        options: ConsumerOptions {
            batch_size,
            batch_delay: if batch_size > 1 {
                Duration::from_millis(20)
            } else {
                Duration::ZERO
            },
            queue_capacity: 10_000,
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
        .resources(resources)
        .consumer(spec, Arc::clone(&counting) as Arc<dyn Consumer>)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    while !running.readiness().ready {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let publisher = running.publisher("mem").unwrap();
    let start = Instant::now();
    for m in msgs {
        publisher.publish(m.clone()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while counting.ok.load(Ordering::Acquire) < msgs.len() {
        assert_eq!(counting.failed.load(Ordering::Acquire), 0, "a batch failed");
        assert!(Instant::now() < deadline, "the store did not finish");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let report = running.shutdown(Duration::from_secs(30)).await;
    assert!(report.drain.is_clean(), "{:?}", report.drain);
    assert_eq!(count(pool, table).await, msgs.len() as i64);
    Run {
        rows: msgs.len(),
        secs,
        calls: counting.calls.load(Ordering::Relaxed),
    }
}

/// How a raw run sends one batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Unnest,
    Values,
    Copy,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Self::Unnest => "unnest($1::text[], ...) (the store's)",
            Self::Values => "multi-row VALUES (500 × 6 parameters)",
            Self::Copy => "binary COPY to a temp table + INSERT ... SELECT",
        }
    }
}

fn unnest_sql(t: &str) -> String {
    format!(
        "INSERT INTO {t} (id, topic, sent_at, received_at, headers, body) \
         SELECT id, topic, sent_at, $4, headers, body \
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $5::jsonb[], $6::jsonb[]) \
           AS m(id, topic, sent_at, headers, body) \
         ON CONFLICT (id) DO NOTHING"
    )
}

fn values_sql(t: &str, rows: usize) -> String {
    let mut s = format!("INSERT INTO {t} (id, topic, sent_at, received_at, headers, body) VALUES ");
    for r in 0..rows {
        let p = 2 + r * 5;
        if r > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "(${}, ${}, ${}, $1, ${}, ${})",
            p,
            p + 1,
            p + 2,
            p + 3,
            p + 4
        ));
    }
    s.push_str(" ON CONFLICT (id) DO NOTHING");
    s
}

/// The same rows without the hub: `BATCH` rows per transaction, one after the other.
async fn raw_run(pool: &Pool, table: &str, msgs: &[Message], method: Method) -> Run {
    create_table(pool, table).await;
    let mut client = pool.get().await.unwrap();
    let t = quoted(table);
    if method == Method::Copy {
        client
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS hub_stage (id text, topic text, \
                 sent_at timestamptz, headers jsonb, body jsonb) ON COMMIT DELETE ROWS",
            )
            .await
            .unwrap();
    }
    let start = Instant::now();
    let mut calls = 0;
    for chunk in msgs.chunks(BATCH) {
        calls += 1;
        let received = Timestamp::now();
        let tx = client.transaction().await.unwrap();
        match method {
            Method::Unnest => {
                let stmt = tx.prepare_cached(&unnest_sql(&t)).await.unwrap();
                let ids: Vec<&str> = chunk.iter().map(Message::id).collect();
                let topics: Vec<&str> = chunk.iter().map(Message::topic).collect();
                let sent: Vec<Timestamp> = chunk.iter().map(Message::timestamp).collect();
                let headers: Vec<_> = chunk.iter().map(|m| Json(m.headers())).collect();
                let bodies: Vec<_> = chunk.iter().map(|m| Json(m.body())).collect();
                tx.execute(&stmt, &[&ids, &topics, &sent, &received, &headers, &bodies])
                    .await
                    .unwrap();
            }
            Method::Values => {
                let stmt = tx
                    .prepare_cached(&values_sql(&t, chunk.len()))
                    .await
                    .unwrap();
                let ids: Vec<&str> = chunk.iter().map(Message::id).collect();
                let topics: Vec<&str> = chunk.iter().map(Message::topic).collect();
                let sent: Vec<Timestamp> = chunk.iter().map(Message::timestamp).collect();
                let headers: Vec<_> = chunk.iter().map(|m| Json(m.headers())).collect();
                let bodies: Vec<_> = chunk.iter().map(|m| Json(m.body())).collect();
                let mut params: Vec<&(dyn ToSql + Sync)> = vec![&received];
                for i in 0..chunk.len() {
                    params.push(&ids[i]);
                    params.push(&topics[i]);
                    params.push(&sent[i]);
                    params.push(&headers[i]);
                    params.push(&bodies[i]);
                }
                tx.execute(&stmt, &params).await.unwrap();
            }
            Method::Copy => {
                let sink = tx
                    .copy_in("COPY hub_stage FROM STDIN (FORMAT binary)")
                    .await
                    .unwrap();
                let writer = BinaryCopyInWriter::new(
                    sink,
                    &[
                        Type::TEXT,
                        Type::TEXT,
                        Type::TIMESTAMPTZ,
                        Type::JSONB,
                        Type::JSONB,
                    ],
                );
                let mut writer = std::pin::pin!(writer);
                for m in chunk {
                    let (id, topic, sent) = (m.id(), m.topic(), m.timestamp());
                    writer
                        .as_mut()
                        .write(&[&id, &topic, &sent, &Json(m.headers()), &Json(m.body())])
                        .await
                        .unwrap();
                }
                writer.finish().await.unwrap();
                tx.execute(
                    &format!(
                        "INSERT INTO {t} (id, topic, sent_at, received_at, headers, body) \
                         SELECT id, topic, sent_at, $1, headers, body FROM hub_stage \
                         ON CONFLICT (id) DO NOTHING"
                    ),
                    &[&received],
                )
                .await
                .unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    drop(client);
    assert_eq!(count(pool, table).await, msgs.len() as i64);
    Run {
        rows: msgs.len(),
        secs,
        calls,
    }
}

/// `"schema"."table"` from `schema.table`.
fn quoted(table: &str) -> String {
    table
        .split('.')
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(".")
}

/// Creates `table` as the store's migration does (by starting a store on it).
async fn create_table(pool: &Pool, table: &str) {
    let resources = Resources::new().with_named("main", pool.clone());
    let store = PostgresStoreConfig {
        pool: "main".into(),
        table: table.into(),
        create_schema: true,
    }
    .build(&resources)
    .unwrap();
    let publisher = hub_core::Publisher::new(
        Arc::new(MemoryBackend::new()),
        hub_core::metrics::Counter::noop(),
        hub_core::metrics::Counter::noop(),
    );
    let cx = Context::new(
        "bench",
        publisher,
        Resources::new(),
        hub_core::CancellationToken::new(),
    );
    store.start(&cx).await.unwrap();
}

async fn count(pool: &Pool, table: &str) -> i64 {
    let client = pool.get().await.unwrap();
    client
        .query_one(&format!("SELECT count(*) FROM {}", quoted(table)), &[])
        .await
        .unwrap()
        .get(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let n: usize = env_or("HUB_BENCH_MESSAGES", 100_000_usize).max(BATCH);
    let single: usize = env_or("HUB_BENCH_SINGLE", 10_000_usize).max(1);
    let pool = PgPoolConfig::new(URL).max_size(4).build("bench").unwrap();
    let schema = format!(
        "hub_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let (version, sync_commit, fsync) = {
        let client = pool.get().await.expect("PostgreSQL at 127.0.0.1:5432");
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let show = |row: hub_postgres::tokio_postgres::Row| row.get::<_, String>(0);
        (
            show(client.query_one("SHOW server_version", &[]).await.unwrap()),
            show(
                client
                    .query_one("SHOW synchronous_commit", &[])
                    .await
                    .unwrap(),
            ),
            show(client.query_one("SHOW fsync", &[]).await.unwrap()),
        )
    };
    let body_len = messages("x", 1)[0].body().to_string().len();
    println!(
        "PostgreSQL {version}, synchronous_commit = {sync_commit} (left at the server's \
         setting), fsync = {fsync}; {n} messages, bodies of {body_len} bytes of JSON, \
         {BATCH} per transaction; 2 worker threads"
    );

    // Warm-up: connections, statements, the server's caches.
    let warm = messages("warm", 5_000);
    raw_run(&pool, &format!("{schema}.warm_raw"), &warm, Method::Unnest).await;
    hub_run(&pool, &format!("{schema}.warm_hub"), &warm, BATCH).await;

    let msgs = messages("m", n);
    let mut hub_best: Option<Run> = None;
    let mut raw_best: Option<Run> = None;
    for round in 0..3 {
        let raw = raw_run(
            &pool,
            &format!("{schema}.raw{round}"),
            &msgs,
            Method::Unnest,
        )
        .await;
        eprintln!("raw   round {round}: {:.0} rows/s", raw.rate());
        if raw_best.as_ref().is_none_or(|b| raw.rate() > b.rate()) {
            raw_best = Some(raw);
        }
        let hub = hub_run(&pool, &format!("{schema}.hub{round}"), &msgs, BATCH).await;
        eprintln!(
            "hub   round {round}: {:.0} rows/s ({} batches)",
            hub.rate(),
            hub.calls
        );
        if hub_best.as_ref().is_none_or(|b| hub.rate() > b.rate()) {
            hub_best = Some(hub);
        }
    }
    let (hub, raw) = (hub_best.unwrap(), raw_best.unwrap());
    let one = hub_run(&pool, &format!("{schema}.one"), &messages("one", single), 1).await;

    println!();
    println!("| case | rows | batches (transactions) | time | rows/s | vs raw |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| raw tokio-postgres, {BATCH} rows/transaction, no hub | {} | {} | {:.2} s | {:.0} | 1.00 |",
        raw.rows,
        raw.calls,
        raw.secs,
        raw.rate()
    );
    println!(
        "| hub → `postgres` store, batch_size {BATCH} | {} | {} | {:.2} s | {:.0} | **{:.2}** |",
        hub.rows,
        hub.calls,
        hub.secs,
        hub.rate(),
        hub.rate() / raw.rate()
    );
    println!(
        "| hub → `postgres` store, batch_size 1 (a transaction per row) | {} | {} | {:.2} s | {:.0} | {:.3} |",
        one.rows,
        one.calls,
        one.secs,
        one.rate(),
        one.rate() / raw.rate()
    );

    println!();
    // Three rounds, the methods in turns (the server's own noise, checkpoints and autovacuum,
    // is spread over all three); the best and the median of each.
    let methods = [Method::Unnest, Method::Values, Method::Copy];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    for round in 0..3 {
        for (i, method) in methods.into_iter().enumerate() {
            let r = raw_run(&pool, &format!("{schema}.method{i}_{round}"), &msgs, method).await;
            rates[i].push(r.rate());
        }
    }
    println!(
        "| raw insert method, {BATCH} rows per transaction, {n} rows, 3 runs in turns | best rows/s | median rows/s |"
    );
    println!("|---|---:|---:|");
    for (i, method) in methods.into_iter().enumerate() {
        let mut r = rates[i].clone();
        r.sort_by(f64::total_cmp);
        println!("| {} | {:.0} | {:.0} |", method.name(), r[2], r[1]);
    }

    let client = pool.get().await.unwrap();
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
