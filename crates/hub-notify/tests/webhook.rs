//! The webhook sink against a local axum server: the payloads, and what each answer becomes.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use common::context;
use hub_core::{Consumer, ErrorKind, Message, json};
use hub_notify::{Notifier, NotifyConfig};

/// Per request: (path, content type, body).
type Log = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

async fn answer(
    State(log): State<Log>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let n = {
        let mut log = log.lock().unwrap();
        log.push((path.clone(), content_type, body));
        log.iter().filter(|(p, ..)| *p == path).count()
    };
    match (path.as_str(), n) {
        ("flaky", 1) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("retry-after", "3")],
            "oops",
        ),
        ("busy", _) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            "rate limited",
        ),
        ("bad", _) => (StatusCode::BAD_REQUEST, [("x-none", "")], "invalid_payload"),
        _ => (StatusCode::OK, [("x-none", "")], "ok"),
    }
}

async fn server() -> (SocketAddr, Log) {
    let log: Log = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/{path}", post(answer))
        .with_state(Arc::clone(&log));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, log)
}

fn notifier(settings: serde_json::Value) -> Notifier {
    let mut all = json!({"sink": "webhook"});
    if let (Some(a), Some(s)) = (all.as_object_mut(), settings.as_object()) {
        a.extend(s.clone());
    }
    serde_json::from_value::<NotifyConfig>(all)
        .unwrap()
        .into_notifier()
        .unwrap()
}

#[tokio::test]
async fn a_message_is_posted_as_a_slack_payload() {
    let (addr, log) = server().await;
    let n = notifier(json!({"url": format!("http://{addr}/ok")}));
    let cx = context();
    n.start(&cx).await.unwrap();
    let m = Message::new("org.example.build", json!({"name": "hub", "ok": true}));
    n.consume(&cx, &m).await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1, "application/json");
    assert_eq!(
        log[0].2,
        json!({"text": "`org.example.build`: {\"name\":\"hub\",\"ok\":true}"})
    );
}

#[tokio::test]
async fn a_500_is_transient_with_its_retry_after_then_a_200_is_done() {
    let (addr, log) = server().await;
    let n = notifier(json!({"url": format!("http://{addr}/flaky"), "template": "{{ body.text }}"}));
    let cx = context();
    let m = Message::new("t", json!({"text": "hello"}));
    let e = n.consume(&cx, &m).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    assert!(e.to_string().contains("answered 500"), "{e}");
    assert!(e.to_string().contains("oops"), "{e}");
    // The URL's path (a chat webhook's token) is never shown.
    assert!(!e.to_string().contains("flaky"), "{e}");
    n.consume(&cx, &m).await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].2, json!({"text": "hello"}));
}

/// Through the hub: a 500 is retried by the hub (after the longer of its backoff and
/// `Retry-After`, capped at `max_delay`), and the retry is posted and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_hub_a_500_is_retried_after_its_delay() {
    let (addr, log) = server().await;
    let n = notifier(json!({"url": format!("http://{addr}/flaky"), "template": "{{ body.text }}"}));
    let options = hub_core::ConsumerOptions {
        retry: Some(hub_core::RetryPolicy {
            max_attempts: 3,
            delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(400),
            in_order: false,
        }),
        ..hub_core::ConsumerOptions::default()
    };
    let hub = hub_testkit::TestHub::builder()
        .consumer_with("notify", &["#"], options, n)
        .start()
        .await;
    let started = std::time::Instant::now();
    let verdict = hub.send("t", json!({"text": "hello"})).await;
    let took = started.elapsed();
    assert_eq!(verdict, hub_core::Verdict::Ack);
    // Retry-After: 3 asked for 3 s; max_delay (400 ms) caps it; the backoff alone is 20 ms.
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "posted twice: {log:?}");
    assert_eq!(log[1].2, json!({"text": "hello"}));
    assert_eq!(
        hub.metric(r#"hub_consumer_retries_total{consumer="notify"}"#),
        Some(1.0)
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn answers_map_to_verdicts() {
    let (addr, _log) = server().await;
    let cx = context();
    let m = Message::new("t", json!({}));

    let busy = notifier(json!({"url": format!("http://{addr}/busy")}));
    let e = busy.consume(&cx, &m).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));

    let bad = notifier(json!({"url": format!("http://{addr}/bad")}));
    let e = bad.consume(&cx, &m).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.to_string().contains("400"), "{e}");

    // Nobody listening: transient.
    let closed = common::free_port();
    let down = notifier(json!({"url": format!("http://127.0.0.1:{closed}/hook")}));
    let e = down.consume(&cx, &m).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert!(!e.to_string().contains("/hook"), "{e}");
}

