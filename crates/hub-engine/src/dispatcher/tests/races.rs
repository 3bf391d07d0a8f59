//! Races and faults: blocked producers, cancelled hand-overs, scrapes under load, panics outside
//! the consumer's future, queue waits beside a blocked neighbour.

use std::future::Future;
use std::pin::Pin;

use super::*;

/// The number of producers registered as blocked on a consumer's queue.
fn blocked(r: &Rig, consumer: usize) -> usize {
    r.dispatcher.shared.slots[consumer]
        .queue
        .blocked_producers()
}

/// Two producers blocked on a full `block` queue, then two messages taken before either of them
/// runs: both must be woken (one wake-up per pop), not only the first.
async fn two_blocked_producers_round() {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(Arc::clone(&gate)),
        ..Probe::default()
    });
    let r = rig(vec![(
        "tight",
        &["#"],
        opts(|o| o.queue_capacity = 2),
        Arc::clone(&probe),
    )]);
    r.intake.deliver(Delivery::new(msg(0))).await.unwrap();
    wait_for("one in flight", || {
        state(&r.dispatcher, "tight").in_flight == 1
    })
    .await;
    for i in 1..=2 {
        r.intake.deliver(Delivery::new(msg(i))).await.unwrap();
    }
    let producers: Vec<_> = (3..=4)
        .map(|i| {
            let intake = r.intake.clone();
            tokio::spawn(async move { intake.deliver(Delivery::new(msg(i))).await })
        })
        .collect();
    wait_for("both producers blocked", || blocked(&r, 0) == 2).await;
    // Two messages finish and two are taken: room for both producers.
    gate.add_permits(2);
    for p in producers {
        tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("a blocked producer was never woken while the queue had room")
            .unwrap()
            .unwrap();
    }
    gate.add_permits(10);
    wait_for("all five handled", || probe.seen.lock().unwrap().len() == 5).await;
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
}

