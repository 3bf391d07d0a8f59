//! Copies whose backend took the delivery back ([`hub_core::Acker::withdrawn`]: an AMQP channel
//! closed, so RabbitMQ delivers them again) are dropped before they start: never handled, settled
//! as requeues, counted as dropped with reason `withdrawn`, and the counts still add up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::super::*;
use super::batches::{Batcher, batch_opts, rig1};
use super::{gated_probe, msg, rig, sample, state, wait_for};
use hub_core::{Acker, Delivery, Verdict};

/// An acker whose delivery is withdrawn once `gone` is set; reports its verdict with its `i`.
struct Revocable {
    i: u64,
    gone: Arc<AtomicBool>,
    verdicts: mpsc::UnboundedSender<(u64, Verdict)>,
}

impl Acker for Revocable {
    fn settle(&self, verdict: Verdict) {
        let _ = self.verdicts.send((self.i, verdict));
    }

    fn withdrawn(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
}

/// Deliveries 0..n, those in `revocable` withdrawn together once the returned flag is set.
fn deliveries(
    n: u64,
    revocable: impl Fn(u64) -> bool,
) -> (
    Vec<Delivery>,
    Arc<AtomicBool>,
    mpsc::UnboundedReceiver<(u64, Verdict)>,
) {
    let gone = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::unbounded_channel();
    let list = (0..n)
        .map(|i| {
            let acker = Revocable {
                i,
                gone: Arc::clone(if revocable(i) { &gone } else { &never }),
                verdicts: tx.clone(),
            };
            Delivery::with_acker(msg(i), Box::new(acker))
        })
        .collect();
    (list, gone, rx)
}

/// Every verdict, by `i`, once `n` came.
async fn verdicts(rx: &mut mpsc::UnboundedReceiver<(u64, Verdict)>, n: usize) -> Vec<Verdict> {
    let mut got = std::collections::BTreeMap::new();
    while got.len() < n {
        let (i, v) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("every delivery settled")
            .expect("sender alive");
        assert!(got.insert(i, v).is_none(), "settled twice: {i}");
    }
    got.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_copies_of_withdrawn_deliveries_are_dropped_unstarted_and_counted() {
    let (probe, gate) = gated_probe();
    let r = rig(vec![(
        "c",
        &["#"][..],
        ConsumerOptions::default(),
        Arc::clone(&probe),
    )]);
    // 0 is taken and held at the gate; 1, 2 and 3 (of the channel that closes) wait behind it
    // with 4 (of the next channel).
    let (list, gone, mut rx) = deliveries(5, |i| (1..=3).contains(&i));
    r.intake.deliver_many(list).await.unwrap();
    wait_for("0 in hand, four queued", || {
        let s = state(&r.dispatcher, "c");
        (s.in_flight, s.backlog) == (1, 4)
    })
    .await;
    gone.store(true, Ordering::SeqCst);
    gate.add_permits(10);
    let v = verdicts(&mut rx, 5).await;
    assert_eq!(
        v,
        [
            Verdict::Ack,
            Verdict::Requeue,
            Verdict::Requeue,
            Verdict::Requeue,
            Verdict::Ack
        ]
    );
    assert_eq!(
        *probe.seen.lock().unwrap(),
        [0, 4],
        "only the live ones handled"
    );
    wait_for("settled", || {
        let s = state(&r.dispatcher, "c");
        (s.in_flight, s.backlog) == (0, 0)
    })
    .await;
    let text = r.render();
    let dropped = |reason| {
        let labels = [("consumer", "c"), ("reason", reason)];
        sample(&text, "hub_consumer_dropped_messages_total", &labels)
    };
    assert_eq!(dropped("withdrawn"), Some(3.0), "{text}");
    assert_eq!(dropped("queue_full"), Some(0.0));
    let ok = [("consumer", "c"), ("outcome", "ok")];
    assert_eq!(
        sample(&text, "hub_consumer_processed_messages_total", &ok),
        Some(2.0)
    );
    let (status, _) = r.dispatcher.consumer_status("c").unwrap();
    assert_eq!(
        (
            status.outcomes.received,
            status.outcomes.ok,
            status.outcomes.dropped
        ),
        (5, 2, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_leaves_out_its_withdrawn_messages_and_an_all_withdrawn_batch_is_not_called() {
    let gate = Arc::new(Semaphore::new(0));
    let c = Arc::new(Batcher::gated(&gate));
    let r = rig1(batch_opts(3, 0), Arc::clone(&c), true);
    // The first batch (0, 1, 2) is held at the gate; then (3, 4, 5) with 4 withdrawn, and
    // (6, 7, 8) all withdrawn.
    let (list, gone, mut rx) = deliveries(9, |i| i == 4 || i >= 6);
    // Paused while they arrive, so the first batch is a full one.
    r.dispatcher.pause("batch").unwrap();
    r.intake.deliver_many(list).await.unwrap();
    r.dispatcher.resume("batch").unwrap();
    wait_for("a batch in hand, six queued", || {
        let s = state(&r.dispatcher, "batch");
        (s.in_flight, s.backlog) == (3, 6)
    })
    .await;
    gone.store(true, Ordering::SeqCst);
    gate.add_permits(10);
    let v = verdicts(&mut rx, 9).await;
    let requeued: Vec<usize> = (0..9).filter(|&i| v[i] == Verdict::Requeue).collect();
    assert_eq!(requeued, [4, 6, 7, 8], "{v:?}");
    let seen: Vec<Vec<u64>> = c
        .batches
        .lock()
        .unwrap()
        .iter()
        .map(|b| b.0.clone())
        .collect();
    assert_eq!(seen, [vec![0, 1, 2], vec![3, 5]], "no empty batch");
    assert_eq!(
        r.dispatcher
            .consumer_status("batch")
            .unwrap()
            .0
            .outcomes
            .dropped,
        4
    );
}

/// Records when each message started (tokio's clock).
#[derive(Default)]
struct Clocked(std::sync::Mutex<Vec<(u64, tokio::time::Instant)>>);

#[async_trait::async_trait]
impl Consumer for Clocked {
    async fn consume(
        &self,
        _cx: &Context,
        msg: &hub_core::Message,
    ) -> Result<(), hub_core::ConsumeError> {
        let i = msg.body()["i"].as_u64().unwrap_or(u64::MAX);
        self.0
            .lock()
            .unwrap()
            .push((i, tokio::time::Instant::now()));
        Ok(())
    }
}

/// A withdrawn copy spends no rate-limit token: the token its worker took for it goes to the
/// next message (after a channel closed, a rate-limited consumer would otherwise sit out one
/// interval per dropped copy: 400 ms here before message 5).
#[tokio::test(start_paused = true)]
async fn a_withdrawn_copy_spends_no_rate_limit_token() {
    let c = Arc::new(Clocked::default());
    let options = ConsumerOptions {
        rate_limit: Some(hub_core::RateLimit {
            rate: 10,
            per: Duration::from_secs(1),
            burst: 1,
        }),
        ..ConsumerOptions::default()
    };
    let r = super::rig_of(vec![(
        "limited",
        &["#"][..],
        options,
        Arc::clone(&c) as Arc<dyn Consumer>,
    )]);
    let (list, gone, mut rx) = deliveries(6, |i| (1..=4).contains(&i));
    gone.store(true, Ordering::SeqCst);
    let t0 = tokio::time::Instant::now();
    r.intake.deliver_many(list).await.unwrap();
    let v = verdicts(&mut rx, 6).await;
    assert_eq!(v.iter().filter(|v| **v == Verdict::Requeue).count(), 4);
    let started: Vec<(u64, Duration)> =
        c.0.lock()
            .unwrap()
            .iter()
            .map(|(i, at)| (*i, at.duration_since(t0)))
            .collect();
    assert_eq!(
        started,
        [(0, Duration::ZERO), (5, Duration::from_millis(100))],
        "one interval between the two that ran"
    );
}