#[tokio::test]
async fn a_body_template_renders_the_whole_body_and_a_burst_is_one_post() {
    let (addr, log) = server().await;
    let n = notifier(json!({
        "url": format!("http://{addr}/ok"),
        "format": "template",
        "body_template": r#"{"message": {{ text | tojson }}, "count": {{ lines | length }}}"#,
        "max_length": 40,
    }));
    let cx = context();
    let long = Message::new("t", json!({"text": "x".repeat(100)}));
    n.consume(&cx, &long).await.unwrap();

    let mut burst: Vec<Message> = (0..8)
        .map(|i| Message::new("org.a", json!({"i": i})))
        .collect();
    burst.push(Message::new("org.b", json!({"only": 1})));
    let results = n.consume_batch(&cx, &burst).await;
    assert_eq!(results.len(), 9);
    assert!(results.iter().all(Result::is_ok));

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    let first = log[0].2["message"].as_str().unwrap();
    assert_eq!(first.chars().count(), 40, "{first}");
    assert!(first.ends_with('…'), "{first}");
    assert_eq!(log[1].2["count"], 2);
    assert_eq!(
        log[1].2["message"],
        "8 more on org.a in the last 1 s\n`org.b`: {\"only\":1}"
    );
}

#[tokio::test]
async fn the_url_may_come_from_a_file_or_the_environment_and_is_never_shown() {
    let (addr, log) = server().await;
    let var = "HUB_NOTIFY_TEST_WEBHOOK_URL";
    // From a file (the environment is shared by the tests: set_var is not used).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("url");
    std::fs::write(&file, format!("http://{addr}/ok\n")).unwrap();
    let n = notifier(json!({"url": {"file": file}}));
    assert!(!format!("{n:?}").contains("/ok"));
    n.consume(&context(), &Message::new("t", json!(1)))
        .await
        .unwrap();
    assert_eq!(log.lock().unwrap().len(), 1);
    let e = serde_json::from_value::<NotifyConfig>(json!({"sink": "webhook", "url": {"env": var}}))
        .unwrap()
        .into_notifier()
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!("url: environment variable {var} is not set")
    );
}

/// A burst over more topics than `digest_after` says at most `digest_after` lines: the first
/// topics one line each, then one line counting the rest.
#[tokio::test]
async fn a_burst_over_many_topics_is_at_most_digest_after_lines() {
    let (addr, log) = server().await;
    let n = notifier(json!({"url": format!("http://{addr}/ok"), "digest_after": 3}));
    let cx = context();
    n.start(&cx).await.unwrap();
    // 12 topics, 5 messages each.
    let batch: Vec<Message> = (0..60)
        .map(|i| Message::new(format!("org.example.t{}", i % 12), json!({ "i": i })))
        .collect();
    let verdicts = n.consume_batch(&cx, &batch).await;
    assert!(verdicts.iter().all(Result::is_ok));
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "one request for the call");
    let text = log[0].2["text"].as_str().unwrap().to_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("5 more on org.example.t0 "), "{text}");
    assert!(lines[1].starts_with("5 more on org.example.t1 "), "{text}");
    assert_eq!(lines[2], "and 50 more on 10 other topics");
}
