//! Queues bounded in bytes: a consumer's `queue_max_bytes` and the hub-wide `max_queued_bytes`,
//! with the bytes gauges.

use std::time::Duration;

use serde_json::json;

use super::super::*;
use super::{Probe, Rig, gated_probe, opts, rig_with_ceiling, sample, state, wait_for};
use hub_core::{Delivery, Message, WhenFull};

/// About a kilobyte.
fn big(i: u64) -> Message {
    Message::new("org.test.big", json!({ "i": i, "pad": "x".repeat(1000) }))
}

fn gauge(r: &Rig, name: &str, consumer: Option<&str>) -> f64 {
    let labels: Vec<(&str, &str)> = consumer.map(|c| ("consumer", c)).into_iter().collect();
    sample(&r.render(), name, &labels).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_max_bytes_makes_a_queue_full_before_its_capacity() {
    let size = big(0).byte_size();
    let (probe, gate) = gated_probe();
    let r = rig_with_ceiling(
        vec![(
            "gated",
            &["#"],
            opts(|o| {
                o.queue_capacity = 100;
                o.queue_max_bytes = Some(3 * size + size / 2);
                o.when_full = WhenFull::DropNewest;
            }),
            Arc::clone(&probe) as Arc<dyn Consumer>,
        )],
        false,
        None,
    );
    r.intake.deliver(Delivery::new(big(0))).await.unwrap();
    wait_for("first in flight", || {
        state(&r.dispatcher, "gated").in_flight == 1
    })
    .await;
    for i in 1..=9 {
        r.intake.deliver(Delivery::new(big(i))).await.unwrap();
    }
    let st = state(&r.dispatcher, "gated");
    assert_eq!((st.backlog, st.backlog_bytes), (3, 3 * size));
    assert_eq!(
        gauge(&r, "hub_consumer_backlog_bytes", Some("gated")),
        (3 * size) as f64
    );
    assert_eq!(
        gauge(&r, "hub_dispatcher_queued_bytes", None),
        (3 * size) as f64
    );
    let text = r.render();
    assert_eq!(
        sample(
            &text,
            "hub_consumer_dropped_messages_total",
            &[("consumer", "gated"), ("reason", "queue_full")]
        ),
        Some(6.0)
    );
    gate.add_permits(100);
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
    assert_eq!(*probe.seen.lock().unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(gauge(&r, "hub_dispatcher_queued_bytes", None), 0.0);
    assert_eq!(gauge(&r, "hub_consumer_backlog_bytes", Some("gated")), 0.0);
}

/// A message larger than the byte limit still gets through an empty queue (one at a time):
/// a limit never wedges a consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_byte_limit_passes_an_empty_queue() {
    let probe = Arc::new(Probe::default());
    let r = rig_with_ceiling(
        vec![(
            "small",
            &["#"],
            opts(|o| o.queue_max_bytes = Some(10)),
            Arc::clone(&probe) as Arc<dyn Consumer>,
        )],
        false,
        Some(10),
    );
    for i in 0..20 {
        tokio::time::timeout(
            Duration::from_secs(5),
            r.intake.deliver(Delivery::new(big(i))),
        )
        .await
        .expect("never wedged")
        .unwrap();
    }
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
    assert_eq!(*probe.seen.lock().unwrap(), (0..20).collect::<Vec<_>>());
}

/// The hub-wide ceiling over every queue: two stuck consumers together never hold more than
/// `max_queued_bytes` queued (their own limits are far above it); what does not fit follows
/// each consumer's `when_full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_wide_ceiling_holds_over_every_queue() {
    let size = big(0).byte_size();
    let ceiling = 5 * size;
    let (a, gate_a) = gated_probe();
    let (b, gate_b) = gated_probe();
    let drop_newest = || {
        opts(|o| {
            o.queue_capacity = 1000;
            o.when_full = WhenFull::DropNewest;
        })
    };
    let r = rig_with_ceiling(
        vec![
            (
                "a",
                &["#"],
                drop_newest(),
                Arc::clone(&a) as Arc<dyn Consumer>,
            ),
            (
                "b",
                &["#"],
                drop_newest(),
                Arc::clone(&b) as Arc<dyn Consumer>,
            ),
        ],
        false,
        Some(ceiling),
    );
    for i in 0..50 {
        r.intake.deliver(Delivery::new(big(i))).await.unwrap();
        let queued = gauge(&r, "hub_dispatcher_queued_bytes", None);
        assert!(queued <= ceiling as f64, "{queued} > {ceiling} after {i}");
    }
    let (sa, sb) = (state(&r.dispatcher, "a"), state(&r.dispatcher, "b"));
    assert!(sa.backlog_bytes + sb.backlog_bytes <= ceiling);
    assert!(sa.backlog >= 1 && sb.backlog >= 1, "{sa:?} {sb:?}");
    gate_a.add_permits(1000);
    gate_b.add_permits(1000);
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
    assert_eq!(gauge(&r, "hub_dispatcher_queued_bytes", None), 0.0);
}

/// Under `block`, a consumer whose queue counts as full only because the ceiling is reached
/// (another consumer is stuck holding the bytes) still gets every message: each enters once
/// its queue is empty. Nothing deadlocks and nothing of its is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_consumer_goes_on_while_a_stuck_one_holds_the_ceiling() {
    let size = big(0).byte_size();
    let (stuck, gate) = gated_probe();
    let free = Arc::new(Probe::default());
    let r = rig_with_ceiling(
        vec![
            (
                "stuck",
                &["#"],
                opts(|o| {
                    o.queue_capacity = 1000;
                    o.when_full = WhenFull::DropOldest;
                }),
                Arc::clone(&stuck) as Arc<dyn Consumer>,
            ),
            (
                "free",
                &["#"],
                ConsumerOptions::default(),
                Arc::clone(&free) as Arc<dyn Consumer>,
            ),
        ],
        false,
        Some(3 * size),
    );
    for i in 0..200 {
        tokio::time::timeout(
            Duration::from_secs(5),
            r.intake.deliver(Delivery::new(big(i))),
        )
        .await
        .expect("the block consumer never wedges")
        .unwrap();
    }
    wait_for("the free consumer got everything", || {
        free.seen.lock().unwrap().len() == 200
    })
    .await;
    assert_eq!(*free.seen.lock().unwrap(), (0..200).collect::<Vec<_>>());
    gate.add_permits(10_000);
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
}
