//! At-least-once against the real RabbitMQ: confirms attributed to their own publish, dead
//! letters per hub and held (never spun) while they cannot be published, retries that keep
//! their topic and do not hold up the others, acknowledgements at shutdown, cut-off messages
//! given back once.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use hub_core::{ConsumeError, Consumer, ConsumerOptions, Context, Message, async_trait};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

/// Tests that measure the process's CPU time take it exclusively; the others share it.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// One call of [`Scripted`]'s consume.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    topic: String,
    attempt: u64,
    redelivered: bool,
}

/// Does what each message's body says: `{"fail": k}` fails its first k deliveries (transient),
/// `{"reject": true}` is invalid, `{"sleep_ms": n}` takes n ms; records every call.
#[derive(Default)]
struct Script {
    calls: Mutex<Vec<Call>>,
    failed: Mutex<HashMap<String, u64>>,
}

struct Scripted(Arc<Script>);

#[async_trait]
impl Consumer for Scripted {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let s = &self.0;
        s.calls.lock().unwrap().push(Call {
            id: msg.id().to_owned(),
            topic: msg.topic().to_owned(),
            attempt: msg
                .header("x-hub-attempts")
                .and_then(Value::as_u64)
                .unwrap_or(1),
            redelivered: msg.header("x-hub-redelivered") == Some(&json!(true)),
        });
        let body = msg.body();
        if let Some(ms) = body.get("sleep_ms").and_then(Value::as_u64) {
            sleep(Duration::from_millis(ms)).await;
        }
        if body.get("reject").is_some() {
            return Err(ConsumeError::invalid("rejected by the script"));
        }
        if let Some(k) = body.get("fail").and_then(Value::as_u64) {
            let mut failed = s.failed.lock().unwrap();
            let n = failed.entry(msg.id().to_owned()).or_default();
            if *n < k {
                *n += 1;
                return Err(ConsumeError::transient("failing as scripted"));
            }
        }
        Ok(())
    }
}

