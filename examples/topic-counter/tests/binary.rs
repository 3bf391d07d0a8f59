//! The binary: an async set-up (the pool) inside `#[tokio::main]`, `hub check` building the
//! consumer that requires it, and logs that stay JSON when a consumer panics.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_topic-counter");

#[test]
fn check_builds_the_pool_from_the_file_and_the_consumer_that_names_it() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/hub.toml");
    let out = Command::new(BIN)
        .args(["check", "--config", config])
        .env_remove("HUB_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("resource main") && summary.contains("type=postgres_pool"),
        "{summary}"
    );
    assert!(summary.contains("type=topic_count"), "{summary}");

    // A consumer naming a pool that is not configured fails `hub check`, not the first message.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("hub.toml");
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("pool = \"main\"", "pool = \"mian\"");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .env_remove("HUB_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `consumers.count.settings`")
            && err.contains("no [resources.mian] is configured (did you mean `main`?)"),
        "{err}"
    );
}

#[test]
fn a_panicking_consumer_keeps_every_log_line_json() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            r##"
[http]
listen = "127.0.0.1:{port}"
[backends.local]
type = "memory"
[producers.tick]
type = "ticker"
settings = {{ topic = "org.example.tick", rate = 200.0 }}
[consumers.crash]
type = "crash"
topics = ["#"]
"##
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env_remove("HUB_CONFIG")
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stderr as it comes: a full pipe would block the hub's logging.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        stderr.read_to_string(&mut log).unwrap();
        log
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the hub did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = reader.join().unwrap();
    let mut panics = 0;
    let mut suppressed = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        if v["target"] == "hub::panic" {
            if v["fields"]["panic"].is_string() {
                panics += 1;
                assert!(
                    v["fields"]["location"]
                        .as_str()
                        .unwrap()
                        .contains("src/lib.rs"),
                    "{line}"
                );
                assert!(
                    v["fields"]["backtrace"].is_string(),
                    "RUST_BACKTRACE=1: {line}"
                );
            } else {
                suppressed += v["fields"]["suppressed"].as_u64().unwrap();
            }
        }
    }
    // 200 panics a second for 1.5 s: at most 10 a second are logged, the rest counted.
    assert!((10..=30).contains(&panics), "{panics} panic events");
    assert!(suppressed > 100, "{suppressed} counted as left out");
}
