//! Pause and resume, the status (outcomes, last error, run state) and the bounded history.

use std::time::Duration;

use serde_json::json;

use super::super::*;
use super::{Probe, msg, opts, rig, rig_with, state, wait_for};
use crate::metrics::sample;
use hub_core::{Delivery, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_takes_nothing_its_queue_fills_and_resume_goes_on_in_order() {
    let paused = Arc::new(Probe::default());
    let other = Arc::new(Probe::default());
    let r = rig(vec![
        (
            "paused",
            &["#"],
            ConsumerOptions::default(),
            Arc::clone(&paused),
        ),
        (
            "other",
            &["#"],
            ConsumerOptions::default(),
            Arc::clone(&other),
        ),
    ]);
    r.intake
        .deliver_many((0..5).map(|i| Delivery::new(msg(i))))
        .await
        .unwrap();
    wait_for("the first five", || paused.seen.lock().unwrap().len() == 5).await;
    assert_eq!(r.dispatcher.pause("paused"), Ok(true));
    assert_eq!(r.dispatcher.pause("paused"), Ok(false), "already paused");
    assert!(r.dispatcher.pause("nobody").is_err());
    r.intake
        .deliver_many((5..20).map(|i| Delivery::new(msg(i))))
        .await
        .unwrap();
    wait_for("the other consumer goes on", || {
        other.seen.lock().unwrap().len() == 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        paused.seen.lock().unwrap().len(),
        5,
        "nothing taken while paused"
    );
    let s = state(&r.dispatcher, "paused");
    assert!(s.paused);
    assert_eq!((s.backlog, s.in_flight), (15, 0));
    let text = r.render();
    assert_eq!(
        sample(&text, r#"hub_consumer_paused{consumer="paused"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"hub_consumer_paused{consumer="other"}"#),
        Some(0.0)
    );
    let status = r.dispatcher.status();
    assert_eq!(status[0].run, RunState::Paused);
    assert_eq!(status[1].run, RunState::Running);
    assert_eq!(r.dispatcher.resume("paused"), Ok(true));
    wait_for("resumed", || paused.seen.lock().unwrap().len() == 20).await;
    assert_eq!(
        *paused.seen.lock().unwrap(),
        (0..20).collect::<Vec<_>>(),
        "where it stopped, in order"
    );
    assert_eq!(
        sample(&r.render(), r#"hub_consumer_paused{consumer="paused"}"#),
        Some(0.0)
    );
}

/// A paused consumer is drained at shutdown all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_paused_consumer() {
    let probe = Arc::new(Probe::default());
    let r = rig(vec![(
        "c",
        &["#"],
        ConsumerOptions::default(),
        Arc::clone(&probe),
    )]);
    r.dispatcher.pause("c").unwrap();
    r.intake
        .deliver_many((0..10).map(|i| Delivery::new(msg(i))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(probe.seen.lock().unwrap().is_empty());
    assert!(r.dispatcher.drain(Duration::from_secs(5)).await.is_clean());
    assert_eq!(probe.seen.lock().unwrap().len(), 10);
}

/// Batch consumers pause too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_batch_consumer_takes_no_batch() {
    let probe = Arc::new(Probe::default());
    let r = rig(vec![(
        "b",
        &["#"],
        opts(|o| {
            o.batch_size = 5;
        }),
        Arc::clone(&probe),
    )]);
    r.dispatcher.pause("b").unwrap();
    r.intake
        .deliver_many((0..10).map(|i| Delivery::new(msg(i))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(probe.seen.lock().unwrap().is_empty());
    assert_eq!(state(&r.dispatcher, "b").backlog, 10);
    r.dispatcher.resume("b").unwrap();
    wait_for("resumed", || probe.seen.lock().unwrap().len() == 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_outcomes_and_keeps_the_last_error() {
    let probe = Arc::new(Probe::default());
    let r = rig_with(
        vec![(
            "c",
            &["#"][..],
            ConsumerOptions::default(),
            Arc::clone(&probe) as Arc<dyn Consumer>,
        )],
        false,
    );
    let bad = Message::builder("t", json!({"i": 1, "do": "invalid"}))
        .id("bad-1")
        .build();
    r.intake.deliver(Delivery::new(msg(0))).await.unwrap();
    r.intake.deliver(Delivery::new(bad)).await.unwrap();
    r.intake.deliver(Delivery::new(msg(2))).await.unwrap();
    wait_for("three finished", || {
        state(&r.dispatcher, "c").completed == 3
    })
    .await;
    let (status, history) = r.dispatcher.consumer_status("c").unwrap();
    assert_eq!(status.outcomes.received, 3);
    assert_eq!(status.outcomes.ok, 2);
    assert_eq!(status.outcomes.invalid, 1);
    assert_eq!(status.outcomes.dead_lettered, 1);
    let e = status.last_error.unwrap();
    assert_eq!(e.message_id, "bad-1");
    assert!(e.reason.contains("no such build"), "{}", e.reason);
    assert!(history.fine.is_empty(), "no sample yet");
    r.dispatcher.record_history();
    tokio::time::sleep(Duration::from_millis(20)).await;
    r.intake.deliver(Delivery::new(msg(3))).await.unwrap();
    wait_for("four finished", || state(&r.dispatcher, "c").completed == 4).await;
    r.dispatcher.record_history();
    let (status, history) = r.dispatcher.consumer_status("c").unwrap();
    assert_eq!(history.fine.len(), 2);
    assert!(history.fine[1].in_per_s > 0.0 && history.fine[1].out_per_s > 0.0);
    assert!(status.out_per_s > 0.0);
    assert!(r.dispatcher.consumer_status("nobody").is_err());
}

/// Three simulated hours of samples: the history holds at most 10 minutes at 1 s and an hour
/// at 10 s, the coarse samples being maxima and means of ten fine ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stays_bounded_over_a_long_run() {
    let probe = Arc::new(Probe::default());
    let r = rig(vec![(
        "c",
        &["#"],
        ConsumerOptions::default(),
        Arc::clone(&probe),
    )]);
    for _ in 0..3 * 3600 {
        r.dispatcher.record_history();
    }
    assert_eq!(
        r.dispatcher.history_len("c"),
        FINE_SAMPLES + COARSE_SAMPLES,
        "bounded"
    );
    let (_, h) = r.dispatcher.consumer_status("c").unwrap();
    assert_eq!(h.fine.len(), FINE_SAMPLES);
    assert_eq!(h.coarse.len(), COARSE_SAMPLES);
}

/// The run state: `failing` while failures come and no success, `throttled` while the rate
/// limit holds messages back, `running` again once they pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_states_follow_failures_and_the_rate_limit() {
    let probe = Arc::new(Probe::default());
    let r = rig_with(
        vec![
            (
                "failing",
                &["fail.#"][..],
                opts(|o| {
                    o.retry = Some(hub_core::RetryPolicy {
                        max_attempts: 1000,
                        delay: Duration::from_millis(5),
                        max_delay: Duration::from_millis(10),
                        in_order: false,
                    });
                }),
                Arc::clone(&probe) as Arc<dyn Consumer>,
            ),
            (
                "limited",
                &["slow.#"][..],
                opts(|o| {
                    o.rate_limit = Some(hub_core::RateLimit {
                        rate: 5,
                        per: Duration::from_secs(1),
                        burst: 1,
                    });
                }),
                Arc::clone(&probe) as Arc<dyn Consumer>,
            ),
        ],
        false,
    );
    r.dispatcher.record_history();
    r.intake
        .deliver(Delivery::new(Message::new(
            "fail.x",
            json!({"i": 1, "do": "fail"}),
        )))
        .await
        .unwrap();
    r.intake
        .deliver_many((0..20).map(|i| Delivery::new(Message::new("slow.x", json!({"i": i})))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.dispatcher.record_history();
    let run = |name: &str| {
        r.dispatcher
            .status()
            .into_iter()
            .find(|s| s.state.name == name)
            .unwrap()
            .run
    };
    assert_eq!(run("failing"), RunState::Failing);
    assert_eq!(run("limited"), RunState::Throttled);
    let last = r
        .dispatcher
        .consumer_status("failing")
        .unwrap()
        .0
        .last_error
        .unwrap();
    assert!(last.reason.contains("database down"), "{}", last.reason);
}
