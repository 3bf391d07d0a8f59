//! The store against the real PostgreSQL at 127.0.0.1:5432 (user `postgres`, database `test`,
//! trust authentication). Each test works in a schema of its own, `hub_test_<uuid>`, dropped at
//! the end (also when the test fails).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hub_core::metrics::Counter;
use hub_core::{
    CancellationToken, ConsumeError, Consumer, Context, ErrorKind, Message, Publisher,
    ResourceConfig, Resources, json,
};
use hub_engine::MemoryBackend;
use hub_postgres::deadpool_postgres::Pool;
use hub_postgres::{PgPoolConfig, PostgresStoreConfig};
use hub_testkit::build_consumer;

const BASE_URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A pool as `[resources.<id>] type = "postgres_pool"` builds it, its connections named `app`.
fn pool(app: &str, max_size: usize) -> Pool {
    PgPoolConfig::new(format!("{BASE_URL} application_name={app}"))
        .max_size(max_size)
        .connect_timeout(Duration::from_secs(5))
        .build("main")
        .unwrap()
}

/// A plain connection for the test's own queries.
async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("{BASE_URL} application_name=hub_test_admin"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL at 127.0.0.1:5432 (user postgres, database test)");
    tokio::spawn(conn);
    client
}

fn context() -> Context {
    let publisher = Publisher::new(
        Arc::new(MemoryBackend::new()),
        Counter::noop(),
        Counter::noop(),
    );
    Context::new(
        "store",
        publisher,
        Resources::new(),
        CancellationToken::new(),
    )
}

