//! Rate limits, retries kept by the hub, and dead letters, on tokio's paused clock (the
//! dispatcher reads tokio's clock under test, so every delay is exact).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::super::*;
use super::{Rig, acker, opts, rig_with};
use crate::dead_letter::{DeadLetter, FileSink};
use crate::metrics::{MetricsHandle, sample};
use hub_core::{CancellationToken, Resources};
use hub_core::{ConsumeError, Delivery, Message, RateLimit, RetryPolicy, Verdict};

/// Records each call: the message's `i`, its attempt, and when the call started. Fails a
/// message whose body says `"fail": n` on its first n attempts, always with `"fail": "always"`,
/// at once as invalid with `"invalid": true`.
#[derive(Default)]
struct Flaky {
    calls: Mutex<Vec<(u64, u32, Instant)>>,
    ok: AtomicU32,
    /// Ignores `fail` and `invalid`.
    steady: bool,
}

impl Flaky {
    fn steady() -> Arc<Self> {
        Arc::new(Self {
            steady: true,
            ..Self::default()
        })
    }
}

#[async_trait]
impl Consumer for Flaky {
    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let i = msg.body()["i"].as_u64().unwrap_or(0);
        let attempt = cx.attempt();
        assert_eq!(attempt, msg.attempt(), "the context and the header agree");
        self.calls
            .lock()
            .unwrap()
            .push((i, attempt, Instant::now()));
        if self.steady {
            self.ok.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        match &msg.body()["fail"] {
            Value::Number(n) if u64::from(attempt) <= n.as_u64().unwrap_or(0) => {
                return Err(ConsumeError::transient(format!("down (attempt {attempt})")));
            }
            Value::String(s) if s == "always" => return Err(ConsumeError::transient("down")),
            _ => {}
        }
        if msg.body()["invalid"] == json!(true) {
            return Err(ConsumeError::invalid("bad build id"));
        }
        self.ok.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn retry(max_attempts: u32, delay_ms: u64, in_order: bool) -> ConsumerOptions {
    opts(|o| {
        o.retry = Some(RetryPolicy {
            max_attempts,
            delay: Duration::from_millis(delay_ms),
            max_delay: Duration::from_secs(60),
            in_order,
        });
    })
}

fn local(consumers: Vec<(&str, ConsumerOptions, Arc<Flaky>)>) -> Rig {
    rig_with(
        consumers
            .into_iter()
            .map(|(n, o, c)| (n, &["#"][..], o, c as Arc<dyn Consumer>))
            .collect(),
        false,
    )
}

fn m(i: u64, extra: Value) -> Message {
    let mut body = json!({ "i": i });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    Message::new("org.test.event", body)
}

/// Waits (on the paused clock: instantly) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for n in 0..100_000 {
        if cond() {
            return;
        }
        // Let the other tasks run first; the clock moves only when nothing else can.
        if n < 1000 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    panic!("timed out waiting for {what}");
}

/// Sends `lines` things per message, pacing all but the first with `Context::pace`; records
/// when each is sent.
struct Sender {
    lines: u32,
    sent: Mutex<Vec<Instant>>,
}

#[async_trait]
impl Consumer for Sender {
    async fn consume(&self, cx: &Context, _msg: &Message) -> Result<(), ConsumeError> {
        for k in 0..self.lines {
            if k > 0 {
                cx.pace(1).await;
            }
            self.sent.lock().unwrap().push(Instant::now());
        }
        Ok(())
    }
}

/// A call that sends several things pays for the extra ones: the rate limit holds per thing
/// sent, and the waits inside the call count as throttled time.
#[tokio::test(start_paused = true)]
async fn pace_inside_a_call_takes_from_the_same_rate_limit() {
    let sender = Arc::new(Sender {
        lines: 3,
        sent: Mutex::new(Vec::new()),
    });
    let r = rig_with(
        vec![(
            "sender",
            &["#"][..],
            opts(|o| {
                o.rate_limit = Some(RateLimit {
                    rate: 10,
                    per: Duration::from_secs(1),
                    burst: 1,
                });
            }),
            Arc::clone(&sender) as Arc<dyn Consumer>,
        )],
        false,
    );
    let t0 = Instant::now();
    r.intake
        .deliver_many((0..3).map(|i| Delivery::new(m(i, json!({})))))
        .await
        .unwrap();
    until("nine sends", || sender.sent.lock().unwrap().len() == 9).await;
    let at: Vec<Duration> = sender
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.duration_since(t0))
        .collect();
    let expected: Vec<Duration> = (0..9).map(|k| Duration::from_millis(100 * k)).collect();
    assert_eq!(at, expected, "one send per 100 ms, across and inside calls");
    let throttled = sample(
        &r.render(),
        r#"hub_consumer_throttled_seconds_total{consumer="sender"}"#,
    )
    .unwrap();
    assert!((throttled - 0.8).abs() < 1e-6, "throttled {throttled}");
}

