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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::*;

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

/// A proxy to the test broker that passes every AMQP frame both ways except the client's
/// `basic.ack`s, which it swallows (counting them in `swallowed`): a hub behind it publishes and
/// has its publishes confirmed, but none of its acknowledgements reaches the broker. Killing
/// that hub is killing it after every republish it made and before any ack it sent: the
/// republish-then-ack window, reached for certain rather than by timing. Returns its port.
async fn ack_swallowing_proxy(swallowed: Arc<AtomicU64>) -> u16 {
    frame_filter_proxy(Direction::ToBroker, move || {
        let swallowed = swallowed.clone();
        move |head: &[u8; 7], rest: &[u8]| {
            // A method frame (type 1) of class 60 (basic), method 80 (ack).
            let ack = head[0] == 1 && rest.starts_with(&[0, 60, 0, 80]);
            if ack {
                swallowed.fetch_add(1, Ordering::Relaxed);
            }
            !ack
        }
    })
    .await
}

/// kill -9 of a hub while its AMQP retries wait their backoff, then of a hub that has
/// republished every retry's copy (confirmed) and acknowledged none of the originals (its acks
/// swallowed by a proxy): nothing is lost (every message ends acknowledged after a successful
/// attempt), the duplicates are exactly the ones the window implies, nothing is left in the
/// queue or dead-lettered.
#[test]
fn kill_9_during_amqp_retry_backoff_and_republish_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let u = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (name, topic) = (format!("fault{u}"), format!("fault{u}.m"));
    let queue = format!("{name}.flaky");
    let (tries, ok) = (dir.path().join("tries.txt"), dir.path().join("ok.txt"));
    let script = retrying_script(dir.path(), &tries, &ok);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let swallowed = Arc::new(AtomicU64::new(0));
    let proxy_port = rt.block_on(ack_swallowing_proxy(swallowed.clone()));
    let port = free_port();
    // Room in the prefetch window for every original and every copy at once: behind the proxy
    // the broker sees nothing acknowledged.
    let config = |url: &str, file: &str| {
        write_config(
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
url = "{url}"
prefetch = 1000
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
        let path = dir.path().join(file);
        std::fs::rename(dir.path().join("hub.toml"), &path).unwrap();
        path
    };
    let direct = config(URL, "direct.toml");
    let proxied = config(
        &format!("amqp://guest:guest@127.0.0.1:{proxy_port}/%2f"),
        "proxied.toml",
    );
    const N: u64 = 100;
    let first_tries = |t: &[String]| t.iter().filter(|l| l.ends_with(" 1")).count();

    // 1. Every message failed once and waits its 2 s backoff, unacknowledged: kill -9.
    let mut a = start(&direct, port);
    rt.block_on(amqp_publish(&topic, 0..N, |_| {}));
    wait_until("every first attempt", Duration::from_secs(30), || {
        first_tries(&lines(&tries)) == N as usize
    });
    kill9(&mut a);
    assert!(lines(&ok).is_empty(), "nothing succeeded yet");

    // 2. Behind the proxy: every original redelivered, failed again, its copy republished,
    //    confirmed and handled; no ack reached the broker. kill -9 there.
    let mut b = start(&proxied, port);
    wait_until(
        "every copy handled behind the proxy",
        Duration::from_secs(30),
        || lines(&ok).len() == N as usize,
    );
    // The settle task acknowledges a retried original once its copy is confirmed: wait for
    // those acks (swallowed) to have been sent.
    wait_until("acks sent and swallowed", Duration::from_secs(10), || {
        swallowed.load(Ordering::Relaxed) > 0
    });
    kill9(&mut b);
    // The broker holds each original again (its copy confirmed, its ack never arrived) and each
    // copy (handled, its ack never arrived): the kill landed in the window for every message.
    let mut ready = 0;
    wait_until(
        "originals and copies back in the queue",
        Duration::from_secs(20),
        || {
            ready = rt.block_on(amqp_ready(&queue));
            ready == 2 * N as u32
        },
    );

    // 3. A third hub, direct, finishes: every original retried once more and handled, every
    //    copy handled again; 3 N successful attempts in all, exactly.
    let mut c = start(&direct, port);
    wait_until(
        "every message handled again",
        Duration::from_secs(60),
        || lines(&ok).len() >= 3 * N as usize,
    );
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
    let dead = rt.block_on(amqp_ready(&format!("{name}.dead-letters")));
    assert_eq!(dead, 0, "nothing dead-lettered");
    signal(&c, "-TERM");
    assert!(wait_exit(&mut c, Duration::from_secs(15)).success());
    assert_eq!(
        lines(&ok).len(),
        3 * N as usize,
        "no duplicates beyond the window's"
    );
    assert_eq!(rt.block_on(amqp_ready(&queue)), 0, "nothing left behind");
    eprintln!(
        "{N} messages: {} attempts in all, {ready} back in the queue after the kill in the \
         window ({} acks swallowed), {} successful attempts",
        lines(&tries).len(),
        swallowed.load(Ordering::Relaxed),
        lines(&ok).len(),
    );
    rt.block_on(amqp_delete_queues(&[queue, format!("{name}.dead-letters")]));
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
    let rejecter = rejecting_script(dir.path());
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
    // Logs as JSON in a file: the hub's own totals at shutdown give the count to check the
    // files against.
    let log = dir.path().join("hub.log");
    let mut p = spawn(
        hub(&[
            "--log-format",
            "json",
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_ready(port, &mut p);
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
    // The count, from the hub's books rather than from the files: what the memory backend
    // delivered, and each consumer's outcomes.
    let totals = |key: &str, name: &str| -> serde_json::Value {
        lines(&log)
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["fields"][key] == name
                    && v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.ends_with("totals."))
            })
            .map(|v| v["fields"].clone())
            .unwrap_or_else(|| panic!("no totals for {key} {name} in {}", lines(&log).join("\n")))
    };
    let n = totals("backend", "mem")["received"].as_u64().unwrap();
    let (e, r) = (totals("consumer", "echo"), totals("consumer", "rejecter"));
    assert!(n > 40, "ticks delivered: {n}");
    assert_eq!(e["received"], n, "echo received every tick: {e}");
    assert_eq!(e["ok"], n, "echo wrote every tick: {e}");
    assert!(e["transient"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(e["dropped"], 0, "{e}");
    assert_eq!(r["received"], n, "{r}");
    assert_eq!(r["dead_lettered"], n, "every rejection dead-lettered: {r}");
    assert_same_range(&echoed, n, "echo");
    assert_same_range(&lettered, n, "dead letters");
    eprintln!(
        "{n} ticks through a full disk, none lost ({} failed echo writes retried)",
        e["transient"]
    );
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

/// How many `sleep MARKER` processes run (the programs' children the test looks for).
fn sleeping(marker: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", &format!("^sleep {marker}$")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Ctrl-C in a terminal sends SIGINT to the hub's whole foreground process group. Each exec
/// program runs in a group of its own, so the signal reaches the hub alone, which drains: the
/// stream program and the per-message programs finish what they hold (before, Python died of
/// KeyboardInterrupt mid-message and its messages were dead-lettered at shutdown). And a
/// per-message program killed by its `timeout` takes what it started with it (its group): a
/// shell's `sleep` used to outlive it. A second signal (exit at once) kills the groups too.
#[test]
fn ctrl_c_reaches_the_hub_alone_and_a_timeout_kills_the_programs_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (seen, once) = (dir.path().join("seen.jsonl"), dir.path().join("once.txt"));
    let marker = format!("61.{}", std::process::id() % 1000);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/exec/stream_consumer.py"
    );
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
topic = "org.int.tick"
rate = 5.0
[producers.stuck]
type = "ticker"
[producers.stuck.settings]
topic = "org.stuck.tick"
rate = 2.0
[consumers.stream]
type = "exec"
topics = ["org.int.#"]
settings = {{ command = ["python3", "{script}"], env = {{ SLOW_MS = "150", SEEN = "{seen}" }} }}
[consumers.once]
type = "exec"
topics = ["org.int.#"]
concurrency = 2
settings = {{ mode = "per-message", command = ["python3", "-c", "import sys, time; m = sys.stdin.read(); time.sleep(0.3); open('{once}', 'a').write('x\\n')"] }}
[consumers.stuck]
type = "exec"
topics = ["org.stuck.#"]
timeout = "300ms"
retry = {{ max_attempts = 1 }}
settings = {{ mode = "per-message", command = ["sh", "-c", "sleep {marker}; echo never"] }}
"#,
            seen = seen.display(),
            once = once.display(),
        ),
    );
    // The hub leads a process group, as a shell's foreground job does, with SIGINT at its
    // default (a shell's background job would ignore it, and so would its children).
    let mut p = spawn(
        Command::new("python3")
            .args([
                "-c",
                "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); \
                 os.setpgid(0, 0); os.execv(sys.argv[1], sys.argv[1:])",
                HUB,
                "run",
                "--config",
                cfg.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_ready(port, &mut p);
    let stragglers = || sleeping(&marker);
    // Work in flight in every program, and a few timeouts behind us.
    wait_until("timeouts and work", Duration::from_secs(20), || {
        lines(&seen).len() >= 5 && lines(&once).len() >= 5 && {
            let m = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
            sample(
                &m,
                r#"hub_consumer_processed_messages_total{consumer="stuck",outcome="timeout"}"#,
            )
            .unwrap_or(0.0)
                >= 3.0
        }
    });
    // One may be running (the message in flight); a killed one may linger a moment.
    wait_until(
        "no timed-out program's child outliving it",
        Duration::from_secs(5),
        || stragglers() <= 1,
    );
    // Ctrl-C: SIGINT to the whole group.
    let sent = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", p.id())])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_exit(&mut p, Duration::from_secs(30));
    let mut log = String::new();
    p.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(status.success(), "exit {status}: {log}");
    assert!(!log.contains("KeyboardInterrupt"), "{log}");
    for consumer in ["stream", "once"] {
        let totals = log
            .lines()
            .find(|l| l.contains("Consumer totals") && l.contains(&format!("consumer={consumer} ")))
            .unwrap_or_else(|| panic!("no totals for {consumer}: {log}"));
        for clean in [
            " transient=0",
            " invalid=0",
            " dropped=0",
            " dead_lettered=0",
        ] {
            assert!(totals.contains(clean), "{consumer}: {totals}");
        }
    }
    wait_until(
        "no `sleep` outliving the hub",
        Duration::from_secs(5),
        || stragglers() == 0,
    );

    // A second signal: the hub exits at once (130), and takes its programs' groups with it
    // (in groups of their own, they would otherwise live on).
    let marker = format!("62.{}", std::process::id() % 1000);
    let stuck = write_config(
        dir.path(),
        &format!(
            r#"
[http]
listen = "127.0.0.1:{port}"
[backends.mem]
type = "memory"
[producers.stuck]
type = "ticker"
[producers.stuck.settings]
topic = "org.stuck.tick"
rate = 5.0
[consumers.stuck]
type = "exec"
topics = ["org.stuck.#"]
concurrency = 2
timeout = "60s"
settings = {{ mode = "per-message", command = ["sh", "-c", "sleep {marker}; echo never"] }}
"#
        ),
    );
    let running = || sleeping(&marker);
    let mut p = spawn(
        hub(&["run", "--config", stuck.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    wait_ready(port, &mut p);
    wait_until(
        "two stuck programs running",
        Duration::from_secs(10),
        || running() == 2,
    );
    signal(&p, "-TERM");
    std::thread::sleep(Duration::from_millis(100));
    signal(&p, "-TERM");
    let status = wait_exit(&mut p, Duration::from_secs(10));
    let mut log = String::new();
    p.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("exec program(s) killed"), "{log}");
    wait_until(
        "no `sleep` outliving a hub stopped at once",
        Duration::from_secs(5),
        || running() == 0,
    );
}