impl Script {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

fn scripted() -> (Arc<Script>, Arc<dyn Consumer>) {
    let s = Arc::new(Script::default());
    (Arc::clone(&s), Arc::new(Scripted(s)))
}

fn durable(f: impl FnOnce(&mut ConsumerOptions)) -> ConsumerOptions {
    let mut o = ConsumerOptions {
        durable: true,
        ..ConsumerOptions::default()
    };
    f(&mut o);
    o
}

/// A hub with one [`Scripted`] consumer, and a confirming channel of the test's own.
struct Rig {
    running: hub_engine::RunningEngine,
    backend: Arc<dyn hub_core::Backend>,
    script: Arc<Script>,
    conn: lapin::Connection,
    ch: Channel,
}

async fn rig(
    hub: &str,
    cfg: hub_amqp::AmqpConfig,
    name: &str,
    topic: &str,
    options: ConsumerOptions,
) -> Rig {
    let (script, consumer) = scripted();
    let (running, backend) = start_with(hub, cfg, vec![(name, &[topic], options, consumer)]).await;
    let (conn, ch) = publishing_channel().await;
    Rig {
        running,
        backend,
        script,
        conn,
        ch,
    }
}

/// A confirming channel on a connection of the test's own.
async fn publishing_channel() -> (lapin::Connection, Channel) {
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

/// Declares an exclusive queue bound to `amq.topic` with `key`.
async fn bound_sink(ch: &Channel, queue: &str, key: &str) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::exclusive(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.into(),
        "amq.topic".into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Publishes `body` on `topic` in fedora-messaging's shape, confirmed; returns its message id.
async fn publish(ch: &Channel, topic: &str, body: Value) -> String {
    publish_message(ch, &Message::new(topic, body)).await
}

/// [`publish`] of a whole message (its headers too).
async fn publish_message(ch: &Channel, msg: &Message) -> String {
    let topic = msg.topic();
    let (props, bytes) = hub_amqp::wire::encode(msg);
    let id = props.message_id().as_ref().unwrap().to_string();
    ch.basic_publish(
        "amq.topic".into(),
        topic.into(),
        BasicPublishOptions::default(),
        &bytes,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    id
}

/// Every message in `queue`, taken off it (headers as JSON).
async fn drain_queue(ch: &Channel, queue: &str) -> Vec<(Vec<u8>, serde_json::Map<String, Value>)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let headers = m
            .delivery
            .properties
            .headers()
            .as_ref()
            .map(hub_amqp::wire::table_to_json)
            .unwrap_or_default();
        out.push((m.delivery.data.clone(), headers));
    }
    out
}

/// Ready plus unacknowledged messages in a queue (`rabbitmqctl`), or `None` if it is gone.
/// The dead letters in `dlq`, drained, once there is at least one (10 s at most).
async fn dead_letters(ch: &Channel, dlq: &str) -> Vec<(Vec<u8>, serde_json::Map<String, Value>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dead = drain_queue(ch, dlq).await;
        if !dead.is_empty() {
            return dead;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        sleep(Duration::from_millis(100)).await;
    }
}

fn queue_depth(queue: &str) -> Option<u64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (name, n) = l.split_once(char::is_whitespace)?;
        (name == queue).then(|| n.trim().parse().ok())?
    })
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mandatory_publishes_each_get_their_own_answer() {
    let _shared = EXCLUSIVE.read().await;
    let u = uid();
    let (running, backend) = start_with(&format!("hub{u}"), fast_retries(), vec![]).await;
    let (conn, ch) = publishing_channel().await;
    bound_sink(&ch, &format!("sink{u}"), &format!("routed{u}")).await;
    let (mut wrong_ok, mut wrong_err) = (0, 0);
    for _round in 0..20 {
        let publishes = (0..50).map(|i| {
            let b = Arc::clone(&backend);
            let topic = if i % 2 == 0 {
                format!("routed{u}")
            } else {
                format!("nobody{u}.listens")
            };
            async move {
                let r = b.publish(&Message::new(topic, json!({"i": i}))).await;
                (i % 2 == 0, r)
            }
        });
        for (routable, result) in join_all(publishes).await {
            match (routable, result) {
                (true, Err(e)) => {
                    eprintln!("routable reported failed: {e}");
                    wrong_err += 1;
                }
                (false, Ok(())) => wrong_ok += 1,
                (false, Err(e)) => assert!(e.to_string().contains("unroutable"), "{e}"),
                (true, Ok(())) => {}
            }
        }
    }
    assert_eq!(
        (wrong_ok, wrong_err),
        (0, 0),
        "unroutable publishes reported OK, routable ones reported failed (of 500 each)"
    );
    running.shutdown(Duration::from_secs(5)).await;
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[format!("hub{u}.dead-letters")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hub_gets_its_own_dead_letters_and_none_of_another_hubs() {
    let _shared = EXCLUSIVE.read().await;
    let u = uid();
    let (a, b) = (format!("huba{u}"), format!("hubb{u}"));
    // A dead-letter queue of an earlier version, still bound to the shared fanout exchange.
    let (conn, ch) = publishing_channel().await;
    ch.exchange_declare(
        "hub.dead-letter".into(),
        ExchangeKind::Fanout,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        format!("{a}.dead-letters").as_str().into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        format!("{a}.dead-letters").as_str().into(),
        "hub.dead-letter".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (sa, ca) = scripted();
    let (sb, cb) = scripted();
    let (ta, tb) = (format!("ra{u}.x"), format!("rb{u}.x"));
    let (hub_a, _) = start_with(
        &a,
        fast_retries(),
        vec![("bad", &[ta.as_str()], ConsumerOptions::default(), ca)],
    )
    .await;
    let (hub_b, _) = start_with(
        &b,
        fast_retries(),
        vec![("bad", &[tb.as_str()], ConsumerOptions::default(), cb)],
    )
    .await;
    for i in 0..5 {
        publish(&ch, &ta, json!({"reject": true, "i": i})).await;
        publish(&ch, &tb, json!({"reject": true, "i": i})).await;
    }
    eventually("both hubs rejected theirs", || {
        sa.count() == 5 && sb.count() == 5
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_depth(&format!("{a}.dead-letters")) != Some(5)
        || queue_depth(&format!("{b}.dead-letters")) != Some(5)
    {
        assert!(Instant::now() < deadline, "dead letters did not arrive");
        sleep(Duration::from_millis(100)).await;
    }
    // An earlier version's hub publishing on the shared exchange no longer reaches hub A.
    ch.basic_publish(
        "hub.dead-letter".into(),
        "x".into(),
        BasicPublishOptions::default(),
        b"{}",
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    sleep(Duration::from_millis(300)).await;
    for (hub, topic) in [(&a, &ta), (&b, &tb)] {
        let dead = drain_queue(&ch, &format!("{hub}.dead-letters")).await;
        assert_eq!(dead.len(), 5, "{hub}: only its own five");
        for (_, h) in &dead {
            assert_eq!(h["x-hub-topic"], json!(topic), "{h:?}");
        }
    }
    hub_a.shutdown(Duration::from_secs(5)).await;
    hub_b.shutdown(Duration::from_secs(5)).await;
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[format!("{a}.dead-letters"), format!("{b}.dead-letters")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_keeps_its_topic_and_so_does_its_dead_letter() {
    let _shared = EXCLUSIVE.read().await;
    let u = uid();
    let hub = format!("hub{u}");
    let pattern = format!("k{u}.#");
    let Rig {
        running,
        script: s,
        conn,
        ch,
        ..
    } = rig(
        &hub,
        fast_retries(),
        "keeper",
        &pattern,
        ConsumerOptions::default(),
    )
    .await;
    let twice = publish(&ch, &format!("k{u}.build.done"), json!({"fail": 2})).await;
    let always = publish(&ch, &format!("k{u}.build.lost"), json!({"fail": 99})).await;
    // A publisher's own `x-hub-attempts` (a message another hub's consumer passed on as it
    // was) is not the hub's count: it starts at 1 (it used to start at 3, and be dead-lettered
    // at its first failure).
    let counted = publish_message(
        &ch,
        &Message::builder(format!("k{u}.build.passed"), json!({"fail": 2}))
            .header("x-hub-attempts", 3)
            .build(),
    )
    .await;
    eventually("three attempts of each", || s.count() == 9).await;
    let calls = s.calls();
    let of = |id: &str| -> Vec<(String, u64)> {
        calls
            .iter()
            .filter(|c| c.id == id)
            .map(|c| (c.topic.clone(), c.attempt))
            .collect()
    };
    let done = format!("k{u}.build.done");
    assert_eq!(
        of(&twice),
        vec![(done.clone(), 1), (done.clone(), 2), (done, 3)],
        "the same topic on every attempt"
    );
    let dlq = format!("{hub}.dead-letters");
    let dead = dead_letters(&ch, &dlq).await;
    assert_eq!(dead.len(), 1);
    let h = &dead[0].1;
    assert_eq!(h["x-hub-topic"], json!(format!("k{u}.build.lost")), "{h:?}");
    assert_eq!(h["x-hub-attempts"], json!(3));
    assert!(
        h["x-hub-reason"]
            .as_str()
            .unwrap()
            .contains("failing as scripted")
    );
    assert!(h.contains_key("x-hub-dead-lettered-at"), "{h:?}");
    assert_eq!(of(&always).len(), 3);
    let passed = format!("k{u}.build.passed");
    assert_eq!(
        of(&counted),
        vec![(passed.clone(), 1), (passed.clone(), 2), (passed, 3)],
        "a publisher's count is not the hub's"
    );
    running.shutdown(Duration::from_secs(5)).await;
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[dlq]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_wait_for_their_queue_without_spinning_or_being_acked_away() {
    // Measures the process's CPU time: no other test of this file runs meanwhile.
    let _alone = EXCLUSIVE.write().await;
    let u = uid();
    let hub = format!("hub{u}");
    let topic = format!("d{u}.bad");
    let sink_topic = format!("d{u}.sink");
    let Rig {
        running,
        backend,
        script: s,
        conn,
        ch,
    } = rig(&hub, fast_retries(), "rejecter", &topic, durable(|_| {})).await;
    bound_sink(&ch, &format!("dsink{u}"), &sink_topic).await;
    let dlq = format!("{hub}.dead-letters");
    ch.queue_delete(dlq.as_str().into(), Default::default())
        .await
        .unwrap();
    // Other publishes share the publishing channel meanwhile.
    let others = {
        let backend = Arc::clone(&backend);
        let sink_topic = sink_topic.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                backend
                    .publish(&Message::new(sink_topic.as_str(), json!({"i": i})))
                    .await
                    .unwrap();
            }
        })
    };
    for i in 0..10 {
        publish(&ch, &topic, json!({"reject": true, "i": i})).await;
    }
    others.await.unwrap();
    eventually("each rejected once", || s.count() == 10).await;
    let cpu = cpu_time();
    sleep(Duration::from_secs(3)).await;
    let used = cpu_time() - cpu;
    assert_eq!(
        s.count(),
        10,
        "no message redelivered while its dead letter waits"
    );
    assert!(
        used < Duration::from_millis(900),
        "CPU while holding: {used:?}"
    );
    assert_eq!(
        queue_depth(&format!("{hub}.rejecter")),
        Some(10),
        "none acked away: all ten still held, unacknowledged"
    );
    // The queue is back: the held dead letters go out, then the originals are acknowledged.
    ch.queue_declare(
        dlq.as_str().into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while queue_depth(&dlq) != Some(10) || queue_depth(&format!("{hub}.rejecter")) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "held dead letters never went out"
        );
        sleep(Duration::from_millis(100)).await;
    }
    running.shutdown(Duration::from_secs(5)).await;
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[dlq, format!("{hub}.rejecter")]).await;
}

/// A hub whose durable consumer (`concurrency` N) has `n` messages with `body` (plus `i`), N of
/// them in flight, shut down with `grace`: its report, the consumer's queue, and a channel.
async fn shut_down_busy(
    concurrency: usize,
    n: u64,
    body: Value,
    grace: Duration,
) -> (
    hub_engine::ShutdownReport,
    String,
    lapin::Connection,
    Channel,
) {
    let u = uid();
    let hub = format!("hub{u}");
    let topic = format!("s{u}.job");
    let options = durable(|o| o.concurrency = concurrency);
    let Rig {
        running,
        script: s,
        conn,
        ch,
        ..
    } = rig(&hub, fast_retries(), "busy", &topic, options).await;
    for i in 0..n {
        let mut body = body.clone();
        body["i"] = json!(i);
        publish(&ch, &topic, body).await;
    }
    eventually("all workers busy", || s.count() == concurrency).await;
    let report = running.shutdown(grace).await;
    delete_queues(&[format!("{hub}.dead-letters")]).await;
    (report, format!("{hub}.busy"), conn, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_drain_finishes_is_acknowledged_before_the_channel_closes() {
    let _shared = EXCLUSIVE.read().await;
    let (report, q, conn, _) =
        shut_down_busy(8, 8, json!({"sleep_ms": 500}), Duration::from_secs(10)).await;
    assert!(report.drain.is_clean(), "{report:?}");
    assert_eq!(
        queue_depth(&q),
        Some(0),
        "the 8 finished during the drain are acked"
    );
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cut_off_at_shutdown_come_back_once_with_their_attempt_count() {
    let _shared = EXCLUSIVE.read().await;
    let (report, q, conn, ch) = shut_down_busy(
        2,
        5,
        json!({"sleep_ms": 30_000}),
        Duration::from_millis(300),
    )
    .await;
    assert!(!report.drain.is_clean());
    let back = drain_queue(&ch, &q).await;
    assert_eq!(back.len(), 5, "each message back exactly once");
    for (body, h) in &back {
        assert!(
            !h.contains_key("x-hub-attempts"),
            "given back as it was, not as a retry: {h:?} {}",
            String::from_utf8_lossy(body)
        );
    }
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_decided_during_the_drain_is_published_before_the_original_is_acked() {
    let _shared = EXCLUSIVE.read().await;
    // It fails during the drain, after the receive loop has stopped: its retry must still go
    // out (a copy) before the original is acknowledged.
    let body = json!({"sleep_ms": 500, "fail": 1});
    let (report, q, conn, ch) = shut_down_busy(1, 1, body, Duration::from_secs(10)).await;
    assert!(report.drain.is_clean(), "{report:?}");
    let left = drain_queue(&ch, &q).await;
    assert_eq!(left.len(), 1, "the retry's copy, and no original");
    let h = &left[0].1;
    assert_eq!(h["x-hub-attempts"], json!(2), "{h:?}");
    assert!(
        h["x-hub-topic"].as_str().unwrap().ends_with(".job"),
        "{h:?}"
    );
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[q]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_its_retry_backoff_does_not_hold_up_the_others() {
    let _shared = EXCLUSIVE.read().await;
    let u = uid();
    let hub = format!("hub{u}");
    let topic = format!("b{u}.job");
    let cfg: hub_amqp::AmqpConfig = serde_json::from_value(json!({
        "url": url(), "prefetch": 4, "max_attempts": 3, "retry_delay": "4s"
    }))
    .unwrap();
    let Rig {
        running,
        script: s,
        conn,
        ch,
        ..
    } = rig(&hub, cfg, "flow", &topic, durable(|_| {})).await;
    let failing = publish(&ch, &topic, json!({"fail": 1})).await;
    for i in 0..39 {
        publish(&ch, &topic, json!({"i": i})).await;
    }
    let t0 = Instant::now();
    eventually("the other 39 done", || s.count() == 40).await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the others waited for the retry's backoff: {:?}",
        t0.elapsed()
    );
    // Finished messages are acknowledged although the failing one is still held: a forced
    // close now redelivers only that one.
    sleep(Duration::from_millis(200)).await;
    assert!(close_connection_named(&format!("hub {hub} rabbit consume")));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !s.calls().iter().any(|c| c.id == failing && c.redelivered) {
        assert!(
            Instant::now() < deadline,
            "the held message never came back"
        );
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_millis(500)).await;
    let calls = s.calls();
    let again: Vec<_> = calls
        .iter()
        .filter(|c| c.id != failing && c.redelivered)
        .collect();
    assert!(again.is_empty(), "finished messages redelivered: {again:?}");
    assert_eq!(
        calls.len(),
        41,
        "each of the 39 once, the failing one twice: {calls:?}"
    );
    running.shutdown(Duration::from_secs(5)).await;
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[format!("{hub}.flow"), format!("{hub}.dead-letters")]).await;
}

/// A consumer's own `retry` drives AMQP's confirmed republish instead of the backend's keys
/// (here: 2 attempts, not the backend's 3); with `in_order`, the hub retries in place and the
/// broker sees only the final verdict (the dead letter counts the attempts made in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumers_own_retry_overrides_the_backend_keys_and_in_order_retries_in_place() {
    let _shared = EXCLUSIVE.read().await;
    for in_order in [false, true] {
        let u = uid();
        let hub = format!("hub{u}");
        let pattern = format!("r{u}.#");
        let options = ConsumerOptions {
            retry: Some(hub_core::RetryPolicy {
                max_attempts: 2,
                delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
                in_order,
            }),
            ..ConsumerOptions::default()
        };
        let Rig {
            running,
            script: s,
            conn,
            ch,
            ..
        } = rig(&hub, fast_retries(), "keeper", &pattern, options).await;
        let always = publish(&ch, &format!("r{u}.x"), json!({"fail": 99})).await;
        eventually("two attempts", || s.count() == 2).await;
        let dlq = format!("{hub}.dead-letters");
        let dead = dead_letters(&ch, &dlq).await;
        assert_eq!(dead.len(), 1);
        let h = &dead[0].1;
        let attempts: Vec<u64> = s
            .calls()
            .iter()
            .filter(|c| c.id == always)
            .map(|c| c.attempt)
            .collect();
        assert_eq!(attempts, [1, 2], "in_order = {in_order}");
        if in_order {
            // Retried by the hub: the broker delivered it once; the reason says how many.
            assert!(
                h["x-hub-reason"]
                    .as_str()
                    .unwrap()
                    .contains("gave up after 2 attempts"),
                "{h:?}"
            );
        } else {
            assert_eq!(h["x-hub-attempts"], json!(2), "{h:?}");
        }
        sleep(Duration::from_millis(300)).await;
        assert_eq!(s.count(), 2, "no third attempt");
        running.shutdown(Duration::from_secs(5)).await;
        let _ = conn.close(200, "bye".into()).await;
        delete_queues(&[dlq]).await;
    }
}
