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
