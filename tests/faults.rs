//! The fault suite: the `hub` binary killed, starved of disk, and stopped under load, with exact
//! counts at the end (every message handled or dead-lettered, `received + retries = processed +
//! dropped + backlog + in_flight + retry_waiting`). Its in-process parts: a broker restart while
//! consumers publish replies (`crates/hub-amqp/tests/private_node.rs`) and random panics on 1 %
//! of 100 000 messages (`hub-engine`, `dispatcher/tests/failures.rs`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `sorted` is exactly `0..n`; otherwise says how it differs (not the whole list).
fn assert_same_range(sorted: &[u64], n: u64, what: &str) {
    if sorted.iter().copied().eq(0..n) {
        return;
    }
    let mut dups = 0;
    let mut missing = Vec::new();
    let mut expect = 0;
    for &x in sorted {
        if x < expect {
            dups += 1;
            continue;
        }
        missing.extend(expect..x);
        expect = x + 1;
    }
    missing.extend(expect..n);
    panic!(
        "{what}: {} entries for 0..{n}: {dups} duplicates, {} missing (first {:?}), last {:?}",
        sorted.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        sorted.last()
    );
}

fn start(cfg: &Path, port: u16) -> Proc {
    let mut p = spawn(
        hub(&["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_ready(port, &mut p);
    p
}

fn kill9(p: &mut Proc) {
    signal(p, "-KILL");
    let _ = p.wait();
}

/// An exec stream consumer (Python) that notes `i attempt` of every message in `tries`, asks
/// for a retry of every first attempt, and acknowledges later ones, noting `i` in `ok`.
fn retrying_script(dir: &Path, tries: &Path, ok: &Path) -> PathBuf {
    let script = format!(
        r#"import json, sys
out = sys.stdout
out.write(json.dumps({{"type": "ready", "protocol": 1}}) + "\n"); out.flush()
for line in sys.stdin:
    m = json.loads(line)
    if m.get("type") != "message":
        continue
    i, a = m["body"]["i"], m["attempt"]
    with open({tries:?}, "a") as f:
        f.write("%d %d\n" % (i, a))
    if a == 1:
        out.write(json.dumps({{"type": "retry", "id": m["id"], "reason": "first try"}}) + "\n")
    else:
        with open({ok:?}, "a") as f:
            f.write("%d\n" % i)
        out.write(json.dumps({{"type": "ack", "id": m["id"]}}) + "\n")
    out.flush()
"#,
        tries = tries.to_str().unwrap(),
        ok = ok.to_str().unwrap(),
    );
    let path = dir.join("retrying.py");
    std::fs::write(&path, script).unwrap();
    path
}

/// kill -9 of a hub while its AMQP retries wait their backoff, then again while the retries'
/// copies are being republished and their originals acknowledged: nothing is lost (every message
/// ends acknowledged after a successful attempt), nothing is left in the queue or dead-lettered.
#[test]
fn kill_9_during_amqp_retry_backoff_and_republish_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let u = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (name, topic) = (format!("fault{u}"), format!("fault{u}.m"));
    let (tries, ok) = (dir.path().join("tries.txt"), dir.path().join("ok.txt"));
    let script = retrying_script(dir.path(), &tries, &ok);
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[hub]
name = "{name}"
shutdown_grace = "5s"
[http]
listen = "127.0.0.1:{port}"
[backends.rabbit]
type = "amqp"
url = "{URL}"
[consumers.flaky]
type = "exec"
topics = ["{name}.#"]
durable = true
concurrency = 8
retry = {{ max_attempts = 5, delay = "2s", max_delay = "2s" }}
settings = {{ command = ["python3", "{script}"] }}
"#,
            script = script.display(),
        ),
    );
    const N: u64 = 100;
    let first_tries = |t: &[String]| t.iter().filter(|l| l.ends_with(" 1")).count();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // 1. Every message failed once and waits its 2 s backoff, unacknowledged: kill -9.
    let mut a = start(&cfg, port);
    rt.block_on(amqp_publish(&topic, 0..N, |_| {}));
    wait_until("every first attempt", Duration::from_secs(30), || {
        first_tries(&lines(&tries)) == N as usize
    });
    kill9(&mut a);
    assert!(lines(&ok).is_empty(), "nothing succeeded yet");

    // 2. Redelivered, failed again; kill -9 as the first retry copies come back (the others'
    //    republish-then-ack under way).
    let mut b = start(&cfg, port);
    wait_until("a retry's copy consumed", Duration::from_secs(30), || {
        !lines(&ok).is_empty()
    });
    kill9(&mut b);
    let ok_at_kill = lines(&ok).len();

    // 3. A third hub finishes: every message acknowledged after a successful attempt.
    let mut c = start(&cfg, port);
    wait_until("every message handled", Duration::from_secs(60), || {
        lines(&ok).iter().collect::<BTreeSet<_>>().len() == N as usize
    });
    let handled: BTreeSet<u64> = lines(&ok).iter().map(|l| l.parse().unwrap()).collect();
    assert_eq!(handled, (0..N).collect(), "every message handled");
    // Settled: nothing queued at the broker or locally, and the books balance.
    let mut metrics = String::new();
    wait_until("queue drained", Duration::from_secs(20), || {
        metrics = http_get(port, "/metrics").unwrap().1;
        sample(&metrics, r#"hub_amqp_queue_messages{consumer="flaky"}"#) == Some(0.0)
            && sample(
                &metrics,
                r#"hub_consumer_in_flight_messages{consumer="flaky"}"#,
            ) == Some(0.0)
            && sample(
                &metrics,
                r#"hub_consumer_retry_waiting_messages{consumer="flaky"}"#,
            ) == Some(0.0)
    });
    assert_balanced(&metrics, "flaky");
    let dead = rt.block_on(async {
        use hub_amqp::lapin::options::QueueDeclareOptions;
        use hub_amqp::lapin::types::FieldTable;
        use hub_amqp::lapin::{Connection, ConnectionProperties};
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let n = ch
            .queue_declare(
                format!("{name}.dead-letters").as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_or(0, |q| q.message_count());
        let _ = conn.close(200, "bye".into()).await;
        n
    });
    assert_eq!(dead, 0, "nothing dead-lettered");
    signal(&c, "-TERM");
    assert!(wait_exit(&mut c, Duration::from_secs(15)).success());
    let all_ok = lines(&ok).len();
    eprintln!(
        "{N} messages: {} attempts in all, {ok_at_kill} handled before the second kill, {all_ok} \
         successful attempts ({} duplicates from the kills)",
        lines(&tries).len(),
        all_ok - N as usize
    );
    rt.block_on(amqp_delete_queues(&[
        format!("{name}.flaky"),
        format!("{name}.dead-letters"),
    ]));
}

/// A tmpfs of `size` mounted on `dir` (the test runs as root, as CI does here), unmounted when
/// dropped.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(dir: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }

    /// Fills the disk to the last byte with `filler`.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        let _ = std::io::Write::write_all(&mut f, &[0u8]);
        while std::io::Write::write_all(&mut f, &[0u8]).is_ok() {}
        filler
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An echo file and a dead-letter file on a full disk: writes fail as transient, are retried,
/// and once space returns every message is in its file exactly once, whole lines only.
#[test]
fn a_full_disk_under_echo_and_dead_letter_files_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = TinyDisk::mount(dir.path().join("disk"), "2m");
    let (echo, dead) = (disk.0.join("echo.jsonl"), disk.0.join("dead.jsonl"));
    let rejecter = dir.path().join("reject.py");
    std::fs::write(
        &rejecter,
        r#"import json, sys
sys.stdout.write(json.dumps({"type": "ready", "protocol": 1}) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    if m.get("type") == "message":
        sys.stdout.write(json.dumps({"type": "reject", "id": m["id"], "reason": "not for us"}) + "\n")
        sys.stdout.flush()
"#,
    )
    .unwrap();
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[hub]
shutdown_grace = "10s"
[http]
listen = "127.0.0.1:{port}"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
[producers.tick.settings]
topic = "org.disk.tick"
rate = 200.0
[consumers.echo]
type = "echo"
topics = ["org.disk.#"]
queue_capacity = 100000
retry = {{ max_attempts = 100000, delay = "20ms", max_delay = "100ms" }}
[consumers.echo.settings]
path = "{echo}"
[consumers.rejecter]
type = "exec"
topics = ["org.disk.#"]
queue_capacity = 100000
dead_letter = {{ file = "{dead}" }}
settings = {{ command = ["python3", "{rejecter}"] }}
"#,
            echo = echo.display(),
            dead = dead.display(),
            rejecter = rejecter.display(),
        ),
    );
    let mut p = start(&cfg, port);
    wait_until("lines written", Duration::from_secs(10), || {
        lines(&echo).len() > 20 && lines(&dead).len() > 20
    });
    // No space left: both files stop growing; the failures are transient and counted.
    let filler = disk.fill();
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = http_get(port, "/metrics").unwrap().1;
    assert!(
        sample(
            &metrics,
            r#"hub_consumer_processed_messages_total{consumer="echo",outcome="transient"}"#
        )
        .unwrap_or(0.0)
            > 0.0,
        "echo writes failed as transient: {metrics}"
    );
    assert!(
        sample(
            &metrics,
            r#"hub_consumer_dead_letter_failures_total{consumer="rejecter"}"#
        )
        .unwrap_or(0.0)
            > 0.0,
        "dead-letter writes failed and were counted"
    );
    let backlog = |c: &str| {
        sample(
            &http_get(port, "/metrics").unwrap().1,
            &format!("hub_consumer_retry_waiting_messages{{consumer=\"{c}\"}}"),
        )
        .unwrap_or(0.0)
            + sample(
                &http_get(port, "/metrics").unwrap().1,
                &format!("hub_consumer_backlog_messages{{consumer=\"{c}\"}}"),
            )
            .unwrap_or(0.0)
    };
    assert!(backlog("echo") > 0.0, "the echo consumer's messages wait");
    // Space again: everything catches up by itself.
    std::fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    // Every tick is in each file once, in whole lines.
    let seqs = |path: &Path, field: &str| -> Vec<u64> {
        lines(path)
            .iter()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}"));
                let body = if field.is_empty() {
                    &v["body"]
                } else {
                    &v[field]["body"]
                };
                body["seq"].as_u64().unwrap()
            })
            .collect()
    };
    let mut echoed = seqs(&echo, "");
    let mut lettered = seqs(&dead, "message");
    echoed.sort_unstable();
    lettered.sort_unstable();
    let n = echoed.len() as u64;
    assert_same_range(&echoed, n, "echo");
    assert_same_range(&lettered, n, "dead letters");
    eprintln!("{n} ticks through a full disk, none lost");
}

