use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::{Barrier, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use super::*;

mod batches;
mod bytes;
mod catch_up_scenarios;
mod failures;
mod races;
mod status;
mod withdrawn;
use std::time::Duration;

use crate::MemoryBackend;
use crate::metrics::{MetricsHandle, Registry};
use hub_core::{ConsumeError, Delivery, IntakeClosed, Message, Resources, Verdict, WhenFull};

/// Records the `i` field of every message it finishes; behaviour per message is chosen by the body.
#[derive(Default)]
struct Probe {
    seen: Mutex<Vec<u64>>,
    gate: Option<Arc<Semaphore>>,
    delay: Option<Duration>,
    barrier: Option<Arc<Barrier>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

#[async_trait]
impl Consumer for Probe {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        if let Some(b) = &self.barrier {
            b.wait().await;
        }
        let result = match msg.body().get("do").and_then(Value::as_str) {
            Some("fail") => Err(ConsumeError::transient("database down")),
            Some("invalid") => Err(ConsumeError::invalid("no such build")),
            Some("panic") => panic!("consumer bug"),
            Some("hang") => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            _ => Ok(()),
        };
        if let Some(i) = msg.body().get("i").and_then(Value::as_u64) {
            self.seen.lock().unwrap().push(i);
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// A probe that holds each message until the returned gate gives it a permit.
fn gated_probe() -> (Arc<Probe>, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(Arc::clone(&gate)),
        ..Probe::default()
    });
    (probe, gate)
}

struct Rig {
    dispatcher: Dispatcher,
    intake: Intake,
    metrics: MetricsHandle,
}

fn rig(consumers: Vec<(&str, &[&str], ConsumerOptions, Arc<Probe>)>) -> Rig {
    rig_of(
        consumers
            .into_iter()
            .map(|(n, p, o, c)| (n, p, o, c as Arc<dyn Consumer>))
            .collect(),
    )
}

/// A consumer for [`rig_of`]: name, patterns, options, the consumer.
type Spec<'a> = (&'a str, &'a [&'a str], ConsumerOptions, Arc<dyn Consumer>);

/// [`rig`] with consumers of any type, on a backend that redelivers itself (as AMQP does): the
/// acker of each delivery sees the consumer's verdict as it is.
fn rig_of(consumers: Vec<Spec<'_>>) -> Rig {
    rig_with(consumers, true)
}

/// [`rig_of`], on a backend that redelivers (`true`, the acker sees each verdict) or not (the
/// hub keeps retries and dead letters; the acker sees the final verdict).
fn rig_with(consumers: Vec<Spec<'_>>, redelivers: bool) -> Rig {
    rig_with_ceiling(consumers, redelivers, None)
}

/// [`rig_with`], with `max_queued_bytes` set when given.
fn rig_with_ceiling(
    consumers: Vec<Spec<'_>>,
    redelivers: bool,
    max_queued_bytes: Option<usize>,
) -> Rig {
    rig_full(consumers, redelivers, max_queued_bytes, None)
}

/// [`rig_with`] on a backend that does not redeliver, every consumer's dead letters going to
/// the JSON-lines file `dead_letters`.
fn rig_with_dead_letters(consumers: Vec<Spec<'_>>, dead_letters: &std::path::Path) -> Rig {
    rig_full(consumers, false, None, Some(dead_letters))
}

fn rig_full(
    consumers: Vec<Spec<'_>>,
    redelivers: bool,
    max_queued_bytes: Option<usize>,
    dead_letters: Option<&std::path::Path>,
) -> Rig {
    let registry = Registry::new();
    let mut b = Dispatcher::builder(registry.clone());
    if let Some(limit) = max_queued_bytes {
        b.max_queued_bytes(limit);
    }
    let backend = b.backend("mem");
    b.backend_redelivers(backend, redelivers);
    let mem: Arc<dyn hub_core::Backend> = Arc::new(MemoryBackend::new());
    for (name, patterns, options, consumer) in consumers {
        let cx = Context::new(
            name,
            b.publisher(backend, Arc::clone(&mem)),
            Resources::new(),
            CancellationToken::new(),
        );
        let patterns = patterns.iter().map(|p| Pattern::new(p).unwrap()).collect();
        let id = b.consumer(backend, patterns, options, consumer, cx);
        if let Some(path) = dead_letters {
            b.dead_letters(id, Arc::new(crate::dead_letter::FileSink::new(path)));
        }
    }
    let dispatcher = b.build();
    let intake = dispatcher.intake(backend);
    dispatcher.start();
    Rig {
        metrics: MetricsHandle {
            registry,
            dispatcher: dispatcher.clone(),
        },
        dispatcher,
        intake,
    }
}

