//! Batch consumers (`batch_size` > 1), on tokio's paused clock where time matters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::super::*;
use super::{acker, opts, rig_with, rig_with_dead_letters};
use crate::metrics::sample;
use hub_core::{ConsumeError, Delivery, Message, Verdict};

/// Records each batch (the `i` of its messages, and when it started); fails messages whose body
/// says so; takes at most `take` when set.
#[derive(Default)]
pub(super) struct Batcher {
    pub(super) batches: Mutex<Vec<(Vec<u64>, Instant)>>,
    take: Option<usize>,
    panic: bool,
    /// Each batch takes this long.
    slow: Option<Duration>,
    /// Each batch waits for a permit (never given back) before it ends.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Each message handed over: its `i` and attempt, in order.
    attempts: Mutex<Vec<(u64, u32)>>,
    /// Batches inside `consume_batch` now, and at most at once.
    running: AtomicUsize,
    max_running: AtomicUsize,
}

#[async_trait]
impl Consumer for Batcher {
    async fn consume(&self, _cx: &Context, _msg: &Message) -> Result<(), ConsumeError> {
        unreachable!("a batch consumer is given batches")
    }

    async fn consume_batch(
        &self,
        _cx: &Context,
        batch: &[Message],
    ) -> Vec<Result<(), ConsumeError>> {
        let ids = batch
            .iter()
            .map(|m| m.body()["i"].as_u64().unwrap())
            .collect();
        self.batches.lock().unwrap().push((ids, Instant::now()));
        self.attempts.lock().unwrap().extend(
            batch
                .iter()
                .map(|m| (m.body()["i"].as_u64().unwrap(), m.attempt())),
        );
        assert!(!self.panic, "batch consumer bug");
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        if let Some(d) = self.slow {
            tokio::time::sleep(d).await;
        }
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        batch
            .iter()
            .map(|m| match m.body().get("do").and_then(Value::as_str) {
                Some("invalid") => Err(ConsumeError::invalid("bad row")),
                Some("fail") => Err(ConsumeError::transient("db down")),
                Some("fail_first") if m.attempt() == 1 => {
                    Err(ConsumeError::transient("db restarting"))
                }
                _ => Ok(()),
            })
            .collect()
    }

    fn batch_take(&self, queued: usize, batch_size: usize) -> usize {
        self.take.unwrap_or(queued).min(batch_size)
    }
}

impl Batcher {
    /// Each batch waits for a permit of `gate` before it ends.
    pub(super) fn gated(gate: &Arc<tokio::sync::Semaphore>) -> Self {
        Self {
            gate: Some(Arc::clone(gate)),
            ..Self::default()
        }
    }
}

fn m(i: u64) -> Message {
    Message::new("org.test.event", json!({ "i": i }))
}

pub(super) fn batch_opts(size: usize, delay_ms: u64) -> ConsumerOptions {
    opts(|o| {
        o.batch_size = size;
        o.batch_delay = Duration::from_millis(delay_ms);
    })
}

pub(super) fn rig1(options: ConsumerOptions, c: Arc<Batcher>, redelivers: bool) -> super::Rig {
    rig_with(
        vec![("batch", &["#"][..], options, c as Arc<dyn Consumer>)],
        redelivers,
    )
}