/// SIGTERM while a producer runs flat out into consumers that keep up only by blocking it: the
/// hub drains within its grace and exits 0, and every message the producer published is in both
/// consumers' files, once, with no gap.
#[test]
fn sigterm_under_full_load_drains_within_the_grace_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[hub]
shutdown_grace = "10s"
[http]
listen = "127.0.0.1:{port}"
[backends.mem]
type = "memory"
[producers.flood]
type = "ticker"
[producers.flood.settings]
topic = "org.load.tick"
rate = 1000000.0
[consumers.a]
type = "echo"
topics = ["org.load.#"]
queue_capacity = 20000
[consumers.a.settings]
path = "{a}"
[consumers.b]
type = "echo"
topics = ["org.load.#"]
queue_capacity = 500
concurrency = 2
[consumers.b.settings]
path = "{b}"
"#,
            a = a.display(),
            b = b.display(),
        ),
    );
    let mut p = spawn(
        hub(&["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_ready(port, &mut p);
    std::thread::sleep(Duration::from_secs(2));
    let metrics = http_get(port, "/metrics").unwrap().1;
    let queued = sample(&metrics, r#"hub_consumer_backlog_messages{consumer="a"}"#).unwrap()
        + sample(&metrics, r#"hub_consumer_backlog_messages{consumer="b"}"#).unwrap();
    assert!(queued > 0.0, "under load: a backlog");
    let t = Instant::now();
    signal(&p, "-TERM");
    let status = wait_exit(&mut p, Duration::from_secs(30));
    let took = t.elapsed();
    let mut log = String::new();
    p.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(status.success(), "exit {status}: {log}");
    assert!(took < Duration::from_secs(10), "drain took {took:?}");
    assert!(log.contains("every queued message finished"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let seqs = |path: &Path| -> Vec<u64> {
        lines(path)
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["body"]["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    let in_a = seqs(&a);
    let mut in_b = seqs(&b);
    let n = in_a.len() as u64;
    assert!(n > 1000, "{n} messages");
    assert!(
        in_a.iter().copied().eq(0..n),
        "a: every tick once, in order"
    );
    in_b.sort_unstable();
    assert_same_range(&in_b, n, "b");
    eprintln!("{n} messages under full load, drained in {took:?}");
}