#[tokio::test(start_paused = true)]
async fn rate_limited_starts_are_spaced_as_configured_and_others_are_not_slowed() {
    let limited = Arc::new(Flaky::default());
    let free = Arc::new(Flaky::default());
    let r = local(vec![
        (
            "limited",
            opts(|o| {
                o.rate_limit = Some(RateLimit {
                    rate: 10,
                    per: Duration::from_secs(1),
                    burst: 5,
                });
            }),
            Arc::clone(&limited),
        ),
        ("free", ConsumerOptions::default(), Arc::clone(&free)),
    ]);
    let t0 = Instant::now();
    r.intake
        .deliver_many((0..50).map(|i| Delivery::new(m(i, json!({})))))
        .await
        .unwrap();
    until("the free consumer", || free.ok.load(Ordering::SeqCst) == 50).await;
    assert_eq!(t0.elapsed(), Duration::ZERO, "the free consumer waited");
    // 1.05 s in: 5 at once, then one every 100 ms (the last at 1 s): 15 started, 35 queued.
    tokio::time::sleep(Duration::from_millis(1050) - t0.elapsed()).await;
    let text = r.render();
    let backlog = sample(
        &text,
        r#"hub_consumer_backlog_messages{consumer="limited"}"#,
    );
    assert_eq!(backlog, Some(35.0), "throttled messages wait in the queue");
    let age = sample(
        &text,
        r#"hub_consumer_oldest_message_age_seconds{consumer="limited"}"#,
    )
    .unwrap();
    assert!((age - 1.05).abs() < 1e-6, "oldest age {age}");
    until("the limited consumer", || {
        limited.ok.load(Ordering::SeqCst) == 50
    })
    .await;
    let calls = limited.calls.lock().unwrap().clone();
    for (k, (i, _, at)) in calls.iter().enumerate() {
        assert_eq!(*i, k as u64, "order kept");
        let expected = Duration::from_millis(100 * (k.saturating_sub(4)) as u64);
        let got = at.duration_since(t0);
        assert!(
            got.abs_diff(expected) <= Duration::from_millis(1),
            "start {k}: {got:?}, expected {expected:?}"
        );
    }
    let throttled = sample(
        &r.render(),
        r#"hub_consumer_throttled_seconds_total{consumer="limited"}"#,
    )
    .unwrap();
    // 45 waits of 100 ms each.
    assert!((throttled - 4.5).abs() < 0.05, "throttled {throttled}");
    assert!(
        !r.render()
            .contains(r#"hub_consumer_throttled_seconds_total{consumer="free"}"#),
        "an unlimited consumer has no throttle series"
    );
}

#[tokio::test(start_paused = true)]
async fn fail_twice_then_succeed_is_retried_after_the_delays_for_that_consumer_only() {
    let flaky = Arc::new(Flaky::default());
    let other = Flaky::steady();
    let r = local(vec![
        ("flaky", retry(5, 1000, false), Arc::clone(&flaky)),
        ("other", ConsumerOptions::default(), Arc::clone(&other)),
    ]);
    let (a, verdict) = acker();
    r.intake
        .deliver(Delivery::with_acker(m(7, json!({"fail": 2})), a))
        .await
        .unwrap();
    assert_eq!(verdict.await.unwrap(), Verdict::Ack, "settled once, OK");
    let calls = flaky.calls.lock().unwrap().clone();
    let attempts: Vec<u32> = calls.iter().map(|c| c.1).collect();
    assert_eq!(attempts, [1, 2, 3]);
    let gap1 = calls[1].2.duration_since(calls[0].2);
    let gap2 = calls[2].2.duration_since(calls[1].2);
    // 1 s then 2 s, plus at most 20 % jitter.
    assert!(
        gap1 >= Duration::from_secs(1) && gap1 <= Duration::from_millis(1200),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_secs(2) && gap2 <= Duration::from_millis(2400),
        "{gap2:?}"
    );
    assert_eq!(
        other.calls.lock().unwrap().len(),
        1,
        "the other consumer saw the message exactly once"
    );
    let text = r.render();
    assert_eq!(
        sample(&text, r#"hub_consumer_retries_total{consumer="flaky"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"hub_consumer_retries_total{consumer="other"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"hub_consumer_processed_messages_total{consumer="flaky",outcome="ok"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"hub_consumer_processed_messages_total{consumer="flaky",outcome="transient"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"hub_consumer_retry_waiting_messages{consumer="flaky"}"#
        ),
        Some(0.0)
    );
}

#[tokio::test(start_paused = true)]
async fn out_of_attempts_goes_to_the_dead_letter_file_with_reason_and_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.jsonl");
    let flaky = Arc::new(Flaky::default());
    let registry = Registry::new();
    let mut b = Dispatcher::builder(registry.clone());
    b.hub_name("h1");
    let backend = b.backend("bus");
    let mem: Arc<dyn hub_core::Backend> = Arc::new(crate::MemoryBackend::new());
    let cx = Context::new(
        "flaky",
        b.publisher(backend, Arc::clone(&mem)),
        Resources::new(),
        CancellationToken::new(),
    );
    let id = b.consumer(
        backend,
        vec![Pattern::new("#").unwrap()],
        retry(3, 100, false),
        Arc::clone(&flaky) as Arc<dyn Consumer>,
        cx,
    );
    b.dead_letters(id, Arc::new(FileSink::new(&path)));
    let d = b.build();
    let intake = d.intake(backend);
    d.start();
    let metrics = MetricsHandle {
        registry,
        dispatcher: d.clone(),
    };
    let mut verdicts = Vec::new();
    for body in [
        json!({"fail": "always"}),
        json!({"invalid": true}),
        json!({}),
    ] {
        let (a, rx) = acker();
        let mut msg = m(verdicts.len() as u64, body);
        if verdicts.is_empty() {
            msg = msg.with_header_set("trace", json!("t-1"));
        }
        intake.deliver(Delivery::with_acker(msg, a)).await.unwrap();
        verdicts.push(rx);
    }
    let mut got = Vec::new();
    for rx in verdicts {
        got.push(rx.await.unwrap());
    }
    assert!(
        matches!(&got[0], Verdict::Reject { reason } if reason.contains("gave up after 3 attempts")),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Verdict::Reject { reason } if reason.contains("bad build id")),
        "{got:?}"
    );
    assert_eq!(got[2], Verdict::Ack);
    let letters: Vec<DeadLetter> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 2);
    // The invalid message was dead-lettered at once, the failing one after its retries.
    let mut letters = letters;
    letters.sort_by_key(|l| l.to_message().unwrap().body()["i"].as_u64());
    assert_eq!(letters[0].consumer, "flaky");
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].hub, "h1");
    assert_eq!(letters[0].backend, "bus");
    assert!(letters[0].reason.contains("down"), "{}", letters[0].reason);
    let original = letters[0].to_message().unwrap();
    assert_eq!(original.header("trace"), Some(&json!("t-1")));
    assert_eq!(original.body()["i"], json!(0));
    assert_eq!(
        letters[1].attempts, 1,
        "an invalid message is never retried"
    );
    assert!(
        letters[1].reason.contains("invalid"),
        "{}",
        letters[1].reason
    );
    let text = metrics.render();
    assert_eq!(
        sample(
            &text,
            r#"hub_consumer_dead_letters_total{consumer="flaky",sink="file"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"hub_consumer_dead_letters_total{consumer="flaky",sink="log"}"#
        ),
        Some(0.0)
    );
    // Every attempt accounted for: received + retried = processed (+ nothing pending).
    let received = sample(
        &text,
        r#"hub_consumer_received_messages_total{consumer="flaky"}"#,
    )
    .unwrap();
    let retried = sample(&text, r#"hub_consumer_retries_total{consumer="flaky"}"#).unwrap();
    let processed: f64 = ["ok", "transient", "invalid", "timeout", "panic"]
        .iter()
        .map(|o| {
            sample(
                &text,
                &format!(
                    r#"hub_consumer_processed_messages_total{{consumer="flaky",outcome="{o}"}}"#
                ),
            )
            .unwrap()
        })
        .sum();
    assert_eq!((received, retried, processed), (3.0, 2.0, 5.0));
}

