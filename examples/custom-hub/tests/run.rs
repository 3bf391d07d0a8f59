//! The example binary builds, lists its own consumer beside the stock ones, and runs it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_custom-hub");

fn metrics(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut t = String::new();
    s.read_to_string(&mut t).ok()?;
    Some(t)
}

#[test]
fn lists_the_custom_consumer_beside_the_stock_ones() {
    let out = Command::new(BIN).arg("consumers").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("greeter") && text.contains("echo") && text.contains("ticker"),
        "{text}"
    );
}

#[test]
fn runs_the_custom_consumer_end_to_end() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/hub.toml");
    let check = Command::new(BIN)
        .args(["check", "--config", config])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut child = Command::new(BIN)
        .args(["run", "--config", config])
        .env("HUB_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("HUB_PRODUCERS__PEOPLE__SETTINGS__RATE", "50.0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let series = r#"hub_consumer_processed_messages_total{consumer="greeter",outcome="ok"} "#;
    loop {
        let done = metrics(port)
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(series)?.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        if done >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "greeter never processed 5 messages"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["topic"], "org.example.greeting");
    assert_eq!(first["body"]["text"], "hello, world");
}
