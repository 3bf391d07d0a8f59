//! End-to-end tests: the real `hub` binary on configs in a temp dir, on free loopback ports.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// The binary's own part of a run: SIGTERM drains and exits 0, with plain-text logs. What flows
/// and what the metrics say is checked in process (`in_process.rs`).
#[test]
fn sigterm_drains_in_order_and_exits_0_with_plain_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let echo = dir.path().join("fast.jsonl");
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[hub]
name = "e2e"
shutdown_grace = "8s"
[http]
listen = "127.0.0.1:{port}"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
[producers.tick.settings]
topic = "org.e2e.tick"
rate = 200.0
[consumers.fast]
type = "echo"
topics = ["org.e2e.#"]
[consumers.fast.settings]
path = "{}"
[consumers.slow]
type = "delay"
topics = ["org.*.tick"]
queue_capacity = 50
when_full = "drop_oldest"
[consumers.slow.settings]
delay = "20ms"
"#,
            echo.display()
        ),
    );
    let mut child = spawn(
        hub(&["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_ready(port, &mut child);
    std::thread::sleep(Duration::from_millis(500));
    let metrics = http_get(port, "/metrics").unwrap().1;
    let received = sample(
        &metrics,
        r#"hub_consumer_received_messages_total{consumer="fast"}"#,
    )
    .unwrap();
    assert!(received > 10.0, "{metrics}");

    let t = Instant::now();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "exit {status}");
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "drain took {:?}",
        t.elapsed()
    );
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("every queued message finished"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "no colour codes when stderr is not a terminal: {log}"
    );

    // Every message the fast consumer finished is in the file, in order, with no gap.
    let lines = std::fs::read_to_string(&echo).unwrap();
    let seqs: Vec<u64> = lines
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["body"]["seq"].as_u64().unwrap()
        })
        .collect();
    assert!(seqs.len() as f64 >= received, "{} lines", seqs.len());
    assert!(
        seqs.iter().copied().eq(0..seqs.len() as u64),
        "gap or reorder in echo output"
    );
}

#[test]
fn second_signal_exits_at_once_with_130() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!(
            r##"
[hub]
shutdown_grace = "60s"
[http]
listen = "127.0.0.1:{port}"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
settings = {{ topic = "a.b", rate = 50.0 }}
[consumers.stuck]
type = "delay"
topics = ["#"]
settings = {{ delay = "30s" }}
"##
        ),
    );
    let mut child =
        spawn(hub(&["run", "--config", config.to_str().unwrap()]).stderr(Stdio::null()));
    wait_ready(port, &mut child);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "first signal drains (60 s grace)"
    );
    let (status, ready) = http_get(port, "/ready").unwrap();
    assert_eq!(status, 503, "not ready while draining: {ready}");
    signal(&child, "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
}

#[test]
fn check_passes_on_every_file_in_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check(&path);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("consumer "),
                "check lists consumers"
            );
            n += 1;
        }
    }
    assert!(n >= 2, "config/ holds hub.toml and reference.toml");
}

#[test]
fn route_lists_the_consumers_a_topic_reaches_and_exits_1_when_none() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/hub.toml");
    let demo = demo.to_str().unwrap();
    let out = hub(&["route", "org.hub.demo.tick", "--config", demo])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("consumer fast") && text.contains(r#"patterns=["org.hub.demo.#"]"#),
        "{text}"
    );
    assert!(text.contains("consumer slow") && text.contains(r#"patterns=["org.hub.#"]"#));
    let out = hub(&["route", "org.hub", "--config", demo])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("consumer slow") && !text.contains("consumer fast"),
        "{text}"
    );
    let out = hub(&["route", "com.example.other", "--config", demo])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no consumer's patterns match"));
    let out = hub(&["route", "org.*", "--config", demo]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a pattern is not a topic: {out:?}"
    );
}

const VALID: &str = r#"
[backends.mem]
type = "memory"
[consumers.c]
type = "delay"
topics = ["org.#"]
settings = { delay = "1ms" }
"#;