#[tokio::test(start_paused = true)]
async fn without_a_sink_a_dead_letter_is_counted_as_logged() {
    let flaky = Arc::new(Flaky::default());
    let r = local(vec![("flaky", retry(1, 100, false), Arc::clone(&flaky))]);
    let (a, rx) = acker();
    r.intake
        .deliver(Delivery::with_acker(m(1, json!({"fail": "always"})), a))
        .await
        .unwrap();
    assert!(matches!(rx.await.unwrap(), Verdict::Reject { .. }));
    assert_eq!(
        sample(
            &r.render(),
            r#"hub_consumer_dead_letters_total{consumer="flaky",sink="log"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn order_while_a_retry_waits_set_aside_by_default_held_with_in_order() {
    for (in_order, expected) in [
        (false, vec![(0, 1), (1, 1), (2, 1), (0, 2)]),
        (true, vec![(0, 1), (0, 2), (1, 1), (2, 1)]),
    ] {
        let flaky = Arc::new(Flaky::default());
        let r = local(vec![(
            "flaky",
            retry(3, 1000, in_order),
            Arc::clone(&flaky),
        )]);
        let mut verdicts = Vec::new();
        for (i, body) in [(0, json!({"fail": 1})), (1, json!({})), (2, json!({}))] {
            let (a, rx) = acker();
            r.intake
                .deliver(Delivery::with_acker(m(i, body), a))
                .await
                .unwrap();
            verdicts.push(rx);
        }
        for rx in verdicts {
            assert_eq!(rx.await.unwrap(), Verdict::Ack);
        }
        let calls: Vec<(u64, u32)> = flaky
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.0, c.1))
            .collect();
        assert_eq!(calls, expected, "in_order = {in_order}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_holds_its_place_so_a_failing_consumer_pushes_back() {
    let flaky = Arc::new(Flaky::default());
    let r = local(vec![(
        "flaky",
        {
            let mut o = retry(3, 10_000, false);
            o.queue_capacity = 2;
            o.when_full = hub_core::WhenFull::DropNewest;
            o
        },
        Arc::clone(&flaky),
    )]);
    for i in 0..2 {
        r.intake
            .deliver(Delivery::new(m(i, json!({"fail": "always"}))))
            .await
            .unwrap();
    }
    until("both set aside", || {
        r.dispatcher.states()[0].retry_waiting == 2
    })
    .await;
    // Both places are held by retries: a third message is dropped by the policy.
    r.intake
        .deliver(Delivery::new(m(2, json!({}))))
        .await
        .unwrap();
    let text = r.render();
    assert_eq!(
        sample(
            &text,
            r#"hub_consumer_dropped_messages_total{consumer="flaky",reason="queue_full"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"hub_consumer_retry_waiting_messages{consumer="flaky"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_cuts_a_retry_delay_short_and_the_drain_runs_it() {
    let flaky = Arc::new(Flaky::default());
    let shutdown = CancellationToken::new();
    let registry = Registry::new();
    let mut b = Dispatcher::builder(registry);
    let backend = b.backend("bus");
    let mem: Arc<dyn hub_core::Backend> = Arc::new(crate::MemoryBackend::new());
    let cx = Context::new(
        "flaky",
        b.publisher(backend, Arc::clone(&mem)),
        Resources::new(),
        shutdown.clone(),
    );
    b.consumer(
        backend,
        vec![Pattern::new("#").unwrap()],
        retry(3, 3_600_000, false),
        Arc::clone(&flaky) as Arc<dyn Consumer>,
        cx,
    );
    let d = b.build();
    let intake = d.intake(backend);
    d.start();
    let (a, rx) = acker();
    intake
        .deliver(Delivery::with_acker(m(1, json!({"fail": 1})), a))
        .await
        .unwrap();
    until("set aside", || d.states()[0].retry_waiting == 1).await;
    let t = Instant::now();
    shutdown.cancel();
    let report = d.drain(Duration::from_secs(10)).await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(rx.await.unwrap(), Verdict::Ack, "retried in the drain");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let attempts: Vec<u32> = flaky.calls.lock().unwrap().iter().map(|c| c.1).collect();
    assert_eq!(attempts, [1, 2]);
}

/// Four producers at once into a small `block` queue whose places retries hold, four workers,
/// a third of the messages failing once: every message succeeds exactly once, every producer
/// gets through (a set-aside message frees its place only when it is finally taken, and the
/// wake-ups follow), and the counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_with_retries_holding_places_in_a_full_queue() {
    let flaky = Arc::new(Flaky::default());
    let r = local(vec![(
        "flaky",
        {
            let mut o = retry(3, 1, false);
            o.queue_capacity = 8;
            o.concurrency = 4;
            o
        },
        Arc::clone(&flaky),
    )]);
    let intake = Arc::new(r.intake.clone());
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let intake = Arc::clone(&intake);
        producers.push(tokio::spawn(async move {
            let mut verdicts = Vec::new();
            for k in 0..500u64 {
                let i = p * 1000 + k;
                let body = if i % 3 == 0 {
                    json!({"fail": 1})
                } else {
                    json!({})
                };
                let (a, rx) = acker();
                intake
                    .deliver(Delivery::with_acker(m(i, body), a))
                    .await
                    .unwrap();
                verdicts.push(rx);
            }
            for rx in verdicts {
                assert_eq!(rx.await.unwrap(), Verdict::Ack);
            }
        }));
    }
    for p in producers {
        tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .expect("producers stuck")
            .unwrap();
    }
    let calls = flaky.calls.lock().unwrap().clone();
    let failing = (0..4u64)
        .flat_map(|p| (0..500u64).map(move |k| p * 1000 + k))
        .filter(|i| i % 3 == 0)
        .count();
    assert_eq!(flaky.ok.load(Ordering::SeqCst), 2000);
    assert_eq!(calls.len(), 2000 + failing);
    let text = r.render();
    let get = |series: &str| sample(&text, series).unwrap();
    assert_eq!(
        get(r#"hub_consumer_retries_total{consumer="flaky"}"#),
        failing as f64
    );
    assert_eq!(
        get(r#"hub_consumer_received_messages_total{consumer="flaky"}"#),
        2000.0
    );
    assert_eq!(
        get(r#"hub_consumer_retry_waiting_messages{consumer="flaky"}"#),
        0.0
    );
    assert_eq!(
        get(r#"hub_consumer_backlog_messages{consumer="flaky"}"#),
        0.0
    );
}

/// A retry in order takes its message back from its place in the queue: a producer blocked on
/// that place is woken (it hung before: the place was freed without a wake-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_order_retry_wakes_a_producer_blocked_on_its_place() {
    let flaky = Arc::new(Flaky::default());
    let r = local(vec![(
        "flaky",
        {
            let mut o = retry(3, 20, true);
            o.queue_capacity = 1;
            o
        },
        Arc::clone(&flaky),
    )]);
    let mut verdicts = Vec::new();
    for (i, body) in [(0, json!({"fail": 1})), (1, json!({})), (2, json!({}))] {
        let (a, rx) = acker();
        tokio::time::timeout(
            Duration::from_secs(5),
            r.intake.deliver(Delivery::with_acker(m(i, body), a)),
        )
        .await
        .expect("the producer was woken")
        .unwrap();
        verdicts.push(rx);
    }
    for rx in verdicts {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .unwrap()
                .unwrap(),
            Verdict::Ack
        );
    }
    let order: Vec<(u64, u32)> = flaky
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.0, c.1))
        .collect();
    assert_eq!(order, [(0, 1), (0, 2), (1, 1), (2, 1)]);
}

/// Panics on about 1 % of its calls, at random (a xorshift generator seeded from the clock; the
/// seed is printed), and counts its calls and panics.
struct Panicky {
    state: std::sync::atomic::AtomicU64,
    calls: std::sync::atomic::AtomicU64,
    panics: std::sync::atomic::AtomicU64,
    ok: Mutex<std::collections::HashSet<u64>>,
}

const PANIC_TEXT: &str = "fault suite: a random panic";

#[async_trait]
impl Consumer for Panicky {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut x = self.state.load(Ordering::Relaxed);
        loop {
            let mut next = x;
            next ^= next << 13;
            next ^= next >> 7;
            next ^= next << 17;
            match self
                .state
                .compare_exchange(x, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    x = next;
                    break;
                }
                Err(now) => x = now,
            }
        }
        if x.is_multiple_of(100) {
            self.panics.fetch_add(1, Ordering::Relaxed);
            panic!("{PANIC_TEXT}");
        }
        self.ok
            .lock()
            .unwrap()
            .insert(msg.body()["i"].as_u64().unwrap());
        Ok(())
    }
}