impl Rig {
    /// What a scrape sees: refresh, then render.
    fn render(&self) -> String {
        self.metrics.render()
    }
}

fn msg(i: u64) -> Message {
    Message::new("org.test.event", json!({ "i": i }))
}

fn opts(f: impl FnOnce(&mut ConsumerOptions)) -> ConsumerOptions {
    let mut o = ConsumerOptions::default();
    f(&mut o);
    o
}

fn state(d: &Dispatcher, name: &str) -> ConsumerState {
    d.states().into_iter().find(|s| s.name == name).unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads one sample from Prometheus text: `name{labels} value`, labels in any order.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let body = rest.strip_suffix('}')?;
            let have: Vec<(&str, &str)> = if body.is_empty() {
                vec![]
            } else {
                body.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k, v.trim_matches('"')))
                    .collect()
            };
            (have.len() == labels.len() && labels.iter().all(|l| have.contains(l))).then(|| {
                match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or(f64::NAN),
                }
            })
        })
}

fn acker() -> (Box<dyn hub_core::Acker>, oneshot::Receiver<Verdict>) {
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    (
        Box::new(move |v: Verdict| {
            let _ = tx.lock().unwrap().take().map(|t| t.send(v));
        }),
        rx,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_at_concurrency_one_over_100k_messages() {
    let probe = Arc::new(Probe::default());
    let r = rig(vec![(
        "ordered",
        &["#"],
        opts(|o| o.queue_capacity = 512),
        Arc::clone(&probe),
    )]);
    for i in 0..100_000 {
        r.intake.deliver(Delivery::new(msg(i))).await.unwrap();
    }
    assert!(r.dispatcher.drain(Duration::from_secs(30)).await.is_clean());
    let seen = probe.seen.lock().unwrap();
    assert_eq!(seen.len(), 100_000);
    assert!(
        seen.iter().copied().eq(0..100_000),
        "messages were reordered"
    );
    assert_eq!(probe.max_running.load(Ordering::SeqCst), 1);
}

/// Routing through the per-intake cache gives what the patterns say, for topics seen for the
/// first time and again, and after the cache has started over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_routes_match_the_patterns() {
    let specs: [(&str, &[&str]); 3] = [
        ("builds", &["org.fedoraproject.*.buildsys.#"]),
        ("all_prod", &["*.*.prod.#", "#.tag"]),
        ("tags", &["#.tag"]),
    ];
    let probes: Vec<Arc<Probe>> = specs.iter().map(|_| Arc::new(Probe::default())).collect();
    let r = rig(specs
        .iter()
        .zip(&probes)
        .map(|((name, patterns), p)| {
            (
                *name,
                *patterns,
                opts(|o| o.queue_capacity = 100_000),
                Arc::clone(p),
            )
        })
        .collect());
    // 5000 distinct topics (more than the cache holds), each delivered twice.
    let topic = |i: u64| match i % 4 {
        0 => format!("org.fedoraproject.prod.buildsys.t{i}"),
        1 => format!("org.fedoraproject.stg.buildsys.t{i}.tag"),
        2 => format!("org.centos.prod.t{i}"),
        _ => format!("io.pagure.stg.t{i}"),
    };
    let mut expected = [0usize; 3];
    for round in 0..2u64 {
        for i in 0..5000u64 {
            let t = topic(i);
            for (k, (_, patterns)) in specs.iter().enumerate() {
                if patterns
                    .iter()
                    .any(|p| Pattern::new(p).unwrap().matches(&t))
                {
                    expected[k] += 1;
                }
            }
            let m = Message::new(t, json!({ "i": round * 5000 + i }));
            r.intake.deliver(Delivery::new(m)).await.unwrap();
        }
    }
    assert!(r.dispatcher.drain(Duration::from_secs(30)).await.is_clean());
    for (k, p) in probes.iter().enumerate() {
        assert_eq!(p.seen.lock().unwrap().len(), expected[k], "{}", specs[k].0);
    }
    assert_eq!(expected, [5000, 7500, 2500]);
}

/// On one thread, a consumer that never waits and always has work must still let other tasks
/// (other consumers, the HTTP server) run: it yields when tokio's cooperative budget is spent.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_consumer_does_not_keep_its_thread() {
    let probe = Arc::new(Probe::default());
    let r = rig(vec![(
        "busy",
        &["#"],
        opts(|o| o.queue_capacity = 20_000),
        Arc::clone(&probe),
    )]);
    for i in 0..20_000 {
        r.intake.deliver(Delivery::new(msg(i))).await.unwrap();
    }
    // Queued behind the worker (woken by the first message): it runs when the worker yields.
    let d = r.dispatcher.clone();
    let seen_by_other_task = tokio::spawn(async move { state(&d, "busy").completed })
        .await
        .unwrap();
    assert!(
        seen_by_other_task < 20_000,
        "another task ran only after all 20000 messages"
    );
    assert!(r.dispatcher.drain(Duration::from_secs(30)).await.is_clean());
    assert_eq!(probe.seen.lock().unwrap().len(), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_n_really_runs_n_at_once() {
    // Each call waits at a barrier of 4: the test only finishes if 4 calls are in flight together.
    let probe = Arc::new(Probe {
        barrier: Some(Arc::new(Barrier::new(4))),
        ..Probe::default()
    });
    let r = rig(vec![(
        "wide",
        &["#"],
        opts(|o| o.concurrency = 4),
        Arc::clone(&probe),
    )]);
    for i in 0..16 {
        r.intake.deliver(Delivery::new(msg(i))).await.unwrap();
    }
    wait_for("16 messages through a 4-wide barrier", || {
        probe.seen.lock().unwrap().len() == 16
    })
    .await;
    assert_eq!(
        probe.max_running.load(Ordering::SeqCst),
        4,
        "never more than 4 at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_slow_a_fast_one() {
    let slow = Arc::new(Probe {
        delay: Some(Duration::from_millis(10)),
        ..Probe::default()
    });
    let fast = Arc::new(Probe::default());
    let r = rig(vec![
        (
            "slow",
            &["org.#"],
            opts(|o| o.queue_capacity = 20_000),
            Arc::clone(&slow),
        ),
        (
            "fast",
            &["org.#"],
            ConsumerOptions::default(),
            Arc::clone(&fast),
        ),
    ]);
    let started = Instant::now();
    for i in 0..10_000 {
        r.intake.deliver(Delivery::new(msg(i))).await.unwrap();
    }
    wait_for("fast consumer to finish 10k", || {
        fast.seen.lock().unwrap().len() == 10_000
    })
    .await;
    let elapsed = started.elapsed();
    let s = state(&r.dispatcher, "slow");
    // At 10 ms a message the slow one cannot have done more than elapsed/10ms (+1 in flight).
    let slow_done = slow.seen.lock().unwrap().len();
    assert!(
        s.backlog > 0,
        "slow consumer should still have a backlog: {s:?}"
    );
    assert!(
        slow_done as u128 <= elapsed.as_millis() / 10 + 1,
        "slow did {slow_done} in {elapsed:?}"
    );
    // Snapshot of a running consumer: one message may be between states while it is read.
    let accounted = s.backlog + s.completed as usize + s.in_flight;
    assert!(
        (9_999..=10_001).contains(&accounted),
        "{s:?} done={slow_done}"
    );
    assert!(
        s.oldest_age > Duration::ZERO && s.catch_up_seconds > 0.0,
        "{s:?}"
    );
    assert_eq!(state(&r.dispatcher, "fast").backlog, 0);
}

/// One gated consumer with room for 4: message 0 is taken (in flight), then `extra` more arrive.
async fn gated(policy: WhenFull, extra: u64) -> (Rig, Arc<Probe>, Arc<Semaphore>) {
    gated_beside(policy, extra, None).await
}

/// [`gated`], with another consumer of every message beside it when `free` is given.
async fn gated_beside(
    policy: WhenFull,
    extra: u64,
    free: Option<Arc<Probe>>,
) -> (Rig, Arc<Probe>, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(Arc::clone(&gate)),
        ..Probe::default()
    });
    let mut consumers: Vec<(&str, &[&str], ConsumerOptions, Arc<Probe>)> = vec![(
        "gated",
        &["#"],
        opts(|o| {
            o.queue_capacity = 4;
            o.when_full = policy;
        }),
        Arc::clone(&probe),
    )];
    consumers.extend(free.map(|f| ("free", &["#"][..], ConsumerOptions::default(), f)));
    let r = rig(consumers);
    r.intake.deliver(Delivery::new(msg(0))).await.unwrap();
    wait_for("first message in flight", || {
        state(&r.dispatcher, "gated").in_flight == 1
    })
    .await;
    for i in 1..=extra {
        r.intake.deliver(Delivery::new(msg(i))).await.unwrap();
    }
    (r, probe, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_drops_exactly_the_overflow() {
    let (r, probe, gate) = gated(WhenFull::DropNewest, 9).await;
    r.dispatcher.refresh_gauges();
    let text = r.render();
    assert_eq!(
        sample(
            &text,
            "hub_consumer_dropped_messages_total",
            &[("consumer", "gated"), ("reason", "queue_full")]
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "hub_consumer_received_messages_total",
            &[("consumer", "gated")]
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(
            &text,
            "hub_consumer_backlog_messages",
            &[("consumer", "gated")]
        ),
        Some(4.0)
    );
    gate.add_permits(100);
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
    assert_eq!(*probe.seen.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_newest() {
    let (r, probe, gate) = gated(WhenFull::DropOldest, 9).await;
    let text = r.render();
    assert_eq!(
        sample(
            &text,
            "hub_consumer_dropped_messages_total",
            &[("consumer", "gated"), ("reason", "queue_full")]
        ),
        Some(5.0)
    );
    gate.add_permits(100);
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
    assert_eq!(*probe.seen.lock().unwrap(), vec![0, 6, 7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_pauses_intake_until_there_is_room() {
    let (r, probe, gate) = gated(WhenFull::Block, 4).await;
    let intake = r.intake.clone();
    let mut sixth = tokio::spawn(async move { intake.deliver(Delivery::new(msg(5))).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut sixth)
            .await
            .is_err(),
        "delivery into a full `block` queue must wait"
    );
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(5), sixth)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    gate.add_permits(100);
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
    assert_eq!(*probe.seen.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    let text = r.render();
    assert_eq!(
        sample(
            &text,
            "hub_consumer_dropped_messages_total",
            &[("consumer", "gated"), ("reason", "queue_full")]
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_timeout_and_panic_are_counted_and_the_consumer_keeps_going() {
    let probe = Arc::new(Probe::default());
    let r = rig(vec![(
        "flaky",
        &["#"],
        opts(|o| o.timeout = Some(Duration::from_millis(100))),
        Arc::clone(&probe),
    )]);
    let bodies = [
        json!({"i": 1}),
        json!({"do": "fail"}),
        json!({"do": "invalid"}),
        json!({"do": "panic"}),
        json!({"do": "hang"}),
        json!({"i": 2}),
    ];
    let mut verdicts = Vec::new();
    for body in bodies {
        let (a, rx) = acker();
        r.intake
            .deliver(Delivery::with_acker(Message::new("t", body), a))
            .await
            .unwrap();
        verdicts.push(rx);
    }
    let mut got = Vec::new();
    for rx in verdicts {
        got.push(
            tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(got[0], Verdict::Ack);
    assert!(
        matches!(&got[1], Verdict::Retry { reason, .. } if reason.contains("database down")),
        "{:?}",
        got[1]
    );
    assert!(
        matches!(&got[2], Verdict::Reject { reason } if reason.contains("no such build")),
        "{:?}",
        got[2]
    );
    assert!(
        matches!(&got[3], Verdict::Retry { reason, .. } if reason.contains("panicked: consumer bug")),
        "{:?}",
        got[3]
    );
    assert!(
        matches!(&got[4], Verdict::Retry { reason, .. } if reason.contains("timed out")),
        "{:?}",
        got[4]
    );
    assert_eq!(got[5], Verdict::Ack);
    assert_eq!(
        *probe.seen.lock().unwrap(),
        vec![1, 2],
        "the consumer kept going after each failure"
    );
    let text = r.render();
    let outcome = |o: &str| {
        sample(
            &text,
            "hub_consumer_processed_messages_total",
            &[("consumer", "flaky"), ("outcome", o)],
        )
    };
    assert_eq!(
        (
            outcome("ok"),
            outcome("transient"),
            outcome("invalid"),
            outcome("timeout"),
            outcome("panic")
        ),
        (Some(2.0), Some(1.0), Some(1.0), Some(1.0), Some(1.0)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_only_after_every_matching_consumer_finished() {
    let gate = Arc::new(Semaphore::new(0));
    let slow = Arc::new(Probe {
        gate: Some(Arc::clone(&gate)),
        ..Probe::default()
    });
    let fast = Arc::new(Probe::default());
    let other = Arc::new(Probe::default());
    let r = rig(vec![
        (
            "slow",
            &["org.*.event"],
            ConsumerOptions::default(),
            Arc::clone(&slow),
        ),
        (
            "fast",
            &["org.#"],
            ConsumerOptions::default(),
            Arc::clone(&fast),
        ),
        (
            "other",
            &["com.#"],
            ConsumerOptions::default(),
            Arc::clone(&other),
        ),
    ]);
    let (a, mut rx) = acker();
    r.intake
        .deliver(Delivery::with_acker(msg(7), a))
        .await
        .unwrap();
    wait_for("fast consumer done", || {
        fast.seen.lock().unwrap().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        rx.try_recv().is_err(),
        "settled before the slow consumer finished"
    );
    gate.add_permits(1);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap(),
        Verdict::Ack
    );
    assert!(
        other.seen.lock().unwrap().is_empty(),
        "non-matching consumer got the message"
    );

    // One failure among the matching consumers decides the verdict.
    let (a, rx) = acker();
    r.intake
        .deliver(Delivery::with_acker(
            Message::new("org.x.event", json!({"do": "invalid"})),
            a,
        ))
        .await
        .unwrap();
    gate.add_permits(1);
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap(),
        Verdict::Reject { .. }
    ));

    // Nothing matched: counted as unrouted and acknowledged.
    let (a, rx) = acker();
    r.intake
        .deliver(Delivery::with_acker(
            Message::new("net.nobody", json!({})),
            a,
        ))
        .await
        .unwrap();
    assert_eq!(rx.await.unwrap(), Verdict::Ack);
    r.intake
        .deliver(Delivery::new(Message::new("net.nobody", json!({}))))
        .await
        .unwrap();
    assert_eq!(
        sample(&r.render(), "hub_dispatcher_unrouted_messages_total", &[]),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_queued_messages_and_refuses_new_ones() {
    let probe = Arc::new(Probe {
        delay: Some(Duration::from_millis(2)),
        ..Probe::default()
    });
    let r = rig(vec![(
        "drainer",
        &["#"],
        ConsumerOptions::default(),
        Arc::clone(&probe),
    )]);
    for i in 0..200 {
        r.intake.deliver(Delivery::new(msg(i))).await.unwrap();
    }
    let report = r.dispatcher.drain(Duration::from_secs(10)).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(probe.seen.lock().unwrap().len(), 200);
    let (a, rx) = acker();
    assert_eq!(
        r.intake.deliver(Delivery::with_acker(msg(999), a)).await,
        Err(IntakeClosed)
    );
    assert_eq!(
        rx.await.unwrap(),
        Verdict::Requeue,
        "a refused delivery is given back, not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_grace_reports_counts_and_requeues_what_is_left() {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(gate),
        ..Probe::default()
    });
    let r = rig(vec![(
        "stuck",
        &["#"],
        ConsumerOptions::default(),
        Arc::clone(&probe),
    )]);
    let mut rxs = Vec::new();
    for i in 0..5 {
        let (a, rx) = acker();
        r.intake
            .deliver(Delivery::with_acker(msg(i), a))
            .await
            .unwrap();
        rxs.push(rx);
    }
    wait_for("one in flight", || {
        state(&r.dispatcher, "stuck").in_flight == 1
    })
    .await;
    let report = r.dispatcher.drain(Duration::from_millis(200)).await;
    assert_eq!(report.unfinished, vec![("stuck".to_string(), 4, 1)]);
    for rx in rxs {
        assert_eq!(
            rx.await.unwrap(),
            Verdict::Requeue,
            "never acked without processing, never counted as an attempt"
        );
    }
    // What was cut off is counted: received = processed + dropped + backlog + in flight.
    let text = r.render();
    let get = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("consumer", "stuck")];
        labels.extend_from_slice(extra);
        sample(&text, name, &labels).unwrap()
    };
    assert_eq!(get("hub_consumer_received_messages_total", &[]), 5.0);
    assert_eq!(
        get(
            "hub_consumer_dropped_messages_total",
            &[("reason", "shutdown")]
        ),
        5.0
    );
    assert_eq!(
        get(
            "hub_consumer_dropped_messages_total",
            &[("reason", "queue_full")]
        ),
        0.0
    );
    assert_eq!(get("hub_consumer_backlog_messages", &[]), 0.0);
    assert_eq!(get("hub_consumer_in_flight_messages", &[]), 0.0);
    for outcome in ["ok", "transient", "invalid", "timeout", "panic"] {
        assert_eq!(
            get(
                "hub_consumer_processed_messages_total",
                &[("outcome", outcome)]
            ),
            0.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_gauges_of_a_stuck_consumer_keep_growing() {
    let gate = Arc::new(Semaphore::new(0));
    let stuck = Arc::new(Probe {
        gate: Some(Arc::clone(&gate)),
        ..Probe::default()
    });
    let fine = Arc::new(Probe::default());
    let r = rig(vec![
        (
            "stuck",
            &["#"],
            ConsumerOptions::default(),
            Arc::clone(&stuck),
        ),
        (
            "fine",
            &["#"],
            ConsumerOptions::default(),
            Arc::clone(&fine),
        ),
    ]);
    for i in 0..3 {
        r.intake.deliver(Delivery::new(msg(i))).await.unwrap();
    }
    wait_for("fine done", || fine.seen.lock().unwrap().len() == 3).await;
    wait_for("stuck busy", || {
        state(&r.dispatcher, "stuck").in_flight == 1
    })
    .await;
    let read = |name: &str, consumer: &str| {
        r.dispatcher.refresh_gauges();
        sample(&r.render(), name, &[("consumer", consumer)]).unwrap()
    };
    let age1 = read("hub_consumer_oldest_message_age_seconds", "stuck");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let age2 = read("hub_consumer_oldest_message_age_seconds", "stuck");
    assert!(
        age2 >= age1 + 0.25,
        "oldest age must grow while stuck: {age1} -> {age2}"
    );
    assert_eq!(read("hub_consumer_backlog_messages", "stuck"), 2.0);
    assert_eq!(read("hub_consumer_in_flight_messages", "stuck"), 1.0);
    // Nothing ever finished, so no service time is known: until the first patience runs out
    // the figure is a lower bound, the backlog at the pace of the message in hand so far
    // (`+Inf` cases: `catch_up_*` tests on the paused clock).
    let catch_up = read("hub_consumer_catch_up_seconds", "stuck");
    assert!(
        catch_up.is_finite() && catch_up >= 2.0 * 0.3,
        "lower bound: {catch_up}"
    );
    assert_eq!(read("hub_consumer_backlog_messages", "fine"), 0.0);
    assert_eq!(read("hub_consumer_oldest_message_age_seconds", "fine"), 0.0);
    assert_eq!(read("hub_consumer_catch_up_seconds", "fine"), 0.0);
    let text = r.render();
    assert!(
        text.contains(
            "hub_consumer_processing_duration_seconds_bucket{consumer=\"fine\",le=\"0.001\"}"
        ),
        "histograms have buckets:\n{text}"
    );
    assert!(
        text.contains("hub_consumer_queue_wait_seconds_bucket"),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "hub_backend_received_messages_total",
            &[("backend", "mem")]
        ),
        Some(3.0)
    );
    // Invariant: received = processed + dropped + backlog + in flight.
    assert_eq!(
        sample(
            &text,
            "hub_consumer_received_messages_total",
            &[("consumer", "stuck")]
        ),
        Some(3.0)
    );
    gate.add_permits(10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_delivered_as_its_messages_one_after_another() {
    let a = Arc::new(Probe::default());
    let all = Arc::new(Probe::default());
    let r = rig(vec![
        (
            "a",
            &["org.a.*"],
            ConsumerOptions::default(),
            Arc::clone(&a),
        ),
        (
            "all",
            &["org.#"],
            ConsumerOptions::default(),
            Arc::clone(&all),
        ),
    ]);
    let topics = ["org.a.event", "org.b.event", "net.nobody"];
    let mut verdicts = Vec::new();
    let batch: Vec<Delivery> = (0..30u64)
        .map(|i| {
            let (ack, rx) = acker();
            verdicts.push(rx);
            let m = Message::new(topics[(i % 3) as usize], json!({ "i": i }));
            Delivery::with_acker(m, ack)
        })
        .collect();
    r.intake.deliver_many(batch).await.unwrap();
    for rx in verdicts {
        let v = tokio::time::timeout(Duration::from_secs(5), rx).await;
        assert_eq!(v.unwrap().unwrap(), Verdict::Ack);
    }
    let want = |keep: fn(u64) -> bool| (0..30u64).filter(|&i| keep(i)).collect::<Vec<_>>();
    assert_eq!(*a.seen.lock().unwrap(), want(|i| i % 3 == 0));
    assert_eq!(*all.seen.lock().unwrap(), want(|i| i % 3 != 2));
    let text = r.render();
    let received = |c: &str| {
        sample(
            &text,
            "hub_consumer_received_messages_total",
            &[("consumer", c)],
        )
    };
    assert_eq!((received("a"), received("all")), (Some(10.0), Some(20.0)));
    assert_eq!(
        sample(&text, "hub_dispatcher_unrouted_messages_total", &[]),
        Some(10.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_into_a_full_queue_follows_its_policy() {
    // Room for 4 behind a message in flight; a batch of 9 more.
    let batch = || (1..=9).map(|i| Delivery::new(msg(i))).collect::<Vec<_>>();
    for (policy, kept) in [
        (WhenFull::DropNewest, vec![0, 1, 2, 3, 4]),
        (WhenFull::DropOldest, vec![0, 6, 7, 8, 9]),
    ] {
        let (r, probe, gate) = gated(policy, 0).await;
        r.intake.deliver_many(batch()).await.unwrap();
        let dropped = sample(
            &r.render(),
            "hub_consumer_dropped_messages_total",
            &[("consumer", "gated"), ("reason", "queue_full")],
        );
        assert_eq!(dropped, Some(5.0), "{policy:?}");
        gate.add_permits(100);
        assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
        assert_eq!(*probe.seen.lock().unwrap(), kept, "{policy:?}");
    }

    // `block`: the first 4 fit, the batch then waits for room for each of the other 5; a
    // consumer with room gets the whole batch meanwhile.
    let free = Arc::new(Probe::default());
    let (r, probe, gate) = gated_beside(WhenFull::Block, 0, Some(Arc::clone(&free))).await;
    let intake = r.intake.clone();
    let mut delivering = tokio::spawn(async move { intake.deliver_many(batch()).await });
    wait_for("the batch to fill the queue", || {
        state(&r.dispatcher, "gated").backlog == 4
    })
    .await;
    wait_for("the free consumer to get the whole batch", || {
        free.seen.lock().unwrap().len() == 10
    })
    .await;
    for _ in 0..5 {
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut delivering)
                .await
                .is_err(),
            "a batch into a full `block` queue must wait"
        );
        gate.add_permits(1);
    }
    tokio::time::timeout(Duration::from_secs(5), delivering)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    gate.add_permits(100);
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
    assert_eq!(*probe.seen.lock().unwrap(), (0..=9).collect::<Vec<_>>());
}

#[test]
fn a_match_counts_each_consumer_once() {
    let mut m = Matched::new();
    // Two patterns of one consumer, and consumers past the 256 kept inline.
    for id in [3, 3, 0, 255, 256, 700, 700, 3] {
        m.insert(id);
    }
    assert_eq!(m.len(), 5);
    assert_eq!(m.iter().collect::<Vec<_>>(), [0, 3, 255, 256, 700]);
    assert_eq!(Matched::new().len(), 0);
}