#[test]
fn broken_configs_exit_2_and_name_the_key() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown key",
            "[http]\nlisen = \"127.0.0.1:1\"\n",
            &[
                "key `http.lisen`",
                "unknown key `lisen` (did you mean `listen`?)",
            ],
        ),
        (
            "unknown section",
            "[hubb]\n",
            &["key `hubb`", "unknown section"],
        ),
        (
            "unknown type",
            "[consumers.d]\ntype = \"ech\"\ntopics = [\"#\"]\n",
            &[
                "key `consumers.d.type`",
                "unknown consumer type `ech` (did you mean `echo`?); known: delay, echo, exec, http, notify, postgres, reply",
            ],
        ),
        (
            "bad duration",
            "[consumers.d]\ntype = \"delay\"\ntopics = [\"#\"]\nsettings = { delay = \"fast\" }\n",
            &[
                "key `consumers.d.settings.delay`",
                "expected a duration like",
            ],
        ),
        (
            "bad grace",
            "[hub]\nshutdown_grace = \"10 parsecs\"\n",
            &["key `hub.shutdown_grace`"],
        ),
        (
            "unknown backend",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\nbackend = \"nope\"\n",
            &[
                "key `consumers.d.backend`",
                "unknown backend \"nope\"; configured backends: mem",
            ],
        ),
        (
            "invalid pattern",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"a.#\", \"a..b\"]\n",
            &["key `consumers.d.topics[1]`", "word 2 is empty"],
        ),
        (
            "unknown settings key",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\nsettings = { pth = \"x\" }\n",
            &["key `consumers.d.settings.pth`"],
        ),
        (
            "bad when_full",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\nwhen_full = \"drop_all\"\n",
            &["key `consumers.d.when_full`", "drop_oldest"],
        ),
        (
            "no attempts",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\nretry = { max_attempts = 0 }\n",
            &["key `consumers.d.retry.max_attempts`", "at least 1"],
        ),
        (
            "retry typo",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\nretry = { max_attempt = 2 }\n",
            &[
                "key `consumers.d.retry.max_attempt`",
                "did you mean `max_attempts`",
            ],
        ),
        (
            "max_delay below delay",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\nretry = { delay = \"10s\", max_delay = \"1s\" }\n",
            &["key `consumers.d.retry.max_delay`", "at least `delay`"],
        ),
        (
            "zero rate",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\nrate_limit = { rate = 0 }\n",
            &["key `consumers.d.rate_limit.rate`", "at least 1"],
        ),
        (
            "two dead-letter sinks",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\ndead_letter = { file = \"/tmp/x\", topic = \"t\" }\n",
            &["key `consumers.d.dead_letter`", "either `file` or `topic`"],
        ),
        (
            "dead-letter topic on an unknown backend",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\ndead_letter = { topic = \"t\", backend = \"nope\" }\n",
            &[
                "key `consumers.d.dead_letter.backend`",
                "unknown backend \"nope\"",
            ],
        ),
        (
            "dead letters on amqp",
            "[backends.rabbit]\ntype = \"amqp\"\nurl = \"amqp://127.0.0.1\"\n[consumers.d]\ntype = \"echo\"\nbackend = \"rabbit\"\ntopics = [\"#\"]\ndead_letter = { file = \"/tmp/x\" }\n",
            &[
                "key `consumers.d.dead_letter`",
                "keeps its own dead letters",
            ],
        ),
        (
            "own dead letters back to itself",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\ndead_letter = { topic = \"dead.d\" }\n",
            &[
                "key `consumers.d.dead_letter.topic`",
                "would come back to it",
            ],
        ),
        (
            "batch_delay without batches",
            "[consumers.d]\ntype = \"echo\"\ntopics = [\"#\"]\nbatch_delay = \"50ms\"\n",
            &["key `consumers.d.batch_delay`", "set batch_size above 1"],
        ),
    ];
    for (what, extra, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &format!("{VALID}\n{extra}"));
        let out = check(&config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains(&config.display().to_string()),
            "{what}: names the file: {err}"
        );
        for n in *needles {
            assert!(err.contains(n), "{what}: expected {n:?} in:\n{err}");
        }
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "{VALID}\n[http]\nlisten = \"nowhere\"\n[consumers.x]\ntype = \"nope\"\ntopics = [\"#\"]\n[consumers.y]\ntype = \"echo\"\ntopics = []\n"
        ),
    );
    let out = check(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.starts_with("3 configuration problems"), "{err}");
    for key in [
        "`http.listen`",
        "`consumers.x.type`",
        "`consumers.y.topics`",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
}

#[test]
fn missing_config_file_is_an_error() {
    let out = hub(&["run", "--config", "/nonexistent/hub.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/hub.toml: configuration file not found")
    );
}

#[test]
fn environment_overrides_nested_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), VALID);
    let out = hub(&["check", "--config", config.to_str().unwrap()])
        .env("HUB_HTTP__LISTEN", "127.0.0.1:9999")
        .env("HUB_CONSUMERS__C__CONCURRENCY", "3")
        .env("HUB_UNRELATED", "ignored: no `__`, not a config key")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("http listen 127.0.0.1:9999"), "{stdout}");
    assert!(stdout.contains("concurrency=3"), "{stdout}");

    let out = hub(&["check", "--config", config.to_str().unwrap()])
        .env("HUB_HTTP__LISTN", "x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("environment variable HUB_HTTP__LISTN") && err.contains("`http.listn`"),
        "{err}"
    );
}

