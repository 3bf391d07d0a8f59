//! `hub_consumer_catch_up_seconds` through the real dispatcher on tokio's paused clock, so every
//! service time and stall is exact: steady, warm-up, concurrency, stuck after slow, stuck after
//! fast, recovery.

use super::*;

/// Sleeps `ms` from the body; a body with `"wait": true` waits for a permit of `release` first.
struct Paced {
    release: Arc<Semaphore>,
}

#[async_trait]
impl Consumer for Paced {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        if msg.body().get("wait").is_some() {
            self.release.acquire().await.expect("open").forget();
        }
        let ms = msg.body().get("ms").and_then(Value::as_u64).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

fn paced(concurrency: usize) -> (Rig, Arc<Semaphore>) {
    let release = Arc::new(Semaphore::new(0));
    let r = rig_of(vec![(
        "c",
        &["#"],
        opts(|o| o.concurrency = concurrency),
        Arc::new(Paced {
            release: Arc::clone(&release),
        }),
    )]);
    (r, release)
}

async fn send(r: &Rig, body: Value, times: usize) {
    for _ in 0..times {
        r.intake
            .deliver(Delivery::new(Message::new("t", body.clone())))
            .await
            .unwrap();
    }
}

/// The consumer's state at `t0 + ms` (the paused clock jumps there).
async fn at(r: &Rig, t0: Instant, ms: u64) -> ConsumerState {
    tokio::time::sleep_until(t0 + Duration::from_millis(ms)).await;
    state(&r.dispatcher, "c")
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn catch_up_is_right_from_the_first_completion_and_steady() {
    let (r, _) = paced(1);
    let t0 = Instant::now();
    send(&r, json!({"ms": 500}), 20).await;
    // Warm-up: one message finished (at 0.5 s); 18 wait at 0.5 s each.
    let s = at(&r, t0, 750).await;
    assert_eq!((s.completed, s.backlog, s.in_flight), (1, 18, 1));
    assert_eq!(s.catch_up_seconds, 9.0);
    // Steady.
    let s = at(&r, t0, 5_250).await;
    assert_eq!((s.completed, s.backlog), (10, 9));
    assert_eq!(s.catch_up_seconds, 4.5);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn catch_up_counts_every_worker() {
    let (r, _) = paced(4);
    let t0 = Instant::now();
    send(&r, json!({"ms": 1000}), 20).await;
    // 8 done, 4 in hand, 8 queued: two more rounds of four.
    let s = at(&r, t0, 2_500).await;
    assert_eq!((s.completed, s.in_flight, s.backlog), (8, 4, 8));
    assert_eq!(s.catch_up_seconds, 2.0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn stuck_after_slow_is_infinite_after_three_service_times_and_stays_so() {
    let (r, release) = paced(1);
    let t0 = Instant::now();
    // 0.5 msg/s, then a message that does not finish, with three behind it.
    send(&r, json!({"ms": 2000}), 3).await;
    send(&r, json!({"wait": true}), 1).await;
    send(&r, json!({"ms": 2000}), 3).await;
    // The fourth message started at 6 s. Stuck means no completion for 3 × 2 s.
    let s = at(&r, t0, 6_000 + 5_900).await;
    assert_eq!((s.completed, s.backlog), (3, 3));
    assert_eq!(s.catch_up_seconds, 6.0);
    let s = at(&r, t0, 6_000 + 6_100).await;
    assert_eq!(s.catch_up_seconds, f64::INFINITY);
    // Sampled every second as the hub does: it stays +Inf, it never decays back to a figure.
    for second in 13..=200 {
        let s = at(&r, t0, second * 1000).await;
        assert_eq!(s.catch_up_seconds, f64::INFINITY, "at {second} s");
    }
    // Recovery: the stuck message finishes; the figure is finite again at once.
    release.add_permits(1);
    let s = at(&r, t0, 200_100).await;
    assert_eq!((s.completed, s.backlog), (4, 2));
    assert!(s.catch_up_seconds.is_finite() && s.catch_up_seconds > 0.0);
    let s = at(&r, t0, 200_000 + 6_100).await;
    assert_eq!((s.completed, s.backlog, s.catch_up_seconds), (7, 0, 0.0));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn stuck_after_fast_is_infinite_after_a_second_and_stays_so() {
    let (r, release) = paced(1);
    let t0 = Instant::now();
    send(&r, json!({"ms": 10}), 100).await;
    send(&r, json!({"wait": true}), 1).await;
    send(&r, json!({"ms": 10}), 5).await;
    let s = at(&r, t0, 1_000 + 900).await;
    assert_eq!((s.completed, s.backlog), (100, 5));
    assert!(
        (s.catch_up_seconds - 0.05).abs() < 1e-9,
        "{}",
        s.catch_up_seconds
    );
    let s = at(&r, t0, 1_000 + 1_100).await;
    assert_eq!(s.catch_up_seconds, f64::INFINITY);
    for second in 3..=200 {
        let s = at(&r, t0, second * 1000).await;
        assert_eq!(s.catch_up_seconds, f64::INFINITY, "at {second} s");
    }
    release.add_permits(1);
    let s = at(&r, t0, 200_001).await;
    assert!(s.catch_up_seconds.is_finite(), "{}", s.catch_up_seconds);
}
