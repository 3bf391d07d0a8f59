//! The Grafana dashboard and the Prometheus alert rules in `config/`, against a real Prometheus
//! (Debian's `prometheus` package, started here on a free port, scraping the `hub` binary every
//! second): every panel's query returns data through Prometheus's HTTP API, `promtool check
//! rules` passes, and the stuck-consumer alert fires for a consumer that stops completing
//! (the rules' `for:` shortened for the test) and not for one that keeps up.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A PromQL query through Prometheus's HTTP API: the result vector.
fn query(port: u16, q: &str) -> Vec<serde_json::Value> {
    let (status, body) = http_get(port, &format!("/api/v1/query?query={}", encode(q)))
        .unwrap_or_else(|| panic!("Prometheus did not answer {q}"));
    assert_eq!(status, 200, "{q}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{q}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn the_rules_check_and_the_dashboard_and_alerts_work_against_a_real_prometheus() {
    let rules = Path::new(ROOT).join("config/prometheus-alerts.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool (scripts/test installs Debian's prometheus package)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let u = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let name = format!("obs{u}");
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[hub]
name = "{name}"
shutdown_grace = "1s"
[http]
listen = "127.0.0.1:{port}"
[backends.mem]
type = "memory"
[backends.rabbit]
type = "amqp"
url = "{URL}"
[producers.tick]
type = "ticker"
backend = "mem"
[producers.tick.settings]
topic = "org.obs.tick"
rate = 50.0
[consumers.fast]
type = "delay"
backend = "mem"
topics = ["org.obs.#"]
settings = {{ delay = "0ms" }}
[consumers.stuck]
type = "delay"
backend = "mem"
topics = ["org.obs.#"]
queue_capacity = 100000
settings = {{ delay = "1h" }}
[consumers.durable]
type = "delay"
backend = "rabbit"
durable = true
topics = ["{name}.#"]
settings = {{ delay = "0ms" }}
"#
        ),
    );
    let mut hub_proc = spawn(
        hub(&["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_ready(port, &mut hub_proc);

    // The rules as shipped, with their `for:` shortened and their windows fitted to a run of
    // seconds.
    let test_rules = dir.path().join("rules.yml");
    let text = std::fs::read_to_string(&rules)
        .unwrap()
        .replace("for: 5m", "for: 3s")
        .replace("for: 15m", "for: 3s")
        .replace("for: 2m", "for: 3s")
        .replace("[2m]", "[20s]");
    std::fs::write(&test_rules, text).unwrap();
    let prom_port = free_port();
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: hub\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            test_rules.display()
        ),
    )
    .unwrap();
    let _prometheus = spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until("Prometheus ready", Duration::from_secs(30), || {
        http_get(prom_port, "/-/ready").is_some_and(|(s, _)| s == 200)
    });
    wait_until("a few scrapes", Duration::from_secs(30), || {
        !query(prom_port, "hub_consumer_backlog_messages").is_empty()
            && !query(
                prom_port,
                r#"rate(hub_consumer_received_messages_total{consumer="fast"}[1m]) > 0"#,
            )
            .is_empty()
    });

    // Every panel's query returns data.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("config/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$consumer", ".*")
                .replace("$__rate_interval", "1m");
            let mut result = query(prom_port, &expr);
            // A series that needs two scrapes (rate) may need a moment more.
            let deadline = Instant::now() + Duration::from_secs(15);
            while result.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                result = query(prom_port, &expr);
            }
            assert!(
                !result.is_empty(),
                "panel {:?}: no data for {expr}",
                p["title"]
            );
        }
    }
    // The consumer variable lists the consumers.
    let (_, values) = http_get(prom_port, "/api/v1/label/consumer/values").unwrap();
    for c in ["fast", "stuck", "durable"] {
        assert!(values.contains(c), "{values}");
    }

    // The stuck consumer's alert fires; the fast one's does not.
    let mut firing = Vec::new();
    wait_until("HubConsumerStuck fires", Duration::from_secs(60), || {
        let (_, body) = http_get(prom_port, "/api/v1/alerts").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        firing = v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing" && a["labels"]["alertname"] == "HubConsumerStuck")
            .map(|a| a["labels"]["consumer"].as_str().unwrap_or("").to_owned())
            .collect();
        firing.iter().any(|c| c == "stuck")
    });
    assert!(!firing.iter().any(|c| c == "fast"), "{firing:?}");

    signal(&hub_proc, "-TERM");
    let _ = wait_exit(&mut hub_proc, Duration::from_secs(15));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(amqp_delete_queues(&[
        format!("{name}.durable"),
        format!("{name}.dead-letters"),
    ]));
}