#[test]
fn consumers_lists_registered_types() {
    let out = hub(&["consumers"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for t in ["echo", "delay", "reply", "ticker", "memory"] {
        assert!(text.contains(t), "{t} missing:\n{text}");
    }
}

#[test]
fn zeromq_round_trip_with_hub_publish_and_hub_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (port, inp, out) = (free_port(), free_port(), free_port());
    let echo = dir.path().join("in.jsonl");
    let config = write_config(
        dir.path(),
        &format!(
            r##"
[http]
listen = "127.0.0.1:{port}"
[backends.bus]
type = "zeromq"
subscribe = ["tcp://127.0.0.1:{inp}"]
publish = "tcp://127.0.0.1:{out}"
[consumers.log]
type = "echo"
topics = ["org.cli.#"]
settings = {{ path = "{}" }}
[consumers.answer]
type = "reply"
topics = ["org.cli.*"]
settings = {{ topic = "org.reply.done" }}
"##,
            echo.display()
        ),
    );
    let mut hub_proc =
        spawn(hub(&["run", "--config", config.to_str().unwrap()]).stderr(Stdio::null()));
    let mut tail = spawn(
        hub(&[
            "tail",
            "--connect",
            &format!("tcp://127.0.0.1:{out}"),
            "--topic",
            "org.reply.#",
            "--count",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(500));
    let sent = hub(&[
        "publish",
        "--bind",
        &format!("tcp://127.0.0.1:{inp}"),
        "org.cli.hello",
        r#"{"x": 1}"#,
    ])
    .output()
    .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let id = String::from_utf8_lossy(&sent.stdout).trim().to_owned();

    let mut tailed = String::new();
    tail.stdout
        .take()
        .unwrap()
        .read_to_string(&mut tailed)
        .unwrap();
    assert!(wait_exit(&mut tail, Duration::from_secs(10)).success());
    let line: serde_json::Value = serde_json::from_str(tailed.lines().next().unwrap()).unwrap();
    assert_eq!(line["topic"], "org.reply.done");
    assert_eq!(line["body"], serde_json::json!({"x": 1}));
    assert_eq!(
        line["headers"]["headers"]["in_reply_to"],
        id.as_str(),
        "{line}"
    );

    let logged: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&echo)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(logged["id"], id.as_str());
    assert_eq!(
        logged["headers"]["username"].as_str().map(str::is_empty),
        Some(false)
    );
    signal(&hub_proc, "-TERM");
    assert!(wait_exit(&mut hub_proc, Duration::from_secs(15)).success());
}

mod amqp {
    //! Two real `hub` processes on one durable RabbitMQ queue (scripts/test starts RabbitMQ).
    use super::*;
    use hub_amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use hub_amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
    use std::collections::BTreeSet;

    fn ids(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                serde_json::from_str::<serde_json::Value>(l).ok()?["body"]["i"].as_u64()
            })
            .collect()
    }

    fn start(dir: &Path, name: &str, tag: &str, topic: &str) -> (Proc, u16, PathBuf) {
        let port = free_port();
        let out = dir.join(format!("{tag}.jsonl"));
        let cfg = dir.join(format!("{tag}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r##"
[hub]
name = "{name}"
[http]
listen = "127.0.0.1:{port}"
[backends.rabbit]
type = "amqp"
url = "{URL}"
prefetch = 20
[consumers.keep]
type = "echo"
topics = ["{topic}"]
durable = true
settings = {{ path = "{}" }}
[consumers.slow]
type = "delay"
topics = ["{topic}"]
settings = {{ delay = "20ms" }}
"##,
                out.display()
            ),
        )
        .unwrap();
        let mut p = spawn(
            hub(&["run", "--config", cfg.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_ready(port, &mut p);
        (p, port, out)
    }

    /// Every message id in `queue`, left there (never acknowledged; the channel closes).
    async fn ids_in(ch_conn: &Connection, queue: &str) -> Vec<String> {
        use hub_amqp::lapin::options::BasicGetOptions;
        let ch = ch_conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
        {
            let p = m.delivery.properties;
            out.push(p.message_id().as_ref().unwrap().as_str().to_owned());
        }
        let _ = ch.close(200, "counted".into()).await;
        out
    }

    /// `hub dead requeue` on an AMQP dead-letter queue, killed with SIGKILL halfway, loses no
    /// letter: each is in the dead-letter queue or in its consumer's queue (or both); a second
    /// run finishes the job. `hub dead list` groups them first.
    #[test]
    fn dead_requeue_from_the_dead_letter_queue_loses_nothing_when_killed_halfway() {
        use hub_amqp::lapin::options::QueueDeclareOptions;
        use hub_amqp::lapin::types::{AMQPValue, FieldTable};
        const N: usize = 3000;
        let dir = tempfile::tempdir().unwrap();
        let u = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let name = format!("dlq{u}");
        let (dlq, cq) = (format!("{name}.dead-letters"), format!("{name}.keep"));
        let cfg = write_config(
            dir.path(),
            &format!(
                r##"
[hub]
name = "{name}"
[backends.rabbit]
type = "amqp"
url = "{URL}"
[consumers.keep]
type = "echo"
topics = ["dlq.#"]
durable = true
"##
            ),
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        let conn = rt.block_on(async {
            let conn = Connection::connect(URL, ConnectionProperties::default())
                .await
                .expect("RabbitMQ at 127.0.0.1:5672");
            let ch = conn.create_channel().await.unwrap();
            for q in [&dlq, &cq] {
                ch.queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            }
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let mut confirms = Vec::new();
            for i in 0..N {
                let mut h = FieldTable::default();
                let text = |s: &str| AMQPValue::LongString(s.as_bytes().into());
                h.insert("x-hub-consumer".into(), text("keep"));
                h.insert("x-hub-queue".into(), text(&cq));
                let reason = if i % 3 == 0 {
                    "consumer keep (invalid error): bad"
                } else {
                    "consumer keep (transient error): down (gave up after 3 attempts)"
                };
                h.insert("x-hub-reason".into(), text(reason));
                h.insert("x-hub-attempts".into(), AMQPValue::LongLongInt(3));
                h.insert("x-hub-topic".into(), text("dlq.event"));
                h.insert(
                    "x-hub-dead-lettered-at".into(),
                    text("2026-12-04T12:00:00Z"),
                );
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(format!("m{i}").into())
                    .with_headers(h);
                confirms.push(
                    ch.basic_publish(
                        "".into(),
                        dlq.as_str().into(),
                        BasicPublishOptions::default(),
                        b"{}",
                        props,
                    )
                    .await
                    .unwrap(),
                );
            }
            for c in confirms {
                c.await.unwrap();
            }
            conn
        });
        let c = cfg.to_str().unwrap();

        let listed = hub(&["dead", "list", "rabbit", "--config", c])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        assert!(
            text.starts_with(&format!("{N} dead letters from rabbit")),
            "{text}"
        );
        assert!(text.contains(&format!("{:>7}  keep", N / 3)), "{text}");
        assert_eq!(
            rt.block_on(ids_in(&conn, &dlq)).len(),
            N,
            "list leaves every letter"
        );

        // Killed halfway.
        let mut requeue = spawn(
            hub(&["dead", "requeue", "rabbit", "--config", c])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let moved = rt.block_on(async {
                let ch = conn.create_channel().await.unwrap();
                let q = ch
                    .queue_declare(
                        cq.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
                let _ = ch.close(200, "".into()).await;
                q.message_count() as usize
            });
            if moved >= N / 10 {
                break;
            }
            assert!(
                requeue.try_wait().unwrap().is_none(),
                "requeue ended before it was killed"
            );
            assert!(Instant::now() < deadline, "requeue made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        signal(&requeue, "-KILL");
        let _ = wait_exit(&mut requeue, Duration::from_secs(10));
        let (left, moved) =
            rt.block_on(async { (ids_in(&conn, &dlq).await, ids_in(&conn, &cq).await) });
        assert!(
            !left.is_empty() && !moved.is_empty(),
            "killed halfway: {} left, {} moved",
            left.len(),
            moved.len()
        );
        let union: BTreeSet<&String> = left.iter().chain(&moved).collect();
        assert_eq!(union.len(), N, "no letter lost by the kill");

        // A second run finishes: the dead-letter queue is empty, every letter in its consumer's
        // queue, with the dead-letter headers gone and the topic kept.
        let done = hub(&["dead", "requeue", "rabbit", "--config", c])
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        let (left, moved) =
            rt.block_on(async { (ids_in(&conn, &dlq).await, ids_in(&conn, &cq).await) });
        assert!(left.is_empty(), "{} left", left.len());
        let union: BTreeSet<&String> = moved.iter().collect();
        assert_eq!(union.len(), N);
        assert!(
            moved.len() - N <= 2,
            "at most the letter in hand when killed is doubled: {}",
            moved.len() - N
        );
        rt.block_on(async {
            use hub_amqp::lapin::options::{BasicGetOptions, QueueDeleteOptions};
            let ch = conn.create_channel().await.unwrap();
            let m = ch
                .basic_get(cq.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .unwrap();
            let h = m.delivery.properties.headers().clone().unwrap();
            assert!(h.inner().get("x-hub-reason").is_none());
            assert!(h.inner().get("x-hub-attempts").is_none());
            assert_eq!(
                hub_amqp::wire::to_json(h.inner().get("x-hub-topic").unwrap()),
                "dlq.event"
            );
            for q in [&dlq, &cq] {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "done".into()).await;
        });
    }

    fn wait_union(files: &[&Path], n: u64) -> (BTreeSet<u64>, usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all: Vec<u64> = files.iter().flat_map(|f| ids(f)).collect();
            let union: BTreeSet<u64> = all.iter().copied().collect();
            if union.len() as u64 >= n || Instant::now() > deadline {
                return (union, all.len());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn two_hubs_share_a_durable_queue_exactly_once_and_survive_a_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let u = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let (name, topic) = (format!("pair{u}"), format!("pair{u}.m"));
        let (mut a, port_a, out_a) = start(dir.path(), &name, "a", &topic);
        let (mut b, _, out_b) = start(dir.path(), &name, "b", &topic);
        let rt = tokio::runtime::Runtime::new().unwrap();

        // Both up: every message consumed exactly once in total.
        rt.block_on(amqp_publish(&topic, 0..300, |_| {}));
        let (union, total) = wait_union(&[&out_a, &out_b], 300);
        assert_eq!(union.len(), 300, "every message consumed");
        assert_eq!(total, 300, "exactly once in total while both run");
        assert!(
            !ids(&out_a).is_empty() && !ids(&out_b).is_empty(),
            "both hubs took a share"
        );

        // Kill -9 one mid-stream: the other finishes; duplicates only for what was in flight.
        let pid = b.id().to_string();
        rt.block_on(amqp_publish(&topic, 300..900, |i| {
            if i == 500 {
                assert!(
                    Command::new("kill")
                        .args(["-KILL", &pid])
                        .status()
                        .unwrap()
                        .success()
                );
            }
        }));
        let (union, total) = wait_union(&[&out_a, &out_b], 900);
        assert_eq!(union.len(), 900, "nothing lost after kill -9");
        assert!(
            total - 900 <= 20 + 1,
            "duplicates ({}) only for the killed hub's unacked prefetch",
            total - 900
        );
        let metrics = http_get(port_a, "/metrics").unwrap().1;
        assert!(
            metrics.contains(r#"hub_amqp_queue_messages{consumer="slow"}"#),
            "broker-side backlog gauge"
        );
        signal(&a, "-TERM");
        assert!(wait_exit(&mut a, Duration::from_secs(20)).success());
        let _ = b.wait();
        // Clean up the durable queue.
        rt.block_on(async {
            let conn = Connection::connect(URL, ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            for q in [
                format!("{name}.keep"),
                format!("{name}.slow"),
                format!("{name}.dead-letters"),
            ] {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
        });
    }
}

/// A value only `build` refuses (a ticker's rate of 0 reads fine as a number): the library's
/// `check` and `hub check` both refuse it, with the same words.
#[test]
fn library_check_and_cli_check_agree_on_what_only_build_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
settings = { topic = "a.b", rate = 0.0 }
"#;
    let config = write_config(dir.path(), toml);
    let lib = hub::Hub::builder()
        .stock()
        .env_overrides(false)
        .check(&hub::ConfigSource::Text(toml.into()))
        .err()
        .expect("the library's check refuses it");
    let lib = lib.to_string();
    assert!(
        lib.contains("producers.tick.settings") && lib.contains("rate 0"),
        "{lib}"
    );
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2));
    let cli = String::from_utf8_lossy(&out.stderr);
    assert!(
        cli.contains("producers.tick.settings") && cli.contains("rate 0"),
        "{cli}"
    );
}

/// Independent mistakes in one file, several in one consumer (each used to hide the next):
/// all reported in one round, typos with the closest known key, types in words.
#[test]
fn five_independent_mistakes_are_reported_in_one_round_with_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r##"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
backend = "nope"
settings = { topic = "a.*", rate = 1.0 }
[consumers.a]
type = "echo"
topics = ["#"]
concurency = 2
timeout = 30
when_full = "drop"
settings = { pth = "/tmp/x" }
[consumer.b]
type = "echo"
"##,
    );
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "key `consumer`: unknown section `consumer` (did you mean `consumers`?)",
        r#"key `producers.tick.backend`: unknown backend "nope""#,
        "key `consumers.a.concurency`: unknown key `concurency` (did you mean `concurrency`?)",
        r#"key `consumers.a.timeout`: expected a duration such as "30s""#,
        r#"key `consumers.a.when_full`: unknown value `drop`; expected one of "block", "drop_newest", "drop_oldest""#,
        "key `consumers.a.settings.pth`: unknown key `pth` (did you mean `path`?)",
        r#"key `producers.tick.settings`: topic "a.*": cannot contain wildcards"#,
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.starts_with("7 configuration problems"), "{err}");
    assert!(!err.contains("``"), "no doubled backticks: {err}");
}

mod fedora_messaging_import {
    //! `hub import fedora-messaging` on a realistic config: what it prints passes `hub check`,
    //! and run against RabbitMQ, a message published by fedora-messaging's own `api.publish`
    //! reaches the callback (the example one), unchanged.
    use super::*;

    const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

    fn fm_python() -> String {
        std::env::var("HUB_TEST_FM_PYTHON")
            .expect("HUB_TEST_FM_PYTHON: a Python with fedora-messaging (scripts/test sets it)")
    }

    fn import(config: &Path) -> Output {
        let adapter = format!("{ROOT}/crates/hub-exec/python/hub_fm_adapter.py");
        hub(&[
            "import",
            "fedora-messaging",
            config.to_str().unwrap(),
            "--adapter",
            &adapter,
            "--python",
            &fm_python(),
        ])
        .output()
        .unwrap()
    }

    #[test]
    fn tls_files_map_to_the_amqp_backend() {
        let dir = tempfile::tempdir().unwrap();
        let fm = dir.path().join("fm.toml");
        std::fs::write(
            &fm,
            r#"amqp_url = "amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub"
callback = "mycb:Consumer"
[tls]
ca_cert = "/etc/fedora-messaging/cacert.pem"
keyfile = "/etc/fedora-messaging/fedora-key.pem"
certfile = "/etc/fedora-messaging/fedora-cert.pem"
"#,
        )
        .unwrap();
        let out = import(&fm);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for line in [
            r#"url = "amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub""#,
            r#"ca_file = "/etc/fedora-messaging/cacert.pem""#,
            r#"cert_file = "/etc/fedora-messaging/fedora-cert.pem""#,
            r#"key_file = "/etc/fedora-messaging/fedora-key.pem""#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }

    /// Queue names that make the same id, and a queue bound twice apart: distinct consumers,
    /// and TOML that `hub check` reads.
    #[test]
    fn queue_names_that_collide_still_make_a_valid_config() {
        let dir = tempfile::tempdir().unwrap();
        let fm = dir.path().join("fm.toml");
        let mut text = String::from("callback = \"m:C\"\n");
        for (q, key) in [("a.b", "x.#"), ("a_b", "y.#"), ("a.b", "z.#")] {
            text.push_str(&format!(
                "[[bindings]]\nqueue = \"{q}\"\nexchange = \"amq.topic\"\nrouting_keys = [\"{key}\"]\n"
            ));
        }
        std::fs::write(&fm, text).unwrap();
        let out = import(&fm);
        assert!(out.status.success());
        let config = dir.path().join("hub.toml");
        std::fs::write(&config, &out.stdout).unwrap();
        let checked = check(&config);
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stderr)
        );
        let summary = String::from_utf8_lossy(&checked.stdout);
        assert!(
            summary.contains(r#"consumer a_b "#) || summary.contains("consumer a_b  "),
            "{summary}"
        );
        assert!(summary.contains("a_b-2"), "{summary}");
        assert!(summary.contains(r#"topics=["x.#", "z.#"]"#), "{summary}");
    }

    #[test]
    fn an_imported_config_checks_and_runs_the_callback_on_a_real_publish() {
        let dir = tempfile::tempdir().unwrap();
        let u = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let queue = format!("fm_import_{u}");
        let fm = dir.path().join("fm.toml");
        std::fs::write(
            &fm,
            format!(
                r#"amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2F"
callback = "mycb:Consumer"
passive_declares = true
publish_exchange = "amq.topic"
[client_properties]
app = "import test"
[queues.{queue}]
durable = true
auto_delete = false
exclusive = false
arguments = {{ "x-queue-type" = "classic" }}
[[bindings]]
queue = "{queue}"
exchange = "amq.topic"
routing_keys = ["org.fedoraproject.prod.{u}.#"]
[qos]
prefetch_size = 0
prefetch_count = 10
[consumer_config]
greeting = "hi"
"#
            ),
        )
        .unwrap();
        let out = import(&fm);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let notes = String::from_utf8_lossy(&out.stderr);
        assert!(
            notes.contains("passive_declares") && notes.contains("x-queue-type"),
            "{notes}"
        );
        let port = free_port();
        let hub_config = dir.path().join("hub.toml");
        std::fs::write(&hub_config, &out.stdout).unwrap();
        let checked = check(&hub_config);
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stderr)
        );

        let seen = dir.path().join("seen");
        std::fs::create_dir(&seen).unwrap();
        let mut child = spawn(
            hub(&["run", "--config", hub_config.to_str().unwrap()])
                .env("HUB_HTTP__LISTEN", format!("127.0.0.1:{port}"))
                .env("OUT", &seen)
                .env(
                    "PYTHONPATH",
                    format!("{ROOT}/examples/exec/fedora-messaging"),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_ready(port, &mut child);
        // fedora-messaging's own publish, with its own config file.
        let published = Command::new(fm_python())
            .args([
                "-c",
                &format!(
                    "from fedora_messaging import api, config, message\n\
                     config.conf.load_config({:?})\n\
                     m = message.Message(topic='org.fedoraproject.prod.{u}.update', body={{'n': 1}})\n\
                     api.publish(m)\n\
                     print(m.id)",
                    fm.display().to_string()
                ),
            ])
            .output()
            .unwrap();
        assert!(
            published.status.success(),
            "{}",
            String::from_utf8_lossy(&published.stderr)
        );
        let id = String::from_utf8_lossy(&published.stdout).trim().to_owned();
        let file = seen.join(&id);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !file.exists() {
            assert!(
                Instant::now() < deadline,
                "the callback never saw message {id}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(s["body"], serde_json::json!({"n": 1}));
        assert_eq!(s["greeting"], "hi");
        signal(&child, "-TERM");
        assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &queue])
            .output();
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &format!("{queue}.dead-letters")])
            .output();
    }
}

/// Retries and dead letters kept by the hub on ZeroMQ, through the binary: a consumer that
/// fails twice then succeeds is retried after its delays; one that always fails, and one given
/// an invalid message, end in the dead-letter file, which survives a restart; `hub dead list`
/// groups them and `hub dead requeue` gets them consumed by the running hub, removing each
/// from the file once the hub has handled it.
#[test]
fn zeromq_retries_dead_letters_and_hub_dead_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (port, inp) = (free_port(), free_port());
    let (out, seen, dead, fixed, tries) = (
        dir.path().join("out.txt"),
        dir.path().join("seen.jsonl"),
        dir.path().join("dead/letters.jsonl"),
        dir.path().join("fixed"),
        dir.path().join("tries.txt"),
    );
    // Notes each attempt and when it began; fails (exit 75: retry) until the attempt given in
    // `fail_until`; `always` fails until the file `fixed` exists; `invalid` is rejected (exit 65).
    let script = format!(
        r#"import json, os, sys, time
m = json.load(sys.stdin)
b, a = m["body"], int(os.environ["HUB_ATTEMPT"])
open({tries:?}, "a").write("%s %d %.4f\n" % (b["name"], a, time.time()))
if b.get("invalid"): sys.exit(65)
if a < b.get("fail_until", 0): sys.exit(75)
if b.get("always") and not os.path.exists({fixed:?}): sys.exit(75)
open({out:?}, "a").write("%s %d\n" % (b["name"], a))
"#,
        fixed = fixed.to_str().unwrap(),
        out = out.to_str().unwrap(),
        tries = tries.to_str().unwrap(),
    );
    let script_path = dir.path().join("flaky.py");
    std::fs::write(&script_path, script).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r##"
[hub]
shutdown_grace = "5s"
[http]
listen = "127.0.0.1:{port}"
admin_token = "tok-Dead-7"
[backends.bus]
type = "zeromq"
subscribe = ["tcp://127.0.0.1:{inp}"]
retry = {{ max_attempts = 3, delay = "300ms" }}
dead_letter = {{ file = "{dead}" }}
[consumers.flaky]
type = "exec"
topics = ["org.t.#"]
settings = {{ command = ["python3", "{script}"], mode = "per-message" }}
[consumers.steady]
type = "echo"
topics = ["org.t.#"]
settings = {{ path = "{seen}" }}
"##,
            dead = dead.display(),
            script = script_path.display(),
            seen = seen.display(),
        ),
    );
    let cfg = config.to_str().unwrap();
    // Up (serving), not ready: nothing publishes on the ZeroMQ endpoint until `hub publish`.
    let run = || {
        let mut p = spawn(hub(&["run", "--config", cfg]).stderr(Stdio::null()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/live").is_none() {
            assert!(p.try_wait().unwrap().is_none(), "hub exited early");
            assert!(Instant::now() < deadline, "hub never served");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    };
    let mut hub_proc = run();
    for body in [
        r#"{"name": "a", "fail_until": 3}"#,
        r#"{"name": "b", "always": true}"#,
        r#"{"name": "c", "invalid": true}"#,
        r#"{"name": "d", "always": true}"#,
    ] {
        let sent = hub(&[
            "publish",
            "--bind",
            &format!("tcp://127.0.0.1:{inp}"),
            "org.t.x",
            body,
        ])
        .output()
        .unwrap();
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
    }
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&dead).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lines(&out), ["a 3"], "a succeeded on its third attempt");
    assert_eq!(
        lines(&seen).len(),
        4,
        "the steady consumer saw each message once"
    );
    // The backoff: 300 ms after the first attempt, doubled after the second (jitter adds at most
    // 20 %; the upper bounds leave room for a loaded host).
    let started = |name: &str| -> Vec<f64> {
        lines(&tries)
            .iter()
            .filter_map(|l| {
                let mut f = l.split(' ');
                (f.next() == Some(name)).then(|| f.nth(1).unwrap().parse().unwrap())
            })
            .collect()
    };
    for name in ["a", "b", "d"] {
        let t = started(name);
        assert_eq!(t.len(), 3, "{name}: three attempts: {t:?}");
        let (first, second) = (t[1] - t[0], t[2] - t[1]);
        assert!(
            (0.3..2.0).contains(&first),
            "{name}: first wait {first:.3} s"
        );
        assert!(
            (0.6..3.0).contains(&second),
            "{name}: second wait {second:.3} s"
        );
    }
    assert_eq!(started("c").len(), 1, "an invalid message is not retried");
    let letters: Vec<serde_json::Value> = lines(&dead)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_name = |n: &str| {
        letters
            .iter()
            .find(|l| l["message"]["body"]["name"] == n)
            .unwrap_or_else(|| panic!("no dead letter for {n}: {letters:?}"))
    };
    assert_eq!(by_name("b")["attempts"], 3);
    assert!(by_name("b")["reason"].as_str().unwrap().contains("exit 75"));
    assert_eq!(by_name("c")["attempts"], 1);
    assert!(by_name("c")["reason"].as_str().unwrap().contains("exit 65"));
    assert_eq!(by_name("c")["consumer"], "flaky");
    // The count follows the write to the file by a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (_, text) = http_get(port, "/metrics").unwrap();
        let series = r#"hub_consumer_dead_letters_total{consumer="flaky",sink="file"}"#;
        if sample(&text, series) == Some(3.0) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        sample(&text, r#"hub_consumer_retries_total{consumer="flaky"}"#),
        Some(6.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"hub_consumer_dead_letters_total{consumer="flaky",sink="file"}"#
        ),
        Some(3.0)
    );
    signal(&hub_proc, "-TERM");
    assert!(wait_exit(&mut hub_proc, Duration::from_secs(15)).success());

    // The file survived; list groups it by consumer and reason (no hub needed).
    let listed = hub(&["dead", "list", dead.to_str().unwrap()])
        .output()
        .unwrap();
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed_text}");
    assert!(
        listed_text.starts_with("3 dead letters from"),
        "{listed_text}"
    );
    assert!(listed_text.contains("      1  flaky"), "{listed_text}");
    assert!(listed_text.contains("      2  flaky"), "{listed_text}");
    assert!(listed_text.contains("exit 65"), "{listed_text}");

    // Fixed, restarted: requeue (by consumer id, through the config) gets them consumed again,
    // first a selection, then the rest: b and d now succeed; c is invalid again and goes back
    // to the file.
    std::fs::write(&fixed, "").unwrap();
    let mut hub_proc = run();
    let requeue = |filter: &[&str]| {
        let mut args = vec!["dead", "requeue", "flaky", "--config", cfg];
        args.extend_from_slice(filter);
        let requeued = hub(&args).output().unwrap();
        let said = String::from_utf8_lossy(&requeued.stdout).into_owned();
        assert!(
            requeued.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&requeued.stderr)
        );
        said
    };
    let names = |p: &Path| {
        let mut n: Vec<String> = lines(p)
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["message"]["body"]["name"].as_str().unwrap().to_owned()
            })
            .collect();
        n.sort();
        n
    };
    // The hub has an admin token: a requeue without it is refused, the letters stay.
    let letter = lines(&dead)[0].clone();
    let (status, answer) = http_post(port, "/dead-letters/requeue", &letter, None);
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("admin token"), "{answer}");
    let (status, answer) = http_post(port, "/dead-letters/requeue", &letter, Some("tok-wrong"));
    assert_eq!(status, 401, "{answer}");
    let (dead_path, hub_url) = (dead.to_str().unwrap(), format!("http://127.0.0.1:{port}"));
    let refused = hub(&["dead", "requeue", dead_path, "--hub", &hub_url])
        .env_remove("HUB_ADMIN_TOKEN")
        .env_remove("HUB_CONFIG")
        .output()
        .unwrap();
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refusal}");
    assert!(
        refusal.contains("401") && refusal.contains("--token"),
        "{refusal}"
    );
    assert_eq!(names(&dead), ["b", "c", "d"]);
    // Another consumer's letters: none (the token comes from the configuration from now on).
    let said = requeue(&["--consumer", "steady"]);
    assert!(said.contains("0 dead letter(s) requeued"), "{said}");
    assert_eq!(names(&dead), ["b", "c", "d"]);
    // Reason "exit 75", at most one: one of b and d.
    let said = requeue(&["--reason", "exit 75", "--limit", "1"]);
    assert!(
        said.contains("1 dead letter(s) requeued") && said.contains("1 handled"),
        "{said}"
    );
    let left = names(&dead);
    assert!(left == ["b", "c"] || left == ["c", "d"], "{left:?}");
    // The rest, with the consumer named: the other one handled, c dead-lettered again.
    let said = requeue(&["--consumer", "flaky"]);
    assert!(
        said.contains("2 dead letter(s) requeued")
            && said.contains("1 handled")
            && said.contains("1 dead-lettered again"),
        "{said}"
    );
    let mut handled = lines(&out);
    handled.sort();
    assert_eq!(
        handled,
        ["a 3", "b 1", "d 1"],
        "handled, as a first attempt"
    );
    assert_eq!(names(&dead), ["c"]);
    assert_eq!(
        lines(&seen).len(),
        4,
        "the other consumer was not given the requeued messages"
    );
    signal(&hub_proc, "-TERM");
    assert!(wait_exit(&mut hub_proc, Duration::from_secs(15)).success());
}

