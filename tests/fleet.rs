//! AMQP for fleets (#20), against the real RabbitMQ and the `hub` binary: quorum queues (the
//! broker's delivery count as the attempt number, `delivery_limit` dead-lettering a message that
//! kills the process), single active consumer (take-over after kill -9, in order), the stall
//! watchdog (a queue deleted and declared again; deliveries that never arrive), heartbeats under
//! a slow handler, and the configuration's checks of these keys.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn start(cfg: &Path, port: u16, log: Option<&Path>) -> Proc {
    let stderr = match log {
        Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
        None => Stdio::null(),
    };
    let mut p = spawn(
        hub(&["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(stderr),
    );
    wait_ready(port, &mut p);
    p
}

/// An exec consumer (Python) that appends `<tag> <i> <attempt> <unix time>` to `seen` for every
/// message and acknowledges it after `pause` seconds; for `i == kill` it kills the hub that runs
/// it (its parent) with SIGKILL instead: a message that crashes the process.
fn recording_script(dir: &Path, seen: &Path, tag: &str, pause: f64, kill: i64) -> PathBuf {
    let script = format!(
        r#"import json, os, signal, sys, time
out = sys.stdout
out.write(json.dumps({{"type": "ready", "protocol": 1}}) + "\n"); out.flush()
for line in sys.stdin:
    m = json.loads(line)
    if m.get("type") != "message":
        continue
    i, a = m["body"]["i"], m["attempt"]
    with open({seen:?}, "a") as f:
        f.write("%s %d %d %.3f\n" % ({tag:?}, i, a, time.time()))
    if i == {kill}:
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(5)
    time.sleep({pause})
    out.write(json.dumps({{"type": "ack", "id": m["id"]}}) + "\n"); out.flush()
"#,
        seen = seen.to_str().unwrap(),
    );
    let path = dir.join(format!("record-{tag}.py"));
    std::fs::write(&path, script).unwrap();
    path
}

/// `(tag, i, attempt, time)` of each line written by [`recording_script`].
/// How far the broker's clock (Erlang's, which stamps stream chunks) is behind the OS clock, in
/// milliseconds: after the OS clock steps (a machine resumed, NTP), Erlang's default
/// `no_time_warp` mode closes the gap slowly (25.7 s behind was seen here). 0 when unknown.
fn broker_clock_lag_ms() -> i64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "eval",
            "os:system_time(millisecond) - erlang:system_time(millisecond).",
        ])
        .output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn records(p: &Path) -> Vec<(String, u64, u32, f64)> {
    lines(p)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_owned(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

/// A hub configuration: `[hub] name`, the HTTP port, the AMQP backend's extra keys, and one
/// consumer `c` (its keys, `type` first) on topics `<name>.#`.
fn config(dir: &Path, file: &str, name: &str, port: u16, backend: &str, consumer: &str) -> PathBuf {
    let body = format!(
        r#"
[hub]
name = "{name}"
shutdown_grace = "5s"
[http]
listen = "127.0.0.1:{port}"
[backends.rabbit]
type = "amqp"
{backend}
[consumers.c]
topics = ["{name}.#"]
{consumer}
"#
    );
    let path = dir.join(file);
    std::fs::write(&path, body).unwrap();
    path
}

/// A quorum queue with `delivery_limit = 2`: a message that kills the hub each time it is
/// handled (an exec consumer sending SIGKILL to its parent) is seen with attempts 1, 2, 3 (the
/// broker's count), then dead-lettered by the broker into the hub's dead-letter queue; the
/// messages behind it are all consumed.
#[test]
fn a_message_that_kills_the_process_is_dead_lettered_by_the_quorum_queue() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("quorum");
    let seen = dir.path().join("seen.txt");
    let script = recording_script(dir.path(), &seen, "q", 0.0, 3);
    let port = free_port();
    let cfg = config(
        dir.path(),
        "hub.toml",
        &name,
        port,
        &format!("url = \"{URL}\"\nprefetch = 1"),
        &format!(
            "type = \"exec\"\ndurable = true\nqueue_type = \"quorum\"\ndelivery_limit = 2\nsettings = {{ command = [\"python3\", \"{}\"] }}",
            script.display()
        ),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Declare the queue (a first run), then publish 10 messages, the fourth the poison.
    let mut p = start(&cfg, port, None);
    rt.block_on(amqp_publish(&format!("{name}.m"), 0..10, |_| {}));
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done = records(&seen).iter().filter(|r| r.1 != 3).count();
        if done >= 9 {
            break;
        }
        if p.try_wait().unwrap().is_some() {
            crashes += 1;
            assert!(crashes <= 5, "more crashes than the delivery limit allows");
            // Not waiting for it to be ready: the poison may kill it first.
            p = spawn(
                hub(&["run", "--config", cfg.to_str().unwrap()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
        }
        assert!(Instant::now() < deadline, "{:?}", lines(&seen));
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    let all = records(&seen);
    let poison: Vec<u32> = all.iter().filter(|r| r.1 == 3).map(|r| r.2).collect();
    assert_eq!(poison, [1, 2, 3], "the poison's attempts: {all:?}");
    assert_eq!(crashes, 3, "{all:?}");
    let mut others: Vec<u64> = all.iter().filter(|r| r.1 != 3).map(|r| r.1).collect();
    others.sort_unstable();
    others.dedup();
    assert_eq!(others, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
    let dead = format!("{name}.dead-letters");
    assert_eq!(rt.block_on(amqp_ready(&dead)), 1, "the poison in {dead}");
    assert_eq!(rt.block_on(amqp_ready(&format!("{name}.c"))), 0);
    rt.block_on(amqp_delete_queues(&[format!("{name}.c"), dead]));
}

/// Two hubs on one quorum queue with `single_active_consumer`: one consumes, in order; kill -9
/// of it mid-stream and the other takes over, in order, from the first message not acknowledged.
/// Prints the take-over time (kill to the first message handled by the other hub).
#[test]
fn single_active_consumer_takes_over_in_order_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("sac");
    let seen = dir.path().join("seen.txt");
    let consumer = |tag: &str| {
        let script = recording_script(dir.path(), &seen, tag, 0.01, -1);
        format!(
            "type = \"exec\"\ndurable = true\nqueue_type = \"quorum\"\nsingle_active_consumer = true\nsettings = {{ command = [\"python3\", \"{}\"] }}",
            script.display()
        )
    };
    let backend = format!("url = \"{URL}\"\nprefetch = 10");
    let (pa, pb) = (free_port(), free_port());
    let a_cfg = config(dir.path(), "a.toml", &name, pa, &backend, &consumer("a"));
    let b_cfg = config(dir.path(), "b.toml", &name, pb, &backend, &consumer("b"));
    let mut a = start(&a_cfg, pa, None);
    let mut b = start(&b_cfg, pb, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    const N: u64 = 300;
    rt.block_on(amqp_publish(&format!("{name}.m"), 0..N, |_| {}));
    wait_until("hub a handles 100", Duration::from_secs(60), || {
        records(&seen).len() >= 100
    });
    signal(&a, "-KILL");
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let _ = a.wait();
    wait_until("every message handled", Duration::from_secs(90), || {
        let mut i: Vec<u64> = records(&seen).iter().map(|r| r.1).collect();
        i.sort_unstable();
        i.dedup();
        i.len() as u64 == N
    });
    signal(&b, "-TERM");
    assert!(wait_exit(&mut b, Duration::from_secs(20)).success());
    let all = records(&seen);
    let by = |tag: &str| -> Vec<(u64, f64)> {
        all.iter()
            .filter(|r| r.0 == tag)
            .map(|r| (r.1, r.3))
            .collect()
    };
    let (ra, rb) = (by("a"), by("b"));
    // Whoever consumed first, the other only after the kill (a is the one killed when it was
    // the active one; if b was active first, a never consumed and the kill changed nothing).
    let (first, second) = if ra.first().map(|r| r.1) < rb.first().map(|r| r.1) {
        (ra, rb)
    } else {
        (rb, ra)
    };
    for side in [&first, &second] {
        assert!(
            side.windows(2).all(|w| w[0].0 < w[1].0),
            "out of order: {side:?}"
        );
    }
    if !second.is_empty() {
        assert!(second[0].1 >= killed - 0.5, "both consumed at once");
        let last_first = first.last().unwrap().0;
        assert!(
            second[0].0 <= last_first + 1,
            "the other hub skipped messages: {} after {last_first}",
            second[0].0
        );
        eprintln!(
            "single active consumer take-over: {:.0} ms from kill -9 to the first message handled by the other hub ({} handled before, {} after, {} handled twice)",
            (second[0].1 - killed) * 1000.0,
            first.len(),
            second.len(),
            first.len() + second.len() - N as usize
        );
    }
    rt.block_on(amqp_delete_queues(&[
        format!("{name}.c"),
        format!("{name}.dead-letters"),
    ]));
}

/// The queue deleted behind the hub's back and declared again by someone else: the broker
/// cancels the subscription, the hub subscribes again (counted with reason `cancelled`), and
/// messages published after it arrive.
#[test]
fn a_cancelled_subscription_is_renewed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("cancel");
    let seen = dir.path().join("seen.txt");
    let script = recording_script(dir.path(), &seen, "c", 0.0, -1);
    let port = free_port();
    let cfg = config(
        dir.path(),
        "hub.toml",
        &name,
        port,
        &format!("url = \"{URL}\"\nstall_timeout = \"2s\""),
        &format!(
            "type = \"exec\"\ndurable = true\nsettings = {{ command = [\"python3\", \"{}\"] }}",
            script.display()
        ),
    );
    let mut p = start(&cfg, port, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let queue = format!("{name}.c");
    rt.block_on(amqp_delete_queues(std::slice::from_ref(&queue)));
    let series = "hub_amqp_resubscribes_total{consumer=\"c\",reason=\"cancelled\"}";
    wait_until("a resubscription", Duration::from_secs(20), || {
        http_get(port, "/metrics").is_some_and(|(_, m)| sample(&m, series) >= Some(1.0))
    });
    rt.block_on(amqp_publish(&format!("{name}.m"), 0..20, |_| {}));
    wait_until("20 messages after it", Duration::from_secs(20), || {
        records(&seen).len() >= 20
    });
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    rt.block_on(amqp_delete_queues(&[queue, format!("{name}.dead-letters")]));
}

/// A proxy between the hub and the broker that drops the first `swallow` deliveries
/// (`basic.deliver` with its header and body frames) on their way to the hub: the broker counts
/// them delivered, the hub never sees them; the subscription looks alive and brings nothing (the
/// stall of fedora-messaging #208). Returns its port.
async fn delivery_swallowing_proxy(swallow: u64, swallowed: Arc<AtomicU64>) -> u16 {
    frame_filter_proxy(Direction::ToHub, move || {
        let swallowed = swallowed.clone();
        // Per channel: whether the message being delivered on it is dropped.
        let mut dropping: BTreeMap<u16, bool> = BTreeMap::new();
        move |head: &[u8; 7], rest: &[u8]| {
            let channel = u16::from_be_bytes([head[1], head[2]]);
            if head[0] == 1 {
                // A method frame: basic.deliver (class 60, method 60) starts a message.
                let deliver = rest.starts_with(&[0, 60, 0, 60]);
                let drop_it = deliver && swallowed.load(Ordering::Relaxed) < swallow && channel > 0;
                if drop_it {
                    swallowed.fetch_add(1, Ordering::Relaxed);
                }
                dropping.insert(channel, drop_it);
            }
            !(dropping.get(&channel) == Some(&true) && matches!(head[0], 1..=3))
        }
    })
    .await
}

/// Deliveries that never reach the hub (dropped by a proxy: the broker counts them in flight,
/// the subscription looks alive): with messages ready and none arriving for `stall_timeout`
/// while the hub has room, the watchdog subscribes again (counted with reason `stalled`, logged
/// at warn with the queue and the numbers), and what follows arrives.
#[test]
fn the_watchdog_renews_a_subscription_that_brings_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("stall");
    let seen = dir.path().join("seen.txt");
    let log = dir.path().join("hub.log");
    let script = recording_script(dir.path(), &seen, "s", 0.0, -1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let swallowed = Arc::new(AtomicU64::new(0));
    // The whole prefetch window: the broker sends nothing more until those are acknowledged.
    let proxy = rt.block_on(delivery_swallowing_proxy(10, swallowed.clone()));
    let port = free_port();
    let cfg = config(
        dir.path(),
        "hub.toml",
        &name,
        port,
        &format!(
            "url = \"amqp://guest:guest@127.0.0.1:{proxy}/%2f\"\nprefetch = 10\nstall_timeout = \"2s\""
        ),
        &format!(
            "type = \"exec\"\ndurable = true\nsettings = {{ command = [\"python3\", \"{}\"] }}",
            script.display()
        ),
    );
    let mut p = start(&cfg, port, Some(&log));
    rt.block_on(amqp_publish(&format!("{name}.m"), 0..40, |_| {}));
    let series = "hub_amqp_resubscribes_total{consumer=\"c\",reason=\"stalled\"}";
    wait_until(
        "the watchdog's resubscription",
        Duration::from_secs(30),
        || http_get(port, "/metrics").is_some_and(|(_, m)| sample(&m, series) >= Some(1.0)),
    );
    wait_until("the 30 not swallowed", Duration::from_secs(30), || {
        records(&seen).len() >= 30
    });
    assert_eq!(swallowed.load(Ordering::Relaxed), 10);
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    let warned = text
        .lines()
        .find(|l| l.contains("none arrive; subscribing again"))
        .unwrap_or_else(|| panic!("no watchdog warning: {text}"));
    assert!(
        warned.contains(&format!("queue={name}.c")) && warned.contains("ready="),
        "{warned}"
    );
    // The swallowed ten went back to the queue when the hub's channel closed.
    let queue = format!("{name}.c");
    assert_eq!(rt.block_on(amqp_ready(&queue)), 10, "{:?}", lines(&seen));
    rt.block_on(amqp_delete_queues(&[queue, format!("{name}.dead-letters")]));
}

/// A handler slower than three heartbeat intervals (1 s heartbeat, 3.5 s per message): the
/// connection lives on (no reconnect logged, the backend connected throughout), and the
/// messages are acknowledged.
#[test]
fn a_handler_slower_than_the_heartbeat_keeps_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("beat");
    let seen = dir.path().join("seen.txt");
    let log = dir.path().join("hub.log");
    let script = recording_script(dir.path(), &seen, "h", 3.5, -1);
    let port = free_port();
    let cfg = config(
        dir.path(),
        "hub.toml",
        &name,
        port,
        &format!("url = \"{URL}?heartbeat=1\""),
        &format!(
            "type = \"exec\"\ndurable = true\ntimeout = \"10s\"\nsettings = {{ command = [\"python3\", \"{}\"] }}",
            script.display()
        ),
    );
    let mut p = start(&cfg, port, Some(&log));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(amqp_publish(&format!("{name}.m"), 0..2, |_| {}));
    let mut always_connected = true;
    let deadline = Instant::now() + Duration::from_secs(30);
    let ok = "hub_consumer_processed_messages_total{consumer=\"c\",outcome=\"ok\"}";
    loop {
        let m = http_get(port, "/metrics")
            .map(|(_, m)| m)
            .unwrap_or_default();
        if sample(&m, "hub_backend_connected{backend=\"rabbit\"}") != Some(1.0) {
            always_connected = false;
        }
        if sample(&m, ok) == Some(2.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The acks went out on the same connection: nothing left to redeliver.
    std::thread::sleep(Duration::from_millis(500));
    let queue = format!("{name}.c");
    assert_eq!(rt.block_on(amqp_ready(&queue)), 0);
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(always_connected, "{text}");
    assert!(
        !text.contains("recover") && !text.contains("Cannot connect"),
        "{text}"
    );
    assert_eq!(records(&seen).len(), 2);
    rt.block_on(amqp_delete_queues(&[queue, format!("{name}.dead-letters")]));
}

/// The new keys are checked: each mistake names its key and what it expects.
#[test]
fn queue_type_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "url = \"amqp://127.0.0.1\"",
            "type = \"echo\"\nqueue_type = \"quorum\"\ndurable = false",
            "consumers.c.queue_type",
            "needs `durable = true`",
        ),
        (
            "url = \"amqp://127.0.0.1\"",
            "type = \"echo\"\ndurable = true\ndelivery_limit = 3",
            "consumers.c.delivery_limit",
            "quorum",
        ),
        (
            "url = \"amqp://127.0.0.1\"",
            "type = \"echo\"\ndurable = true\nqueue_type = \"stream\"\noffset = \"yesterday\"",
            "consumers.c.offset",
            "RFC 3339",
        ),
        (
            "url = \"amqp://127.0.0.1\"",
            "type = \"echo\"\nqueue_type = \"fifo\"",
            "queue_type",
            "quorum",
        ),
        (
            "urls = [\"amqp://a:b@127.0.0.1:5672/%2f\", \"amqp://a:c@127.0.0.2:5672/%2f\"]",
            "type = \"echo\"",
            "urls[1]",
            "differ only in host and port",
        ),
        (
            "url = \"amqp://127.0.0.1\"\nurls = [\"amqp://127.0.0.2\"]",
            "type = \"echo\"",
            "url and urls",
            "give one",
        ),
    ];
    for (backend, consumer, key, words) in cases {
        let cfg = config(
            dir.path(),
            "hub.toml",
            "chk",
            free_port(),
            backend,
            consumer,
        );
        let out = check(&cfg);
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{backend} {consumer}: {text}");
        assert!(
            text.contains(key) && text.contains(words),
            "{backend} / {consumer}: wanted {key:?} and {words:?} in {text}"
        );
        assert!(!text.contains(":c@"), "a password in {text}");
    }
}

/// Backfill from a record stream: a hub records everything on the exchange in a stream; 1 000
/// messages (and 100 of another topic) later, a new stream consumer reading from `first` gets
/// exactly its 1 000; stopped and started again after 50 more, it gets exactly those 50 (its
/// offset kept on the broker); a consumer reading from a time gets only what came after it.
#[test]
fn a_stream_consumer_backfills_from_history_and_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("stream");
    let record = format!("{name}.record");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // An exchange of its own: a stream bound with `#` to amq.topic would make every other
    // test's publish routable.
    let exchange = format!("{name}.x");
    let backend = format!(
        "url = \"{URL}\"\nexchange = \"{exchange}\"\nrecord_stream = \"{record}\"\nrecord_max_age = \"1D\""
    );
    let stream_consumer = |tag: &str, seen: &Path, offset: &str| {
        let script = recording_script(dir.path(), seen, tag, 0.0, -1);
        format!(
            "type = \"exec\"\ndurable = true\nqueue_type = \"stream\"\noffset = \"{offset}\"\nsettings = {{ command = [\"python3\", \"{}\"] }}",
            script.display()
        )
    };
    // 1. A hub that records (its own consumer is a plain one), and what it records.
    let port = free_port();
    let recorder = config(
        dir.path(),
        "recorder.toml",
        &name,
        port,
        &backend,
        "type = \"delay\"\nsettings = { delay = \"0ms\" }",
    );
    let mut p = start(&recorder, port, None);
    rt.block_on(amqp_publish_to(
        &exchange,
        &format!("{name}.a"),
        0..1000,
        |_| {},
    ));
    rt.block_on(amqp_publish_to(
        &exchange,
        &format!("{name}.b"),
        0..100,
        |_| {},
    ));
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());

    // 2. A new consumer reads the history from the first message: its topic only, all of it.
    let seen = dir.path().join("seen.txt");
    let port = free_port();
    let reader = config(
        dir.path(),
        "reader.toml",
        &name,
        port,
        &backend,
        &stream_consumer("r", &seen, "first"),
    );
    // (The consumer's topics: `.a` only.)
    let text = std::fs::read_to_string(&reader).unwrap().replace(
        &format!("topics = [\"{name}.#\"]"),
        &format!("topics = [\"{name}.a\"]"),
    );
    std::fs::write(&reader, text).unwrap();
    let mut p = start(&reader, port, None);
    wait_until("the 1 000 from history", Duration::from_secs(60), || {
        records(&seen).len() >= 1000
    });
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    let mut got: Vec<u64> = records(&seen).iter().map(|r| r.1).collect();
    assert_eq!(got.len(), 1000, "topic {name}.b leaked in, or duplicates");
    got.sort_unstable();
    assert!(got.iter().copied().eq(0..1000));

    // 3. 50 more, a second apart from the rest (a time between them), then the reader again:
    //    only the 50.
    std::thread::sleep(Duration::from_millis(1500));
    // A time between the two batches on the broker's clock: stream chunks carry its stamps,
    // and a time offset is compared with them.
    let lag = broker_clock_lag_ms();
    let now = hub_core::Timestamp::now();
    let by = Duration::from_millis(lag.unsigned_abs());
    let between = if lag >= 0 {
        now.checked_sub(by)
    } else {
        now.checked_add(by)
    }
    .expect("a time in range");
    std::thread::sleep(Duration::from_millis(1500));
    rt.block_on(amqp_publish_to(
        &exchange,
        &format!("{name}.a"),
        1000..1050,
        |_| {},
    ));
    let mut p = start(&reader, port, None);
    wait_until("the 50 new ones", Duration::from_secs(30), || {
        records(&seen).len() >= 1050
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    let all = records(&seen);
    assert_eq!(all.len(), 1050, "read again after a clean stop");
    assert!(all[1000..].iter().map(|r| r.1).eq(1000..1050));

    // 4. A consumer from a time: only what came after it.
    let later = dir.path().join("later.txt");
    let port = free_port();
    let timed = config(
        dir.path(),
        "timed.toml",
        &format!("{name}t"),
        port,
        &backend,
        &stream_consumer("t", &later, &between.to_string()),
    );
    let text = std::fs::read_to_string(&timed).unwrap().replace(
        &format!("topics = [\"{name}t.#\"]"),
        &format!("topics = [\"{name}.#\"]"),
    );
    std::fs::write(&timed, text).unwrap();
    let mut p = start(&timed, port, None);
    wait_until("the 50 after the time", Duration::from_secs(30), || {
        records(&later).len() >= 50
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    let after: Vec<u64> = records(&later).iter().map(|r| r.1).collect();
    assert_eq!(after, (1000..1050).collect::<Vec<_>>());
    rt.block_on(amqp_delete_queues(&[
        record,
        format!("{name}.c.offset"),
        format!("{name}t.c.offset"),
        format!("{name}.dead-letters"),
        format!("{name}t.dead-letters"),
    ]));
    rt.block_on(amqp_delete_exchange(&exchange));
}

/// A durable queue declared as classic, then configured as quorum: the hub stops at start with
/// an error naming the queue and the broker's PRECONDITION_FAILED (it never consumes from a
/// queue of another type than configured).
#[test]
fn a_queue_of_another_type_is_a_clear_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let name = unique("retype");
    let consumer = |kind: &str| {
        format!(
            "type = \"delay\"\ndurable = true\nqueue_type = \"{kind}\"\nsettings = {{ delay = \"0ms\" }}"
        )
    };
    let port = free_port();
    let backend = format!("url = \"{URL}\"");
    let classic = config(
        dir.path(),
        "a.toml",
        &name,
        port,
        &backend,
        &consumer("classic"),
    );
    let mut p = start(&classic, port, None);
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(20)).success());
    let quorum = config(
        dir.path(),
        "b.toml",
        &name,
        port,
        &backend,
        &consumer("quorum"),
    );
    let out = hub(&["run", "--config", quorum.to_str().unwrap()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{name}.c")) && text.contains("PRECONDITION_FAILED"),
        "{text}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(amqp_delete_queues(&[
        format!("{name}.c"),
        format!("{name}.dead-letters"),
    ]));
}