/// Runs `body` with a fresh schema `hub_test_<uuid>` and a unique application name, then drops
/// the schema, whether `body` passed or not; bounded to 120 s.
async fn with_schema<F, Fut>(body: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let id = uuid::Uuid::new_v4().simple().to_string();
    let schema = format!("hub_test_{id}");
    let app = format!("hub_test_app_{}", &id[..12]);
    let client = admin().await;
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let run = tokio::spawn(tokio::time::timeout(
        Duration::from_secs(120),
        body(schema.clone(), app),
    ));
    let outcome = run.await;
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the test took longer than 120 s"),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The store built from its settings as the hub builds it, with `pool` as `[resources.main]`.
fn make_store(pool: &Pool, settings: &str) -> Arc<dyn Consumer> {
    let resources = Resources::new().with_named("main", pool.clone());
    build_consumer::<PostgresStoreConfig>(settings, &resources).unwrap()
}

fn messages(prefix: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::builder(
                format!("org.example.t{}", i % 7),
                json!({"i": i, "text": "x".repeat(150)}),
            )
            .id(format!("{prefix}-{i}"))
            .header("sent-by", "test")
            .build()
        })
        .collect()
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn all_ok(results: &[Result<(), ConsumeError>]) -> bool {
    results.iter().all(Result::is_ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_in_batches_of_500_are_stored_exactly_once() {
    with_schema(|schema, app| async move {
        let pool = pool(&app, 4);
        let table = format!("{schema}.messages");
        let store = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{table}\"\ncreate_schema = true"),
        );
        let cx = context();
        store.start(&cx).await.unwrap();
        let batch = messages("m", 10_000);
        for chunk in batch.chunks(500) {
            let results = store.consume_batch(&cx, chunk).await;
            assert_eq!(results.len(), 500);
            assert!(
                all_ok(&results),
                "{:?}",
                results.iter().find(|r| r.is_err())
            );
        }
        let client = admin().await;
        assert_eq!(count(&client, &table).await, 10_000);
        // The same messages again (a redelivery): still one row each.
        for chunk in batch.chunks(500) {
            assert!(all_ok(&store.consume_batch(&cx, chunk).await));
        }
        assert!(store.consume(&cx, &batch[17]).await.is_ok());
        assert_eq!(count(&client, &table).await, 10_000);

        // Every column as the message had it.
        let m = &batch[1234];
        let row = client
            .query_one(
                &format!(
                    "SELECT topic, sent_at, headers, body, received_at <= now() FROM {table} \
                     WHERE id = $1"
                ),
                &[&m.id()],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), m.topic());
        // timestamptz keeps microseconds.
        let sent: hub_core::Timestamp = row.get(1);
        assert!(
            (m.timestamp().as_nanosecond() - sent.as_nanosecond()).abs() < 1_000,
            "{sent} for {}",
            m.timestamp()
        );
        assert_eq!(
            row.get::<_, serde_json::Value>(2),
            serde_json::Value::Object(m.headers().clone())
        );
        assert_eq!(&row.get::<_, serde_json::Value>(3), m.body());
        assert!(row.get::<_, bool>(4));

        // The migration is recorded once; a second and third store starting at once on the
        // same table (two hubs) apply nothing more and start fine.
        let again = || {
            make_store(
                &pool,
                &format!("pool = \"main\"\ntable = \"{table}\"\ncreate_schema = true"),
            )
        };
        let (a, b) = (again(), again());
        let (ra, rb) = tokio::join!(a.start(&cx), b.start(&cx));
        ra.unwrap();
        rb.unwrap();
        let versions: Vec<(String, i32)> = client
            .query(
                &format!("SELECT table_name, version FROM {schema}.hub_schema_migrations"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(versions, vec![(table.clone(), 1)]);
        let indexes: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename = 'messages'",
                &[&schema],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(indexes, 3, "primary key, topic, sent_at");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_is_invalid_alone_and_the_others_are_stored() {
    with_schema(|schema, app| async move {
        let pool = pool(&app, 2);
        let table = format!("{schema}.messages");
        let store = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{table}\"\ncreate_schema = true"),
        );
        let cx = context();
        store.start(&cx).await.unwrap();
        let mut batch = messages("n", 100);
        // jsonb refuses \u0000 (22P05); a text column refuses a NUL byte (22021).
        batch[50] = Message::builder("org.example.bad", json!({"text": "a\u{0}b"}))
            .id("bad-body")
            .build();
        batch[70] = Message::builder("org.example.\u{0}", json!({}))
            .id("bad-topic")
            .build();
        let results = store.consume_batch(&cx, &batch).await;
        assert_eq!(results.len(), 100);
        for (i, r) in results.iter().enumerate() {
            match i {
                50 | 70 => {
                    let e = r.as_ref().expect_err("refused");
                    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
                    let text = e.to_string();
                    let code = if i == 50 { "22P05" } else { "22021" };
                    assert!(
                        text.contains(code) && text.contains(batch[i].id()),
                        "{text}"
                    );
                    if i == 50 {
                        assert!(text.contains("Unicode escape"), "{text}");
                    }
                }
                _ => assert!(r.is_ok(), "{i}: {r:?}"),
            }
        }
        let client = admin().await;
        assert_eq!(count(&client, &table).await, 98);
        // A batch of one: the same verdict.
        let e = store.consume(&cx, &batch[50]).await.expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().contains("22P05"), "{e}");
        // The rest of the batch again: nothing new, nothing refused.
        let rest: Vec<Message> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 50 && *i != 70)
            .map(|(_, m)| m.clone())
            .collect();
        assert!(all_ok(&store.consume_batch(&cx, &rest).await));
        assert_eq!(count(&client, &table).await, 98);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_does_not_fit_is_a_start_error_naming_table_and_column() {
    with_schema(|schema, app| async move {
        let pool = pool(&app, 2);
        let client = admin().await;
        let cx = context();
        client
            .batch_execute(&format!(
                "CREATE TABLE {schema}.wrong (id text PRIMARY KEY, topic text NOT NULL,
                   sent_at timestamptz NOT NULL, received_at timestamptz NOT NULL DEFAULT now(),
                   headers jsonb NOT NULL, body text NOT NULL)"
            ))
            .await
            .unwrap();
        let wrong = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{schema}.wrong\""),
        );
        let err = wrong
            .start(&cx)
            .await
            .expect_err("body is text")
            .to_string();
        assert!(
            err.contains(&format!("table {schema}.wrong"))
                && err.contains("column `body` is text, expected jsonb"),
            "{err}"
        );
        // create_schema leaves an existing table as it is, and says the same.
        let wrong = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{schema}.wrong\"\ncreate_schema = true"),
        );
        let err = wrong
            .start(&cx)
            .await
            .expect_err("body is text")
            .to_string();
        assert!(
            err.contains("column `body` is text, expected jsonb"),
            "{err}"
        );
        // ... and records no migration for a table it did not make.
        let recorded: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {schema}.hub_schema_migrations"),
                &[],
            )
            .await
            .map_or(0, |r| r.get(0));
        assert_eq!(
            recorded, 0,
            "a migration recorded for a table that does not fit"
        );

        // A table the store made, dropped by hand since: made again at the next start.
        let made = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{schema}.made\"\ncreate_schema = true"),
        );
        made.start(&cx).await.unwrap();
        client
            .batch_execute(&format!("DROP TABLE {schema}.made"))
            .await
            .unwrap();
        made.start(&cx).await.unwrap();
        assert_eq!(count(&client, &format!("{schema}.made")).await, 0);

        client
            .batch_execute(&format!(
                "CREATE TABLE {schema}.partial (id text, topic text, body jsonb)"
            ))
            .await
            .unwrap();
        let partial = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{schema}.partial\""),
        );
        let err = partial
            .start(&cx)
            .await
            .expect_err("columns missing")
            .to_string();
        for column in ["sent_at", "received_at", "headers"] {
            assert!(
                err.contains(&format!("column `{column}` is missing")),
                "{err}"
            );
        }

        let absent = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{schema}.absent\""),
        );
        let err = absent.start(&cx).await.expect_err("no table").to_string();
        assert!(
            err.contains(&format!("table {schema}.absent does not exist"))
                && err.contains("create_schema = true"),
            "{err}"
        );
    })
    .await;
}