/// `/ready` says which backend is down and why, at once, in the OS's or broker's words; and a
/// hub stopped in any backend state (AMQP connecting to a closed port, AMQP connected, ZeroMQ
/// with an unreachable endpoint) exits 0 with no panic text on stderr, and no password there.
#[test]
fn ready_says_why_a_backend_is_down_and_stopping_in_any_state_prints_no_panic() {
    let closed = free_port();
    let cases = [
        (
            "amqp connecting",
            format!(
                "[backends.rabbit]\ntype = \"amqp\"\nurl = \"amqp://guest:s3cret-pw@127.0.0.1:{closed}/%2f\"\n"
            ),
            Some(("rabbit", "refused")),
        ),
        (
            "amqp connected",
            "[backends.rabbit]\ntype = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n"
                .to_owned(),
            None,
        ),
        (
            "zeromq unreachable",
            format!(
                "[backends.bus]\ntype = \"zeromq\"\nsubscribe = [\"tcp://127.0.0.1:{closed}\"]\n"
            ),
            Some(("bus", "127.0.0.1")),
        ),
    ];
    for (what, backend, down) in cases {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = write_config(
            dir.path(),
            &format!(
                "[http]\nlisten = \"127.0.0.1:{port}\"\n{backend}[consumers.c]\ntype = \"delay\"\ntopics = [\"x.#\"]\nsettings = {{ delay = \"1ms\" }}\n"
            ),
        );
        let mut p = spawn(
            hub(&["run", "--config", config.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        let body = loop {
            if let Some((status, body)) = http_get(port, "/ready") {
                let settled = match down {
                    Some((id, needle)) => {
                        status == 503 && body.contains(id) && body.contains(needle)
                    }
                    None => status == 200,
                };
                if settled {
                    break body;
                }
            }
            assert!(Instant::now() < deadline, "{what}: /ready never settled");
            std::thread::sleep(Duration::from_millis(100));
        };
        if let Some((id, _)) = down {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["why"][id].is_string(), "{what}: {body}");
            assert!(!body.contains("s3cret-pw"), "{what}: {body}");
        }
        signal(&p, "-TERM");
        assert!(
            wait_exit(&mut p, Duration::from_secs(20)).success(),
            "{what}"
        );
        let mut stderr = String::new();
        p.stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        // The shutdown totals print `panic=0`; a panic prints "panicked" or a `hub::panic` event.
        assert!(
            !stderr.contains("panicked")
                && !stderr.contains("hub::panic")
                && !stderr.contains("Panic."),
            "{what}: {stderr}"
        );
        assert!(
            !stderr.contains("s3cret-pw"),
            "{what}: a password in the logs"
        );
    }
}

/// A consumer's `retry` keys override its backend's one by one; on AMQP the backend's own keys
/// (`max_attempts`, `retry_delay`, `retry_delay_max`) are the base (`hub check` shows the result).
#[test]
fn retry_keys_merge_key_by_key_over_the_amqp_backend_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r##"
[backends.rabbit]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1/%2f"
max_attempts = 7
retry_delay = "3s"
[consumers.a]
type = "echo"
topics = ["#"]
retry = { max_attempts = 2 }
[consumers.b]
type = "echo"
topics = ["#"]
"##,
    );
    let out = check(&config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let retry_of = |c: &str| {
        let mut lines = text
            .lines()
            .skip_while(|l| !l.starts_with(&format!("consumer {c} ")));
        lines.nth(1).unwrap_or_default().to_owned()
    };
    assert!(
        retry_of("a").contains("retry: max_attempts=2 delay=3s max_delay=60s"),
        "{text}"
    );
    assert!(
        retry_of("b").contains("retry: max_attempts=7 delay=3s max_delay=60s"),
        "{text}"
    );
}
