//! The `http` consumer inside a hub (memory backend, the test kit): the service's answers drive
//! the hub's retries and dead letters, with `Retry-After` honoured and the attempt number sent.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use hub_core::{ConsumerOptions, RetryPolicy, Verdict, json};
use hub_http::HttpConfig;
use hub_testkit::{TestHub, build_consumer};

/// Per request: (path, X-Hub-Attempt, when).
type Log = Arc<Mutex<Vec<(String, String, Instant)>>>;

async fn answer(
    State(log): State<Log>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let attempt = headers
        .get("x-hub-attempt")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let n = {
        let mut log = log.lock().unwrap();
        log.push((path.clone(), attempt, Instant::now()));
        log.iter().filter(|(p, ..)| *p == path).count()
    };
    match (path.as_str(), n) {
        ("flaky", 1) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("retry-after", "0")],
            "oops",
        ),
        ("busy", 1) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        ),
        ("gone", _) => (
            StatusCode::NOT_FOUND,
            [("retry-after", "0")],
            "no such hook",
        ),
        _ => (StatusCode::OK, [("retry-after", "0")], "ok"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_answers_drive_retries_retry_after_and_dead_letters() {
    let log: Log = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/{path}", post(answer))
        .with_state(Arc::clone(&log));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let options = ConsumerOptions {
        retry: Some(RetryPolicy {
            max_attempts: 3,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            in_order: false,
        }),
        ..ConsumerOptions::default()
    };
    let mut builder = TestHub::builder();
    for path in ["flaky", "busy", "gone"] {
        let consumer = build_consumer::<HttpConfig>(
            &format!("url = \"http://{addr}/{path}\""),
            &Default::default(),
        )
        .unwrap();
        builder = builder.consumer_with(path, &[&format!("t.{path}")], options.clone(), consumer);
    }
    let hub = builder.start().await;

    // 500, then 200 on the retry: settled OK, one retry counted, the attempt sent.
    assert_eq!(hub.send("t.flaky", json!({"n": 1})).await, Verdict::Ack);
    // 429 with Retry-After: 1, then 200: the retry waited the second the service asked for,
    // not the consumer's 100 ms.
    assert_eq!(hub.send("t.busy", json!({"n": 2})).await, Verdict::Ack);
    // 404: never retried, dead-lettered (no sink here: logged and counted).
    let v = hub.send("t.gone", json!({"n": 3})).await;
    assert!(
        matches!(&v, Verdict::Reject { reason } if reason.contains("404") && reason.contains("no such hook")),
        "{v:?}"
    );

    let log = log.lock().unwrap().clone();
    let of = |p: &str| -> Vec<(String, Instant)> {
        log.iter()
            .filter(|(path, ..)| path == p)
            .map(|(_, a, t)| (a.clone(), *t))
            .collect()
    };
    let flaky = of("flaky");
    assert_eq!(
        flaky.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["1", "2"]
    );
    let busy = of("busy");
    assert_eq!(busy.len(), 2);
    let waited = busy[1].1.duration_since(busy[0].1);
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After ignored: {waited:?}"
    );
    assert_eq!(of("gone").len(), 1, "a 404 is not retried");
    assert_eq!(
        hub.metric(r#"hub_consumer_retries_total{consumer="flaky"}"#),
        Some(1.0)
    );
    assert_eq!(
        hub.metric(r#"hub_consumer_dead_letters_total{consumer="gone",sink="log"}"#),
        Some(1.0)
    );
    hub.shutdown().await;
}

/// `concurrency = N` through the hub's dispatcher: N requests are in flight at once (the
/// server holds each until all N are there), never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_n_in_the_hub_means_n_requests_in_flight() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// The barrier, and (in flight now, most in flight at once).
    type Shared = (Arc<tokio::sync::Barrier>, Arc<(AtomicUsize, AtomicUsize)>);
    const N: usize = 6;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let app = Router::new()
        .route(
            "/hook",
            post(|State((barrier, counts)): State<Shared>| async move {
                let now = counts.0.fetch_add(1, Ordering::SeqCst) + 1;
                counts.1.fetch_max(now, Ordering::SeqCst);
                let all_here = tokio::time::timeout(Duration::from_secs(5), barrier.wait())
                    .await
                    .is_ok();
                counts.0.fetch_sub(1, Ordering::SeqCst);
                if all_here {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                }
            }),
        )
        .with_state((barrier, Arc::clone(&counts)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let consumer = build_consumer::<HttpConfig>(
        &format!("url = \"http://{addr}/hook\""),
        &Default::default(),
    )
    .unwrap();
    let options = ConsumerOptions {
        concurrency: N,
        ..ConsumerOptions::default()
    };
    let hub = TestHub::builder()
        .consumer_with("hook", &["t.#"], options, consumer)
        .start()
        .await;
    // Twice N messages at once: two rounds of exactly N in flight.
    let sends = (0..2 * N).map(|i| hub.send("t.hook", json!({ "i": i })));
    let verdicts = tokio::time::timeout(
        Duration::from_secs(15),
        futures_util::future::join_all(sends),
    )
    .await
    .unwrap();
    assert!(verdicts.iter().all(|v| *v == Verdict::Ack), "{verdicts:?}");
    assert_eq!(counts.1.load(Ordering::SeqCst), N);
    hub.shutdown().await;
}
