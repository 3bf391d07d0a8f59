//! The `http` consumer against real HTTP servers on 127.0.0.1 (axum on port 0).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::serve::ListenerExt;
use hmac::{Hmac, KeyInit, Mac};
use hub_core::message::ATTEMPTS_HEADER;
use hub_core::metrics::Counter;
use hub_core::{
    CancellationToken, ConsumeError, Consumer, Context, ErrorKind, Message, Publisher,
    ResourceConfig, Resources, json,
};
use hub_engine::MemoryBackend;
use hub_http::{HttpClientConfig, HttpConfig};
use hub_testkit::build_consumer;
use sha2::Sha256;

/// A context as the hub gives one: `concurrency` calls at once.
fn context(concurrency: usize) -> Context {
    let publisher = Publisher::new(
        Arc::new(MemoryBackend::new()),
        Counter::noop(),
        Counter::noop(),
    );
    Context::new(
        "hook",
        publisher,
        Resources::new(),
        CancellationToken::new(),
    )
    .with_concurrency(concurrency)
}

/// Serves `router` on 127.0.0.1:0; the count of accepted TCP connections.
async fn serve(router: Router) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepts);
    let listener = listener.tap_io(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, accepts)
}

/// Builds the consumer from TOML settings, as the hub does, and starts it.
async fn consumer(settings: &str, resources: &Resources, cx: &Context) -> Arc<dyn Consumer> {
    let c = build_consumer::<HttpConfig>(settings, resources).unwrap();
    c.start(cx).await.unwrap();
    c
}

fn message() -> Message {
    Message::new("org.example.hook", json!({"n": 1, "text": "héllo"}))
}