#[tokio::test(start_paused = true)]
async fn batches_fill_up_to_their_size_or_wait_their_delay_and_the_wait_shows_as_backlog() {
    let c = Arc::new(Batcher::default());
    let r = rig1(batch_opts(10, 100), Arc::clone(&c), false);
    let t0 = Instant::now();
    // 25 at once: two full batches at once, and the rest after the delay.
    r.intake
        .deliver_many((0..25).map(|i| Delivery::new(m(i))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        sample(
            &r.render(),
            r#"hub_consumer_backlog_messages{consumer="batch"}"#
        ),
        Some(5.0),
        "the last five wait in the queue for their batch to fill"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let batches = c.batches.lock().unwrap().clone();
    let sizes: Vec<usize> = batches.iter().map(|b| b.0.len()).collect();
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(batches[0].1.duration_since(t0), Duration::ZERO);
    assert_eq!(batches[2].1.duration_since(t0), Duration::from_millis(100));
    // 3, then 2 more 50 ms later: one batch of 5 when the delay is up (counted from the first).
    let t1 = Instant::now();
    r.intake
        .deliver_many((100..103).map(|i| Delivery::new(m(i))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.intake
        .deliver_many((103..105).map(|i| Delivery::new(m(i))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let batches = c.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 4);
    assert_eq!(batches[3].0, [100, 101, 102, 103, 104]);
    assert_eq!(batches[3].1.duration_since(t1), Duration::from_millis(100));
    // A full batch does not wait for the delay.
    let t2 = Instant::now();
    r.intake
        .deliver_many((200..210).map(|i| Delivery::new(m(i))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let batches = c.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 5);
    assert_eq!(batches[4].1.duration_since(t2), Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_of_a_batch_gets_its_own_verdict() {
    let c = Arc::new(Batcher::default());
    let r = rig1(batch_opts(5, 200), Arc::clone(&c), true);
    let mut verdicts = Vec::new();
    for body in [
        json!({"i": 0}),
        json!({"i": 1, "do": "invalid"}),
        json!({"i": 2, "do": "fail"}),
        json!({"i": 3}),
        json!({"i": 4}),
    ] {
        let (a, rx) = acker();
        r.intake
            .deliver(Delivery::with_acker(Message::new("t", body), a))
            .await
            .unwrap();
        verdicts.push(rx);
    }
    let mut got = Vec::new();
    for rx in verdicts {
        got.push(rx.await.unwrap());
    }
    assert_eq!(c.batches.lock().unwrap().len(), 1, "one batch of five");
    assert_eq!(got[0], Verdict::Ack);
    assert!(
        matches!(&got[1], Verdict::Reject { reason } if reason.contains("bad row")),
        "{got:?}"
    );
    assert!(
        matches!(&got[2], Verdict::Retry { reason, .. } if reason.contains("db down")),
        "{got:?}"
    );
    assert_eq!(got[3], Verdict::Ack);
    assert_eq!(got[4], Verdict::Ack);
    let text = r.render();
    let outcome = |o: &str| {
        sample(
            &text,
            &format!(r#"hub_consumer_processed_messages_total{{consumer="batch",outcome="{o}"}}"#),
        )
    };
    assert_eq!(outcome("ok"), Some(3.0));
    assert_eq!(outcome("invalid"), Some(1.0));
    assert_eq!(outcome("transient"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_batch_fails_every_message_and_the_worker_goes_on() {
    let c = Arc::new(Batcher {
        panic: true,
        ..Batcher::default()
    });
    let r = rig1(batch_opts(3, 100), Arc::clone(&c), true);
    let mut verdicts = Vec::new();
    for i in 0..6 {
        let (a, rx) = acker();
        r.intake
            .deliver(Delivery::with_acker(m(i), a))
            .await
            .unwrap();
        verdicts.push(rx);
    }
    for rx in verdicts {
        let v = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&v, Verdict::Retry { reason, .. } if reason.contains("batch consumer bug")),
            "{v:?}"
        );
    }
    assert_eq!(
        c.batches.lock().unwrap().len(),
        2,
        "the worker survived the first panic"
    );
    assert_eq!(
        sample(
            &r.render(),
            r#"hub_consumer_processed_messages_total{consumer="batch",outcome="panic"}"#
        ),
        Some(6.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_at_concurrency_one_and_batch_take_is_honoured() {
    let c = Arc::new(Batcher {
        take: Some(7),
        ..Batcher::default()
    });
    let r = rig1(batch_opts(50, 0), Arc::clone(&c), false);
    for chunk in (0..2000u64).collect::<Vec<_>>().chunks(100) {
        r.intake
            .deliver_many(chunk.iter().map(|&i| Delivery::new(m(i))))
            .await
            .unwrap();
    }
    for _ in 0..500 {
        let done: usize = c.batches.lock().unwrap().iter().map(|b| b.0.len()).sum();
        if done == 2000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let batches = c.batches.lock().unwrap().clone();
    let all: Vec<u64> = batches.iter().flat_map(|b| b.0.clone()).collect();
    assert_eq!(all, (0..2000).collect::<Vec<_>>(), "in order, each once");
    assert!(batches.iter().all(|b| b.0.len() <= 7), "batch_take said 7");
    let state = r.dispatcher.states()[0].clone();
    assert_eq!(
        (state.backlog, state.in_flight, state.completed),
        (0, 0, 2000)
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_past_its_timeout_times_out_every_message_and_the_next_batch_runs() {
    let c = Arc::new(Batcher {
        slow: Some(Duration::from_millis(500)),
        ..Batcher::default()
    });
    let mut options = batch_opts(4, 10);
    options.timeout = Some(Duration::from_millis(100));
    let r = rig1(options, Arc::clone(&c), true);
    let t0 = Instant::now();
    let mut verdicts = Vec::new();
    for i in 0..8 {
        let (a, rx) = acker();
        r.intake
            .deliver(Delivery::with_acker(m(i), a))
            .await
            .unwrap();
        verdicts.push(rx);
    }
    let mut ends = Vec::new();
    for rx in verdicts {
        let v = rx.await.unwrap();
        assert!(
            matches!(&v, Verdict::Retry { reason, .. } if reason.contains("timed out after 100ms")),
            "{v:?}"
        );
        ends.push(Instant::now().duration_since(t0));
    }
    // Two batches of four, one after the other (concurrency 1), each cut at 100 ms: the
    // timeout applies to the whole call, not per message (4 x 100 ms).
    let batches = c.batches.lock().unwrap().clone();
    assert_eq!(
        batches.iter().map(|b| b.0.clone()).collect::<Vec<_>>(),
        [vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
    );
    assert_eq!(ends[..4], [Duration::from_millis(100); 4]);
    assert_eq!(ends[4..], [Duration::from_millis(200); 4]);
    assert_eq!(
        sample(
            &r.render(),
            r#"hub_consumer_processed_messages_total{consumer="batch",outcome="timeout"}"#
        ),
        Some(8.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_counts_batches_in_flight() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let c = Arc::new(Batcher::gated(&gate));
    let mut options = batch_opts(5, 0);
    options.concurrency = 3;
    let r = rig1(options, Arc::clone(&c), false);
    r.intake
        .deliver_many((0..30).map(|i| Delivery::new(m(i))))
        .await
        .unwrap();
    // Three batches of five are taken and held; the other fifteen stay queued.
    super::wait_for("three batches in flight", || {
        c.running.load(Ordering::SeqCst) == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.running.load(Ordering::SeqCst), 3, "no fourth batch");
    let state = r.dispatcher.states()[0].clone();
    assert_eq!((state.in_flight, state.backlog), (15, 15));
    gate.add_permits(30);
    super::wait_for("all done", || r.dispatcher.states()[0].completed == 30).await;
    let batches = c.batches.lock().unwrap().clone();
    assert!(batches.iter().all(|b| b.0.len() == 5), "{batches:?}");
    let mut all: Vec<u64> = batches.iter().flat_map(|b| b.0.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..30).collect::<Vec<_>>(), "each once");
    assert_eq!(c.max_running.load(Ordering::SeqCst), 3);
}

/// On a backend that does not redeliver, the hub keeps a batch's failed messages and retries
/// them (each with its own attempt count; the others of the batch are not handed over again),
/// dead-letters one that runs out of attempts, and, with `in_order`, holds them at the head of
/// the queue (set aside otherwise: newer messages go first).
#[tokio::test(start_paused = true)]
async fn a_batch_s_failures_are_retried_alone_then_dead_lettered_in_or_out_of_order() {
    for in_order in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let c = Arc::new(Batcher::default());
        let mut options = batch_opts(3, 0);
        options.retry = Some(hub_core::RetryPolicy {
            max_attempts: 3,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(60),
            in_order,
        });
        let r = rig_with_dead_letters(
            vec![(
                "batch",
                &["#"][..],
                options,
                Arc::clone(&c) as Arc<dyn Consumer>,
            )],
            &path,
        );
        let mut verdicts = Vec::new();
        for body in [
            json!({"i": 0, "do": "fail_first"}),
            json!({"i": 1}),
            json!({"i": 2, "do": "fail"}),
        ] {
            let (a, rx) = acker();
            r.intake
                .deliver(Delivery::with_acker(Message::new("t", body), a))
                .await
                .unwrap();
            verdicts.push(rx);
        }
        // Two newer messages while the retries wait.
        tokio::time::sleep(Duration::from_millis(10)).await;
        for i in [3, 4] {
            let (a, rx) = acker();
            r.intake
                .deliver(Delivery::with_acker(m(i), a))
                .await
                .unwrap();
            verdicts.push(rx);
        }
        let mut got = Vec::new();
        for rx in verdicts {
            got.push(rx.await.unwrap());
        }
        assert_eq!(got[0], Verdict::Ack, "{got:?}");
        assert_eq!(got[1], Verdict::Ack);
        assert!(
            matches!(&got[2], Verdict::Reject { reason } if reason.contains("gave up after 3 attempts")),
            "{got:?}"
        );
        assert_eq!(got[3..], [Verdict::Ack, Verdict::Ack]);
        let attempts = c.attempts.lock().unwrap().clone();
        // 1 was handed over once; 0 twice; 2 three times; each at its own attempt number.
        let of = |i: u64| -> Vec<u32> {
            attempts
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, a)| *a)
                .collect()
        };
        assert_eq!(
            (of(0), of(1), of(2), of(3), of(4)),
            (vec![1, 2], vec![1], vec![1, 2, 3], vec![1], vec![1]),
            "{attempts:?}"
        );
        let pos = |i: u64, a: u32| attempts.iter().position(|x| *x == (i, a)).unwrap();
        if in_order {
            assert!(
                pos(2, 3) < pos(3, 1),
                "held at the head: the retries before the newer: {attempts:?}"
            );
        } else {
            assert!(
                pos(3, 1) < pos(0, 2),
                "set aside: the newer before the retries: {attempts:?}"
            );
        }
        let letters: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0]["message"]["body"]["i"], 2);
        assert_eq!(letters[0]["attempts"], 3);
        assert_eq!(letters[0]["consumer"], "batch");
        assert!(letters[0]["reason"].as_str().unwrap().contains("db down"));
        assert_eq!(
            sample(
                &r.render(),
                r#"hub_consumer_retries_total{consumer="batch"}"#
            ),
            Some(3.0),
            "0 once, 2 twice"
        );
    }
}