#[test]
fn settings_are_checked_when_built() {
    let pool = pool("hub_test_settings", 1);
    let resources = Resources::new().with_named("main", pool);
    let err = |settings: &str| {
        build_consumer::<PostgresStoreConfig>(settings, &resources)
            .err()
            .unwrap_or_default()
    };
    assert!(err("table = \"x\"").contains("pool"), "pool is required");
    let e = err("pool = \"mian\"");
    assert!(e.contains("did you mean `main`"), "{e}");
    let e = err("pool = \"main\"\ntable = \"messages; DROP TABLE x\"");
    assert!(e.contains("use letters, digits and `_` only"), "{e}");
    let e = err("pool = \"main\"\ntable = \"a.b.c\"");
    assert!(e.contains("schema.name"), "{e}");
    let e = err("pool = \"main\"\ncreate_shema = true");
    assert!(e.contains("did you mean `create_schema`"), "{e}");
    assert!(build_consumer::<PostgresStoreConfig>("pool = \"main\"", &resources).is_ok());
}

/// Connections with application name `app` right now.
async fn connections(client: &tokio_postgres::Client, app: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_pool_of_two_never_hold_more_than_two_connections() {
    with_schema(|schema, app| async move {
        let pool = pool(&app, 2);
        let cx = context();
        let a = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{schema}.a\"\ncreate_schema = true"),
        );
        let b = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{schema}.b\"\ncreate_schema = true"),
        );
        a.start(&cx).await.unwrap();
        b.start(&cx).await.unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let done = Arc::clone(&done);
            let pool = pool.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let client = admin().await;
                let (mut most, mut samples) = (0, 0);
                while !done.load(Ordering::SeqCst) {
                    most = most.max(connections(&client, &app).await);
                    assert!(pool.status().size <= 2, "{:?}", pool.status());
                    samples += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (most, samples)
            })
        };
        // Each store driven by 4 tasks at once (concurrency 4): 8 batches in flight for 2
        // connections.
        let mut tasks = Vec::new();
        for (name, s) in [("a", &a), ("b", &b)] {
            for t in 0..4 {
                let s = Arc::clone(s);
                let cx = cx.clone();
                tasks.push(tokio::spawn(async move {
                    let batch = messages(&format!("{name}{t}"), 2_000);
                    for chunk in batch.chunks(100) {
                        assert!(all_ok(&s.consume_batch(&cx, chunk).await));
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        let (most, samples) = watcher.await.unwrap();
        assert!(most <= 2, "{most} connections at once");
        assert!(most >= 1 && samples > 10, "{most} / {samples} samples");
        let client = admin().await;
        assert_eq!(count(&client, &format!("{schema}.a")).await, 8_000);
        assert_eq!(count(&client, &format!("{schema}.b")).await, 8_000);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_stream_lose_nothing_and_ack_nothing_uncommitted() {
    with_schema(|schema, app| async move {
        let pool = pool(&app, 4);
        let table = format!("{schema}.messages");
        let store = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{table}\"\ncreate_schema = true"),
        );
        let cx = context();
        store.start(&cx).await.unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicUsize::new(0));
        let killer = {
            let (done, killed, app) = (Arc::clone(&done), Arc::clone(&killed), app.clone());
            tokio::spawn(async move {
                let client = admin().await;
                while !done.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    let n = client
                        .query(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = $1",
                            &[&app],
                        )
                        .await
                        .unwrap()
                        .len();
                    killed.fetch_add(n, Ordering::SeqCst);
                }
            })
        };
        let acked = Arc::new(std::sync::Mutex::new(HashSet::new()));
        let failed_batches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for t in 0..2 {
            let (store, cx, acked, failed_batches) = (
                Arc::clone(&store),
                cx.clone(),
                Arc::clone(&acked),
                Arc::clone(&failed_batches),
            );
            let table = table.clone();
            tasks.push(tokio::spawn(async move {
                let checker = admin().await;
                let all = messages(&format!("k{t}"), 5_000);
                for chunk in all.chunks(250) {
                    // The hub's part: what failed is given back until it is stored.
                    let mut pending: Vec<Message> = chunk.to_vec();
                    let mut rounds = 0;
                    while !pending.is_empty() {
                        rounds += 1;
                        assert!(rounds < 1_000, "a batch never got in");
                        let results = store.consume_batch(&cx, &pending).await;
                        assert_eq!(results.len(), pending.len());
                        let oks = results.iter().filter(|r| r.is_ok()).count();
                        // All or nothing: a batch that was not committed fails whole, and
                        // transient (never invalid).
                        assert!(
                            oks == 0 || oks == results.len(),
                            "{oks} of {}",
                            results.len()
                        );
                        if oks == 0 {
                            failed_batches.fetch_add(1, Ordering::SeqCst);
                            for r in &results {
                                let e = r.as_ref().unwrap_err();
                                assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        } else {
                            // OK means committed: every row is there already.
                            let ids: Vec<&str> = pending.iter().map(Message::id).collect();
                            let there: i64 = checker
                                .query_one(
                                    &format!("SELECT count(*) FROM {table} WHERE id = ANY($1)"),
                                    &[&ids],
                                )
                                .await
                                .unwrap()
                                .get(0);
                            assert_eq!(there, ids.len() as i64);
                            let mut acked = acked.lock().unwrap();
                            for m in &pending {
                                acked.insert(m.id().to_owned());
                            }
                            pending.clear();
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        killer.await.unwrap();
        let client = admin().await;
        let stored: HashSet<String> = client
            .query(&format!("SELECT id FROM {table}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let acked = acked.lock().unwrap().clone();
        assert_eq!(acked.len(), 10_000);
        assert_eq!(
            stored, acked,
            "every acknowledged message is stored, and only those"
        );
        let failed = failed_batches.load(Ordering::SeqCst);
        let killed = killed.load(Ordering::SeqCst);
        assert!(
            killed > 0 && failed > 0,
            "{killed} connections killed, {failed} batches failed"
        );
        eprintln!("{killed} connections killed, {failed} batches failed and were retried");
    })
    .await;
}

/// Through the hub: the engine hands the store batches of up to 100 (or what came within 50 ms),
/// with the hub's retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_through_the_hub_in_batches() {
    with_schema(|schema, app| async move {
        let pool = pool(&app, 4);
        let table = format!("{schema}.messages");
        let consumer = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{table}\"\ncreate_schema = true"),
        );
        let options = hub_core::ConsumerOptions {
            batch_size: 100,
            batch_delay: Duration::from_millis(50),
            retry: Some(hub_core::RetryPolicy {
                max_attempts: 5,
                delay: Duration::from_millis(100),
                ..hub_core::RetryPolicy::default()
            }),
            ..hub_core::ConsumerOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("dead.jsonl");
        let hub = hub_testkit::TestHub::builder()
            .dead_letter_file(&dead)
            .consumer_with("store", &["org.#"], options, consumer)
            .start()
            .await;
        let mut batch = messages("hub", 1_000);
        // One row PostgreSQL refuses, in the middle: dead-lettered with the database's reason,
        // its batch neighbours stored.
        batch[500] = Message::builder("org.example.bad", json!({"text": "nul \u{0000} here"}))
            .id("hub-nul")
            .build();
        let verdicts =
            futures_util::future::join_all(batch.iter().map(|m| hub.send_message(m.clone()))).await;
        let rejected: Vec<usize> = verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != hub_core::Verdict::Ack)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(rejected, [500], "{verdicts:?}");
        let letters = std::fs::read_to_string(&dead).unwrap();
        let letters: Vec<serde_json::Value> = letters
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0]["message"]["id"], "hub-nul");
        assert_eq!(letters[0]["attempts"], 1, "never retried");
        assert!(
            letters[0]["reason"].as_str().unwrap().contains("22P05"),
            "{letters:?}"
        );
        // The same messages again (a redelivery): acknowledged, still one row each.
        let again = futures_util::future::join_all(
            batch[..100].iter().map(|m| hub.send_message(m.clone())),
        )
        .await;
        assert!(again.iter().all(|v| *v == hub_core::Verdict::Ack));
        hub.shutdown().await;
        let client = admin().await;
        assert_eq!(count(&client, &table).await, 999);
        // A batch's rows share their `received_at` (when the batch was handed over): the hub
        // handed them over in batches, not one by one.
        let batches: i64 = client
            .query_one(
                &format!("SELECT count(DISTINCT received_at) FROM {table}"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            (10..=500).contains(&batches),
            "{batches} batches for 1 000 rows"
        );
    })
    .await;
}

/// Through the hub, PostgreSQL behind a proxy: down when the hub starts (the hub starts anyway,
/// messages wait, nothing is acknowledged), up (the table is created and everything stored),
/// then cut in the middle of a stream and brought back: every message stored exactly once,
/// each acknowledged only once its row is there, with no help from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_start_then_cut_mid_stream_loses_nothing_and_resumes_by_itself() {
    with_schema(|schema, app| async move {
        let mut proxy = hub_testkit::TcpProxy::start("127.0.0.1:5432").await;
        proxy.cut().await;
        let pool = PgPoolConfig::new(format!(
            "host=127.0.0.1 port={} user=postgres dbname=test application_name={app}",
            proxy.port()
        ))
        .max_size(2)
        .connect_timeout(Duration::from_secs(1))
        .build("main")
        .unwrap();
        let table = format!("{schema}.messages");
        let consumer = make_store(
            &pool,
            &format!("pool = \"main\"\ntable = \"{table}\"\ncreate_schema = true"),
        );
        let options = hub_core::ConsumerOptions {
            batch_size: 50,
            batch_delay: Duration::from_millis(20),
            retry: Some(hub_core::RetryPolicy {
                max_attempts: 10_000,
                delay: Duration::from_millis(50),
                max_delay: Duration::from_millis(200),
                ..hub_core::RetryPolicy::default()
            }),
            ..hub_core::ConsumerOptions::default()
        };
        // Starts although PostgreSQL cannot be reached.
        let hub = hub_testkit::TestHub::builder()
            .consumer_with("store", &["org.#"], options, consumer)
            .start()
            .await;
        let metric = |name: &str| {
            hub.metric(&format!("{name}{{consumer=\"store\"}}"))
                .unwrap_or(0.0)
        };
        let within = Duration::from_secs(60);
        let send_all = |batch: Vec<Message>| {
            futures_util::future::join_all(
                batch
                    .into_iter()
                    .map(|m| hub.send_message_within(m, within)),
            )
        };
        let client = admin().await;

        // 1. Down at start: nothing acknowledged while it stays down; the backlog shows.
        let first = messages("down", 300);
        let (verdicts, ()) = tokio::join!(send_all(first.clone()), async {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            // The gauges are sampled once a second: a sample may catch a batch between two of
            // them, so the sum is read until it settles (within a few samples).
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let waiting = loop {
                let waiting = metric("hub_consumer_backlog_messages")
                    + metric("hub_consumer_retry_waiting_messages")
                    + metric("hub_consumer_in_flight_messages");
                if waiting == 300.0 || std::time::Instant::now() > deadline {
                    break waiting;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(waiting, 300.0, "every message waits, none lost or acked");
            let ok = hub
                .metric("hub_consumer_processed_messages_total{consumer=\"store\",outcome=\"ok\"}")
                .unwrap_or(0.0);
            assert_eq!(ok, 0.0, "nothing acknowledged while PostgreSQL is down");
            assert!(metric("hub_consumer_retries_total") > 0.0);
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await
                .unwrap()
                .get(0);
            assert!(!exists, "no table while PostgreSQL is unreachable");
            proxy.up().await;
        });
        assert!(verdicts.iter().all(|v| *v == hub_core::Verdict::Ack));
        assert_eq!(count(&client, &table).await, 300);

        // 2. Cut mid-stream, for a second, then back.
        let second = messages("cut", 3_000);
        let acked_before_up = AtomicUsize::new(0);
        let stored_at_cut = AtomicUsize::new(0);
        let sends = async {
            futures_util::future::join_all(second.iter().map(|m| async {
                let v = hub.send_message_within(m.clone(), within).await;
                acked_before_up.fetch_add(1, Ordering::SeqCst);
                v
            }))
            .await
        };
        let (verdicts, ()) = tokio::join!(sends, async {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let n = count(&client, &table).await;
                if n >= 600 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "stuck at {n} rows");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            proxy.cut().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let acked = acked_before_up.load(Ordering::SeqCst);
            let rows = count(&client, &table).await;
            stored_at_cut.store(usize::try_from(rows).unwrap(), Ordering::SeqCst);
            // Acknowledged means stored (the first 300 and this stream's).
            assert!(
                acked + 300 <= usize::try_from(rows).unwrap(),
                "{acked} acknowledged, {rows} rows: acknowledged before stored"
            );
            tokio::time::sleep(Duration::from_millis(700)).await;
            let rows_down = count(&client, &table).await;
            assert_eq!(rows, rows_down, "nothing stored while cut");
            proxy.up().await;
        });
        assert!(verdicts.iter().all(|v| *v == hub_core::Verdict::Ack));
        let stored = stored_at_cut.load(Ordering::SeqCst);
        assert!(
            stored < 3_300,
            "the cut came after the stream was stored ({stored} rows): no outage was tested"
        );
        hub.shutdown().await;
        assert_eq!(
            count(&client, &table).await,
            3_300,
            "each message exactly once"
        );
        let ids: HashSet<String> = client
            .query(&format!("SELECT id FROM {table}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            first.iter().chain(&second).all(|m| ids.contains(m.id())),
            "every message stored"
        );
        eprintln!("cut at {stored} of 3 300 rows; resumed by itself");
    })
    .await;
}