fn failure(r: Result<(), ConsumeError>) -> ConsumeError {
    match r {
        Ok(()) => panic!("expected an error, got Ok"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_2xx_is_ok_and_the_body_is_the_message_body() {
    let seen: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let router = Router::new()
        .route(
            "/hook",
            any(
                |State(seen): State<Arc<Mutex<Vec<Bytes>>>>, body: Bytes| async move {
                    seen.lock().unwrap().push(body);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(Arc::clone(&seen));
    let (addr, _) = serve(router).await;
    let cx = context(1);
    let c = consumer(
        &format!("url = \"http://{addr}/hook\""),
        &Resources::new(),
        &cx,
    )
    .await;
    let msg = message();
    c.consume(&cx.handling(msg.clone()), &msg).await.unwrap();
    let seen = seen.lock().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&seen[0]).unwrap();
    assert_eq!(&body, msg.body());
}

#[tokio::test]
async fn a_500_is_transient_then_a_200_is_ok_and_the_query_is_never_shown() {
    let calls = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(
            "/hook",
            any(|State(calls): State<Arc<AtomicUsize>>| async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    (StatusCode::INTERNAL_SERVER_ERROR, "database down").into_response()
                } else {
                    StatusCode::OK.into_response()
                }
            }),
        )
        .with_state(Arc::clone(&calls));
    let (addr, _) = serve(router).await;
    let cx = context(1);
    let c = consumer(
        &format!("url = \"http://{addr}/hook?token=topsecret\""),
        &Resources::new(),
        &cx,
    )
    .await;
    let msg = message();
    let e = failure(c.consume(&cx, &msg).await);
    assert_eq!(e.kind(), ErrorKind::Transient);
    let reason = e.to_string();
    assert!(
        reason.contains("500") && reason.contains("database down"),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("POST http://{addr}/hook?<redacted>")),
        "{reason}"
    );
    assert!(!reason.contains("topsecret"), "{reason}");
    assert_eq!(e.retry_after(), None);
    c.consume(&cx, &msg).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_429_with_retry_after_asks_for_that_delay() {
    let router = Router::new().route(
        "/hook",
        any(|| async {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
        }),
    );
    let (addr, _) = serve(router).await;
    let cx = context(1);
    let c = consumer(
        &format!("url = \"http://{addr}/hook\""),
        &Resources::new(),
        &cx,
    )
    .await;
    let e = failure(c.consume(&cx, &message()).await);
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert!(e.to_string().contains("429"), "{e}");
}

#[tokio::test]
async fn a_404_or_a_redirect_is_invalid_with_the_start_of_the_body() {
    let router = Router::new()
        .route(
            "/gone",
            any(|| async {
                (
                    StatusCode::NOT_FOUND,
                    format!("no such hook here {}", "x".repeat(500)),
                )
            }),
        )
        .route(
            "/moved",
            any(|| async { (StatusCode::FOUND, [("location", "/elsewhere")], "") }),
        );
    let (addr, _) = serve(router).await;
    let cx = context(1);
    let c = consumer(
        &format!("url = \"http://{addr}/gone\""),
        &Resources::new(),
        &cx,
    )
    .await;
    let e = failure(c.consume(&cx, &message()).await);
    assert_eq!(e.kind(), ErrorKind::Invalid);
    let reason = e.to_string();
    assert!(
        reason.contains("404") && reason.contains("no such hook here xxx"),
        "{reason}"
    );
    let excerpt = reason.split_once(": ").map(|(_, b)| b).unwrap_or_default();
    assert_eq!(excerpt.chars().count(), 200, "{reason}");
    let c = consumer(
        &format!("url = \"http://{addr}/moved\""),
        &Resources::new(),
        &cx,
    )
    .await;
    let e = failure(c.consume(&cx, &message()).await);
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.to_string().contains("302"), "{e}");
}

#[tokio::test]
async fn a_server_slower_than_the_timeout_is_transient() {
    let router = Router::new().route(
        "/hook",
        any(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK
        }),
    );
    let (addr, _) = serve(router).await;
    let cx = context(1);
    let c = consumer(
        &format!("url = \"http://{addr}/hook\"\ntimeout = \"300ms\""),
        &Resources::new(),
        &cx,
    )
    .await;
    let started = std::time::Instant::now();
    let e = failure(c.consume(&cx, &message()).await);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(e.kind(), ErrorKind::Transient);
    let reason = e.to_string();
    assert!(
        reason.contains("timeout") && reason.contains("300ms"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cx = context(1);
    let c = consumer(
        &format!("url = \"http://127.0.0.1:{port}/hook\""),
        &Resources::new(),
        &cx,
    )
    .await;
    let e = failure(c.consume(&cx, &message()).await);
    assert_eq!(e.kind(), ErrorKind::Transient);
    let reason = e.to_string();
    assert!(
        reason.contains("cannot connect") && reason.contains(&format!("127.0.0.1:{port}/hook")),
        "{reason}"
    );
}

type Captured = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

fn capturing_router() -> (Router, Captured) {
    let captured: Captured = Arc::default();
    let router = Router::new()
        .route(
            "/hook",
            any(
                |State(c): State<Captured>, headers: HeaderMap, body: Bytes| async move {
                    c.lock().unwrap().push((headers, body));
                    StatusCode::OK
                },
            ),
        )
        .with_state(Arc::clone(&captured));
    (router, captured)
}

/// The recipe of docs/http-consumer.md, in Rust.
fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let timestamp = h("x-hub-timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    h("x-hub-signature-256") == format!("sha256={expected}")
}

#[tokio::test]
async fn requests_are_signed_and_carry_the_hub_headers() {
    let (router, captured) = capturing_router();
    let (addr, _) = serve(router).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "It's a Secret to Everybody\n").unwrap();
    let cx = context(1);
    let settings = format!(
        "url = \"http://{addr}/hook\"\nmethod = \"PUT\"\npayload = \"message\"\n\
         secret = {{ file = \"{}\" }}\nheaders = {{ X-Static = \"static value\" }}",
        secret_file.display()
    );
    let c = consumer(&settings, &Resources::new(), &cx).await;
    let msg = Message::builder("org.example.signed", json!({"a": [1, 2]}))
        .id("msg-0001")
        .header(ATTEMPTS_HEADER, 3)
        .build();
    c.consume(&cx.handling(msg.clone()), &msg).await.unwrap();
    let (headers, body) = captured.lock().unwrap().pop().unwrap();
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(h("content-type"), "application/json");
    assert_eq!(
        h("user-agent"),
        format!("hub/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(h("x-hub-topic"), "org.example.signed");
    assert_eq!(h("x-hub-message-id"), "msg-0001");
    assert_eq!(h("x-hub-attempt"), "3");
    assert_eq!(h("x-static"), "static value");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts: u64 = h("x-hub-timestamp").parse().unwrap();
    assert!(ts.abs_diff(now) <= 5, "{ts} vs {now}");
    // The file's trailing newline is not part of the key.
    assert!(verify(b"It's a Secret to Everybody", &headers, &body));
    assert!(!verify(b"It's a Secret to Everybody\n", &headers, &body));
    // payload = "message": the whole envelope.
    let envelope = Message::from_json(std::str::from_utf8(&body).unwrap()).unwrap();
    assert_eq!(envelope.id(), "msg-0001");
    assert_eq!(envelope.topic(), "org.example.signed");
    assert_eq!(envelope.body(), msg.body());
    assert_eq!(envelope.attempt(), 3);

    // Without a secret: no signature headers; the attempt of a first delivery is 1.
    let c = consumer(
        &format!("url = \"http://{addr}/hook\""),
        &Resources::new(),
        &cx,
    )
    .await;
    let msg = message();
    c.consume(&cx.handling(msg.clone()), &msg).await.unwrap();
    let (headers, _) = captured.lock().unwrap().pop().unwrap();
    assert!(headers.get("x-hub-signature-256").is_none());
    assert!(headers.get("x-hub-timestamp").is_none());
    assert_eq!(headers.get("x-hub-attempt").unwrap(), "1");
}

#[derive(Default)]
struct Gate {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

#[tokio::test]
async fn concurrency_n_means_n_requests_in_flight_at_once() {
    const N: usize = 4;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let gate = Arc::new(Gate::default());
    let router = Router::new()
        .route(
            "/hook",
            any(
                |State((barrier, gate)): State<(Arc<tokio::sync::Barrier>, Arc<Gate>)>| async move {
                    let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    // Held until all N are here at once (or refused after 5 s).
                    let all_here = tokio::time::timeout(Duration::from_secs(5), barrier.wait())
                        .await
                        .is_ok();
                    gate.in_flight.fetch_sub(1, Ordering::SeqCst);
                    if all_here {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                },
            ),
        )
        .with_state((barrier, Arc::clone(&gate)));
    let (addr, accepts) = serve(router).await;
    let cx = context(N);
    let c = consumer(
        &format!("url = \"http://{addr}/hook\""),
        &Resources::new(),
        &cx,
    )
    .await;
    let msgs: Vec<Message> = (0..N)
        .map(|i| Message::new("org.example.hook", json!({ "i": i })))
        .collect();
    let calls = msgs.iter().map(|m| c.consume(&cx, m));
    let results = tokio::time::timeout(
        Duration::from_secs(8),
        futures_util::future::join_all(calls),
    )
    .await
    .unwrap();
    for r in results {
        r.unwrap();
    }
    assert_eq!(gate.max_in_flight.load(Ordering::SeqCst), N);
    assert_eq!(accepts.load(Ordering::SeqCst), N);
}

#[tokio::test]
async fn consumers_naming_one_http_client_share_its_pool() {
    let (router, captured) = capturing_router();
    let (addr, accepts) = serve(router).await;
    let cx = context(1);
    let shared = HttpClientConfig::default().build("shared").unwrap();
    let resources = Resources::new().with_named("shared", shared);
    let settings = format!("url = \"http://{addr}/hook\"\nclient = \"shared\"");
    let a = consumer(&settings, &resources, &cx).await;
    let b = consumer(&settings, &resources, &cx).await;
    let msg = message();
    for c in [&a, &b, &a, &b] {
        c.consume(&cx, &msg).await.unwrap();
        // Let the connection go back to the pool before the next request.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(captured.lock().unwrap().len(), 4);
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "one pool: one connection"
    );

    // Each with its own client: a connection each.
    let (router, _) = capturing_router();
    let (addr, accepts) = serve(router).await;
    let settings = format!("url = \"http://{addr}/hook\"");
    let a = consumer(&settings, &Resources::new(), &cx).await;
    let b = consumer(&settings, &Resources::new(), &cx).await;
    for c in [&a, &b, &a, &b] {
        c.consume(&cx, &msg).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        2,
        "two pools: two connections"
    );
}

#[tokio::test]
async fn the_client_resource_timeout_is_the_default_and_the_consumers_wins() {
    let router = Router::new().route(
        "/hook",
        any(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK
        }),
    );
    let (addr, _) = serve(router).await;
    let cx = context(1);
    let shared = HttpClientConfig {
        timeout: Some(Duration::from_millis(200)),
        ..HttpClientConfig::default()
    }
    .build("shared")
    .unwrap();
    let resources = Resources::new().with_named("shared", shared);
    let settings = format!("url = \"http://{addr}/hook\"\nclient = \"shared\"");
    let e = failure(
        consumer(&settings, &resources, &cx)
            .await
            .consume(&cx, &message())
            .await,
    );
    assert!(e.to_string().contains("timeout (200ms)"), "{e}");
    let settings = format!("{settings}\ntimeout = \"100ms\"");
    let e = failure(
        consumer(&settings, &resources, &cx)
            .await
            .consume(&cx, &message())
            .await,
    );
    assert!(e.to_string().contains("timeout (100ms)"), "{e}");
}

#[test]
fn settings_errors_name_the_key() {
    let err = |settings: &str, resources: &Resources| {
        build_consumer::<HttpConfig>(settings, resources)
            .err()
            .unwrap_or_default()
    };
    let none = Resources::new();
    let e = err("method = \"POST\"", &none);
    assert!(e.contains("url"), "{e}");
    let e = err("url = \"ftp://example.com/x\"", &none);
    assert!(
        e.contains("url: must start with http:// or https://"),
        "{e}"
    );
    let e = err("url = \"http://x/\"\nmethod = \"HEAD\"", &none);
    assert!(e.contains("method"), "{e}");
    let e = err(
        "url = \"http://x/\"\nheaders = { Authorization = { env = \"HUB_HTTP_TEST_NEVER_SET_7f3a\" } }",
        &none,
    );
    assert!(
        e.contains(
            "headers.Authorization: environment variable HUB_HTTP_TEST_NEVER_SET_7f3a is not set"
        ),
        "{e}"
    );
    let e = err(
        "url = \"http://x/\"\nsecret = { file = \"/nonexistent/hub-http-secret\" }",
        &none,
    );
    assert!(
        e.contains("secret: cannot read /nonexistent/hub-http-secret"),
        "{e}"
    );
    let e = err(
        "url = \"http://x/\"\nheaders = { X-Hub-Topic = \"mine\" }",
        &none,
    );
    assert!(
        e.contains("headers.X-Hub-Topic: set by the consumer"),
        "{e}"
    );
    let e = err("url = \"http://x/\"\nclient = \"shraed\"", &none);
    assert!(e.contains("client: no [resources.shraed]"), "{e}");
    let resources = Resources::new().with_named(
        "shared",
        HttpClientConfig::default().build("shared").unwrap(),
    );
    let e = err(
        "url = \"http://x/\"\nclient = \"shared\"\nca_file = \"/etc/ssl/x.pem\"",
        &resources,
    );
    assert!(
        e.contains("ca_file: this consumer sends through [resources.shared]"),
        "{e}"
    );
    let e = err(
        "url = \"http://x/\"\nca_file = \"/nonexistent/ca.pem\"",
        &none,
    );
    assert!(
        e.contains("ca_file: cannot read /nonexistent/ca.pem"),
        "{e}"
    );
    let e = err("url = \"http://x/\"\ntimeout = \"0s\"", &none);
    assert!(e.contains("timeout: must be longer than zero"), "{e}");
    let e = err("url = \"http://x/\"\npayload = \"envelope\"", &none);
    assert!(e.contains("payload"), "{e}");
}

const SECRET_ENV: &str = "HUB_HTTP_TEST_SECRET_TOKEN";

/// Runs [`secret_child`] in a new process with the secret in its environment (setting an
/// environment variable in this process would take `unsafe`).
#[test]
fn an_env_secret_never_reaches_logs_errors_or_debug() {
    let secret = format!("tok-{}-{}", std::process::id(), now_nanos());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "secret_child", "--nocapture", "--test-threads=1"])
        .env(SECRET_ENV, &secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("secret child: done"), "{stdout}\n{stderr}");
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret));
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Does nothing unless run by [`an_env_secret_never_reaches_logs_errors_or_debug`].
#[test]
fn secret_child() {
    let Ok(secret) = std::env::var(SECRET_ENV) else {
        return;
    };
    // Everything at TRACE, `log` records (reqwest's) included, into a buffer; one thread, so
    // the connection tasks log into it too.
    let _ = tracing_log::LogTracer::init();
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut texts = Vec::new();
    runtime.block_on(async {
        let seen: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let router = Router::new()
            .route(
                "/hook",
                any(
                    |State(seen): State<Arc<Mutex<HashMap<String, String>>>>,
                     headers: HeaderMap| async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        seen.lock().unwrap().insert("authorization".into(), auth);
                        (StatusCode::SERVICE_UNAVAILABLE, "try later")
                    },
                ),
            )
            .with_state(Arc::clone(&seen));
        let (addr, _) = serve(router).await;
        let settings = json!({
            "url": format!("http://{addr}/hook"),
            "headers": { "Authorization": { "env": SECRET_ENV } },
            "secret": { "env": SECRET_ENV },
        });
        let config: HttpConfig = serde_json::from_value(settings).unwrap();
        texts.push(format!("{config:?}"));
        let c = config.into_consumer(&Resources::new()).unwrap();
        texts.push(format!("{c:?}"));
        let cx = context(1);
        c.start(&cx).await.unwrap();
        let e = failure(c.consume(&cx, &message()).await);
        texts.push(e.to_string());
        texts.push(format!("{e:?}"));
        tracing::info!(error = %e, "what the hub would log");
        // It was sent, as the header's value.
        let auth = seen.lock().unwrap().get("authorization").cloned();
        assert_eq!(auth.as_deref(), Some(secret.as_str()));
    });
    drop(runtime);
    let logs = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    // The capture works: the client's own TRACE lines are there.
    assert!(logs.contains("TRACE"), "{logs}");
    assert!(logs.contains("what the hub would log"), "{logs}");
    assert!(
        !logs.contains(&secret),
        "the secret is in the logs:\n{logs}"
    );
    for t in &texts {
        assert!(!t.contains(&secret), "the secret is in {t}");
        assert!(!t.is_empty());
    }
    println!("secret child: done ({} bytes of logs)", logs.len());
    std::io::stdout().flush().unwrap();
}

/// Accepts TCP connections on 127.0.0.1 and completes a TLS handshake (ALPN `h2`, then
/// `http/1.1`) before handing each to axum; a failed handshake is dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.tls.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An HTTPS server for `localhost` (certificate from a private CA) answering 204 and noting the
/// HTTP version of each request in `versions`; its port and the CA file.
async fn serve_https(
    dir: &std::path::Path,
    versions: Arc<Mutex<Vec<axum::http::Version>>>,
) -> (u16, std::path::PathBuf) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = hub_testkit::localhost_pki(dir);
    let certs = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = TlsListener {
        tcp,
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    let router = Router::new()
        .route(
            "/hook",
            any(
                |State(versions): State<Arc<Mutex<Vec<axum::http::Version>>>>,
                 version: axum::http::Version| async move {
                    versions.lock().unwrap().push(version);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(versions);
    tokio::spawn(async move { axum::serve(listener, router).await });
    (port, pki.ca)
}

/// HTTPS with the CA given in `ca_file`: the request goes through, over HTTP/2 (offered by the
/// server through ALPN), or HTTP/1.1 through a shared client that says `http1_only`; without
/// the CA, the server's certificate is refused and the message is transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_speaks_http2_when_offered() {
    let versions: Arc<Mutex<Vec<axum::http::Version>>> = Arc::default();
    let dir = tempfile::tempdir().unwrap();
    let (port, ca) = serve_https(dir.path(), Arc::clone(&versions)).await;
    let url = format!("https://localhost:{port}/hook");
    let ca_toml = format!("{:?}", ca.display().to_string());
    let cx = context(1);
    let msg = message();

    let trusted = consumer(
        &format!("url = \"{url}\"\nca_file = {ca_toml}"),
        &Resources::new(),
        &cx,
    )
    .await;
    trusted
        .consume(&cx.handling(msg.clone()), &msg)
        .await
        .unwrap();

    let h1 = HttpClientConfig {
        ca_file: Some(ca.clone()),
        http1_only: true,
        ..HttpClientConfig::default()
    }
    .build("h1")
    .unwrap();
    let resources = Resources::new().with_named("h1", h1);
    let via_h1 = consumer(
        &format!("url = \"{url}\"\nclient = \"h1\""),
        &resources,
        &cx,
    )
    .await;
    via_h1
        .consume(&cx.handling(msg.clone()), &msg)
        .await
        .unwrap();
    assert_eq!(
        *versions.lock().unwrap(),
        [axum::http::Version::HTTP_2, axum::http::Version::HTTP_11]
    );

    // Without the CA: not trusted, transient, the reason says why.
    let untrusted = consumer(&format!("url = \"{url}\""), &Resources::new(), &cx).await;
    let e = failure(untrusted.consume(&cx.handling(msg.clone()), &msg).await);
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert_eq!(
        versions.lock().unwrap().len(),
        2,
        "nothing reached the server"
    );
}