/// Fault suite: a consumer panicking on 1 % of 100 000 messages at random (retried up to 3
/// attempts, then dead-lettered). Exact counts at the end: every message handled OK or
/// dead-lettered, never both, never lost; every panic counted and caught; every attempt
/// accounted for (`received + retries = processed`), nothing left queued or in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_panicking_on_one_percent_of_100_000_messages_loses_none() {
    // The panics are expected: keep their 1 000 backtraces out of the output, not others'.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        if !text.contains(PANIC_TEXT) {
            previous(info);
        }
    }));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("random panics, seed {seed}");
    let panicky = Arc::new(Panicky {
        state: std::sync::atomic::AtomicU64::new(seed),
        calls: std::sync::atomic::AtomicU64::new(0),
        panics: std::sync::atomic::AtomicU64::new(0),
        ok: Mutex::new(std::collections::HashSet::new()),
    });
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let r = super::rig_with_dead_letters(
        vec![(
            "panicky",
            &["#"][..],
            opts(|o| {
                o.concurrency = 4;
                o.queue_capacity = 10_000;
                o.retry = Some(RetryPolicy {
                    max_attempts: 3,
                    delay: Duration::from_millis(1),
                    max_delay: Duration::from_millis(5),
                    in_order: false,
                });
            }),
            Arc::clone(&panicky) as Arc<dyn Consumer>,
        )],
        &dead,
    );
    const N: u64 = 100_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        r.intake
            .deliver_many(chunk.iter().map(|&i| Delivery::new(m(i, json!({})))))
            .await
            .unwrap();
    }
    let letters = || {
        std::fs::read_to_string(&dead)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["message"]["body"]["i"]
                    .as_u64()
                    .unwrap()
            })
            .collect::<Vec<u64>>()
    };
    super::wait_for("every message settled", || {
        let s = &r.dispatcher.states()[0];
        panicky.ok.lock().unwrap().len() + letters().len() == N as usize
            && s.backlog == 0
            && s.in_flight == 0
            && s.retry_waiting == 0
    })
    .await;
    let ok = panicky.ok.lock().unwrap().clone();
    let dead_ids = letters();
    assert!(
        dead_ids.iter().all(|i| !ok.contains(i)),
        "handled and dead-lettered"
    );
    assert_eq!(ok.len() + dead_ids.len(), N as usize, "each message once");
    let text = r.render();
    let get = |series: &str| sample(&text, series).unwrap_or(0.0);
    let panics = panicky.panics.load(Ordering::Relaxed) as f64;
    let calls = panicky.calls.load(Ordering::Relaxed) as f64;
    assert!(
        panics > 500.0,
        "about 1 % of {calls} calls panicked: {panics}"
    );
    assert_eq!(
        get(r#"hub_consumer_processed_messages_total{consumer="panicky",outcome="panic"}"#),
        panics
    );
    assert_eq!(
        get(r#"hub_consumer_processed_messages_total{consumer="panicky",outcome="ok"}"#),
        ok.len() as f64
    );
    let received = get(r#"hub_consumer_received_messages_total{consumer="panicky"}"#);
    let retries = get(r#"hub_consumer_retries_total{consumer="panicky"}"#);
    assert_eq!(received, N as f64);
    assert_eq!(
        received + retries,
        calls,
        "received + retries = processed (every attempt once)"
    );
    assert_eq!(
        retries + dead_ids.len() as f64,
        panics,
        "each panic retried or given up"
    );
    assert_eq!(
        get(r#"hub_consumer_dead_letters_total{consumer="panicky",sink="file"}"#),
        dead_ids.len() as f64
    );
    eprintln!(
        "{panics} panics in {calls} calls; {} dead-lettered after 3",
        dead_ids.len()
    );
}