#[tokio::test(flavor = "current_thread")]
async fn two_blocked_producers_are_both_woken_on_one_thread() {
    for _ in 0..100 {
        two_blocked_producers_round().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_blocked_producers_are_both_woken_on_two_threads() {
    for _ in 0..100 {
        two_blocked_producers_round().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_producers_through_a_tiny_block_queue_all_get_through() {
    const PRODUCERS: u64 = 4;
    const EACH: u64 = 10_000;
    for _ in 0..3 {
        let probe = Arc::new(Probe::default());
        let r = rig(vec![(
            "tiny",
            &["#"],
            opts(|o| o.queue_capacity = 2),
            Arc::clone(&probe),
        )]);
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let intake = r.intake.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        intake
                            .deliver(Delivery::new(msg(p * EACH + i)))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            tokio::time::timeout(Duration::from_secs(60), p)
                .await
                .expect("a producer was stranded on a queue with room")
                .unwrap();
        }
        wait_for("everything handled", || {
            probe.seen.lock().unwrap().len() as u64 == PRODUCERS * EACH
        })
        .await;
    }
}

/// Two consumers of everything: "full" (gated, a queue of one, holding message 0 in flight
/// and 1 queued) and "free"; returns the rig, "full", its gate and "free". "full" is matched
/// first, so the next delivery waits on it with "free"'s copy queued already.
async fn full_and_free() -> (Rig, Arc<Probe>, Arc<Semaphore>, Arc<Probe>) {
    let (full, gate) = gated_probe();
    let free = Arc::new(Probe::default());
    let r = rig(vec![
        (
            "full",
            &["#"],
            opts(|o| o.queue_capacity = 1),
            Arc::clone(&full),
        ),
        (
            "free",
            &["#"],
            ConsumerOptions::default(),
            Arc::clone(&free),
        ),
    ]);
    r.intake.deliver(Delivery::new(msg(0))).await.unwrap();
    wait_for("in flight", || state(&r.dispatcher, "full").in_flight == 1).await;
    r.intake.deliver(Delivery::new(msg(1))).await.unwrap();
    (r, full, gate, free)
}

/// The verdict a delivery's acker was given (waited for up to 10 s).
async fn verdict_of(rx: oneshot::Receiver<Verdict>) -> Verdict {
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the delivery was never settled")
        .expect("the acker was dropped without being called")
}

/// A delivery whose wait for room is dropped (its producer stopped at shutdown) after another
/// consumer got its copy: the waiting copy is queued past the full queue's limit, so every
/// consumer handles it and it settles once, acknowledged (it used to settle as a requeue, which
/// on a backend without redelivery meant one consumer never saw what the other did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_delivery_still_reaches_and_settles_with_every_consumer() {
    let (r, full, gate, free) = full_and_free().await;
    let (a, rx) = acker();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        r.intake.deliver(Delivery::with_acker(msg(2), a)),
    )
    .await;
    assert!(cancelled.is_err(), "the delivery waited for room");
    gate.add_permits(10);
    let verdict = verdict_of(rx).await;
    assert_eq!(verdict, Verdict::Ack, "both consumers handled it");
    wait_for("both handled all three", || {
        free.seen.lock().unwrap().len() == 3 && full.seen.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(*full.seen.lock().unwrap(), vec![0, 1, 2]);
}

/// A delivery waiting for room when the shutdown drain closes the queue, after another consumer
/// got its copy: the waiting copy still enters (past the limit), the drain runs it, and the
/// delivery settles once, acknowledged. It used to be refused (the deliverer saw
/// `IntakeClosed`), so on a backend without redelivery the full consumer never saw the message
/// the other one handled: the last tick of the SIGTERM fault test, missing from one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_waiting_for_room_when_the_drain_closes_reaches_every_consumer() {
    let (r, full, gate, free) = full_and_free().await;
    let (a, rx) = acker();
    let intake = r.intake.clone();
    let waiting =
        tokio::spawn(async move { intake.deliver(Delivery::with_acker(msg(2), a)).await });
    wait_for("the delivery waits for room", || blocked(&r, 0) == 1).await;
    wait_for("the free consumer handled its copy", || {
        free.seen.lock().unwrap().contains(&2)
    })
    .await;
    let dispatcher = r.dispatcher.clone();
    let drain = tokio::spawn(async move { dispatcher.drain(Duration::from_secs(10)).await });
    let delivered = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the close ended the wait")
        .unwrap();
    assert_eq!(delivered, Ok(()), "the delivery was taken whole");
    gate.add_permits(10);
    let report = drain.await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(*full.seen.lock().unwrap(), vec![0, 1, 2]);
    let verdict = verdict_of(rx).await;
    assert_eq!(verdict, Verdict::Ack, "both consumers handled it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scrape_adds_up_and_never_shows_more_in_flight_than_the_concurrency() {
    const N: u64 = 100_000;
    let probe = Arc::new(Probe::default());
    let r = rig(vec![(
        "busy",
        &["#"],
        opts(|o| {
            o.concurrency = 2;
            o.queue_capacity = 64;
        }),
        Arc::clone(&probe),
    )]);
    let intake = r.intake.clone();
    let producer = tokio::spawn(async move {
        for i in 0..N {
            intake.deliver(Delivery::new(msg(i))).await.unwrap();
        }
    });
    let slot = &r.dispatcher.shared.slots[0];
    let mut scrapes = 0u64;
    let mut busy_scrapes = 0u64;
    while !producer.is_finished() || (probe.seen.lock().unwrap().len() as u64) < N {
        let c = slot.counts();
        let processed = c.totals.completed();
        assert!(
            c.in_flight <= 2,
            "in flight {} > concurrency 2",
            c.in_flight
        );
        assert_eq!(
            c.queue.received,
            processed + c.queue.dropped + c.shutdown_dropped + c.queue.len as u64 + c.in_flight,
            "received = processed + dropped + backlog + in flight, scrape {scrapes}"
        );
        scrapes += 1;
        busy_scrapes += u64::from(c.in_flight > 0 || c.queue.len > 0);
        if scrapes.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    assert!(busy_scrapes > 100, "scrapes saw the load: {busy_scrapes}");
    // The probe notes a message while consuming it: the last one leaves "in flight" a moment
    // after it is seen (CI caught a scrape in that moment).
    wait_for("the last message settled", || slot.counts().in_flight == 0).await;
    let text = r.render();
    let get = |name: &str| sample(&text, name, &[("consumer", "busy")]).unwrap();
    assert_eq!(get("hub_consumer_received_messages_total"), N as f64);
    assert_eq!(get("hub_consumer_in_flight_messages"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_acker_is_caught_and_counted_and_the_worker_goes_on() {
    let probe = Arc::new(Probe::default());
    let r = rig(vec![(
        "p",
        &["#"],
        ConsumerOptions::default(),
        Arc::clone(&probe),
    )]);
    let bad: Box<dyn hub_core::Acker> = Box::new(|_: Verdict| panic!("acker bug"));
    r.intake
        .deliver(Delivery::with_acker(msg(0), bad))
        .await
        .unwrap();
    for i in 1..=10 {
        let (a, rx) = acker();
        r.intake
            .deliver(Delivery::with_acker(msg(i), a))
            .await
            .unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .expect("the worker died with the acker")
                .unwrap(),
            Verdict::Ack
        );
    }
    let text = r.render();
    assert_eq!(
        sample(
            &text,
            "hub_backend_settle_panics_total",
            &[("backend", "mem")]
        ),
        Some(1.0)
    );
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
}

/// A consumer written without `async_trait`: its `consume` panics before it returns a future.
struct HandWritten {
    seen: Arc<Mutex<Vec<u64>>>,
}

impl Consumer for HandWritten {
    fn consume<'a, 'b, 'c, 'f>(
        &'a self,
        _cx: &'b Context,
        msg: &'c Message,
    ) -> Pin<Box<dyn Future<Output = Result<(), ConsumeError>> + Send + 'f>>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        let i = msg.body()["i"].as_u64().unwrap();
        assert!(i != 1, "hand-written consume panics before its future");
        Box::pin(async move {
            self.seen.lock().unwrap().push(i);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_that_panics_before_returning_its_future_is_caught() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let r = rig_of(vec![(
        "hand",
        &["#"],
        ConsumerOptions::default(),
        Arc::new(HandWritten {
            seen: Arc::clone(&seen),
        }),
    )]);
    let mut verdicts = Vec::new();
    for i in 0..5 {
        let (a, rx) = acker();
        r.intake
            .deliver(Delivery::with_acker(msg(i), a))
            .await
            .unwrap();
        verdicts.push(rx);
    }
    let mut got = Vec::new();
    for rx in verdicts {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .expect("the worker died with the consumer")
                .unwrap(),
        );
    }
    assert!(
        matches!(&got[1], Verdict::Retry { reason, .. } if reason.contains("panicked: hand-written consume panics")),
        "{got:?}"
    );
    assert_eq!(got.iter().filter(|v| **v == Verdict::Ack).count(), 4);
    assert_eq!(*seen.lock().unwrap(), vec![0, 2, 3, 4]);
    let text = r.render();
    let outcome = |o: &str| {
        sample(
            &text,
            "hub_consumer_processed_messages_total",
            &[("consumer", "hand"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("panic"), Some(1.0));
    assert_eq!(outcome("ok"), Some(4.0));
    assert_eq!(
        r.dispatcher.drain(Duration::from_secs(5)).await,
        DrainReport::default()
    );
}

/// The `_sum` of a consumer's histogram, in seconds.
fn histogram_sum(text: &str, name: &str, consumer: &str) -> f64 {
    sample(text, &format!("{name}_sum"), &[("consumer", consumer)]).unwrap()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn queue_wait_is_the_time_spent_in_the_consumers_own_queue() {
    let gate = Arc::new(Semaphore::new(0));
    let gated = Arc::new(Probe {
        gate: Some(Arc::clone(&gate)),
        ..Probe::default()
    });
    let free = Arc::new(Probe::default());
    let r = rig(vec![
        (
            "gated",
            &["#"],
            opts(|o| o.queue_capacity = 1),
            Arc::clone(&gated),
        ),
        (
            "free",
            &["#"],
            ConsumerOptions::default(),
            Arc::clone(&free),
        ),
    ]);
    r.intake.deliver(Delivery::new(msg(0))).await.unwrap();
    wait_for("in flight", || state(&r.dispatcher, "gated").in_flight == 1).await;
    let t0 = Instant::now();
    r.intake.deliver(Delivery::new(msg(1))).await.unwrap();
    // Blocks on "gated" for 400 ms; "free" must not see that time as its queue wait.
    let intake = r.intake.clone();
    let blocked = tokio::spawn(async move { intake.deliver(Delivery::new(msg(2))).await });
    tokio::time::sleep_until(t0 + Duration::from_millis(400)).await;
    gate.add_permits(3);
    blocked.await.unwrap().unwrap();
    wait_for("all handled", || {
        free.seen.lock().unwrap().len() == 3 && gated.seen.lock().unwrap().len() == 3
    })
    .await;
    let text = r.render();
    let free_wait = histogram_sum(&text, "hub_consumer_queue_wait_seconds", "free");
    assert!(free_wait < 0.001, "free never had a backlog: {free_wait}");
    // gated: message 1 waited 400 ms in its queue; message 2 entered only when there was room.
    let gated_wait = histogram_sum(&text, "hub_consumer_queue_wait_seconds", "gated");
    assert!(
        (0.399..0.41).contains(&gated_wait),
        "gated's own queue wait: {gated_wait}"
    );
}
