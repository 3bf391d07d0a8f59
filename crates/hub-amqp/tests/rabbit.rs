//! Against the real RabbitMQ at 127.0.0.1:5672 (guest/guest; `HUB_TEST_AMQP_URL` overrides).
//! `scripts/test` starts (or installs) RabbitMQ first; an unreachable broker fails these tests.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::*;
use hub_core::{
    BackendConfig, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::json;
use tokio::time::{Instant, sleep};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_pattern_into_per_consumer_queues_and_transient_queues_go_away() {
    let u = uid();
    let (a, b) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
    let star = format!("t{u}.build.*");
    let hash = format!("t{u}.#");
    let hub = format!("hub{u}");
    let (running, backend) = start(
        &hub,
        config(&format!("dlx{u}")),
        vec![
            ("a", &[star.as_str()], ConsumerOptions::default(), a.clone()),
            ("b", &[hash.as_str()], ConsumerOptions::default(), b.clone()),
        ],
    )
    .await;
    for t in [
        format!("t{u}.build.ok"),
        format!("t{u}.other"),
        format!("t{u}.build.x.y"),
    ] {
        backend
            .publish(&Message::new(t, json!({"k": 1})))
            .await
            .unwrap();
    }
    eventually("b sees all three", || b.seen.lock().unwrap().len() == 3).await;
    sleep(Duration::from_millis(200)).await;
    assert_eq!(topics(&a), vec![format!("t{u}.build.ok")]);
    let m = b.seen.lock().unwrap()[0].clone();
    assert_eq!(m.body(), &json!({"k": 1}));
    assert_eq!(
        m.header("fedora_messaging_schema"),
        Some(&json!("base.message"))
    );
    assert!(
        queues().contains(&format!("{hub}.a.")),
        "transient queue exists while running"
    );
    running.shutdown(Duration::from_secs(5)).await;
    sleep(Duration::from_millis(500)).await;
    assert!(
        !queues().contains(&format!("{hub}.a.")),
        "transient queue gone with the hub"
    );
}

/// Publishes `(message id, body)` pairs straight to `amq.topic` on `topic`, each confirmed.
async fn publish_raw(ch: &lapin::Channel, topic: &str, messages: &[(&str, &[u8])]) {
    for (id, body) in messages {
        ch.basic_publish(
            "amq.topic".into(),
            topic.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_message_id((*id).into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

/// A body over `max_message_bytes`, and a small body with headers over it, are each counted as
/// oversized, never handed to the consumer, and dead-lettered once (not redelivered) with the
/// size in the reason; the next message flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_message_bytes_is_dead_lettered_with_its_size() {
    let u = uid();
    let hub = format!("hub{u}");
    let probe = Arc::new(Probe::default());
    let topic = format!("big{u}.x");
    let mut cfg = fast_retries();
    cfg.max_message_bytes = 64 * 1024;
    let (running, _backend) = start(
        &hub,
        cfg,
        vec![(
            "worker",
            &[topic.as_str()],
            ConsumerOptions::default(),
            probe.clone(),
        )],
    )
    .await;
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(1 << 20));
    publish_raw(&ch, &topic, &[("huge", huge.as_bytes())]).await;
    // A small body under 100 KiB of headers (they arrive in one frame, under RabbitMQ's
    // 128 KiB frame_max): over the limit too.
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "pad".into(),
        lapin::types::AMQPValue::LongString("y".repeat(100 * 1024).into()),
    );
    ch.basic_publish(
        "amq.topic".into(),
        topic.as_str().into(),
        BasicPublishOptions::default(),
        br#"{"h": 1}"#,
        BasicProperties::default()
            .with_message_id("headers".into())
            .with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    publish_raw(&ch, &topic, &[("small", br#"{"ok": 1}"#)]).await;
    eventually("the small message consumed", || {
        probe.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let dlq = format!("{hub}.dead-letters");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        assert!(Instant::now() < deadline, "no dead letter: {reasons:?}");
        if let Some(msg) = ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let h =
                hub_amqp::wire::table_to_json(msg.delivery.properties.headers().as_ref().unwrap());
            let id = msg
                .delivery
                .properties
                .message_id()
                .as_ref()
                .unwrap()
                .to_string();
            reasons.push((
                id,
                h["x-hub-reason"].as_str().unwrap().to_owned(),
                msg.delivery.data.len(),
            ));
            continue;
        }
        sleep(Duration::from_millis(50)).await;
    }
    reasons.sort();
    let (id, reason, len) = &reasons[1];
    assert_eq!(id, "huge");
    assert!(
        reason.contains(&format!("body of {} bytes", huge.len()))
            && reason.contains("max_message_bytes (65536)"),
        "{reason}"
    );
    assert_eq!(*len, huge.len());
    let (id, reason, _) = &reasons[0];
    assert_eq!(id, "headers");
    assert!(
        reason.contains("with its headers is over max_message_bytes (65536)"),
        "{reason}"
    );
    assert_eq!(
        running
            .metrics()
            .sample(r#"hub_backend_oversized_messages_total{backend="rabbit"}"#),
        Some(2.0)
    );
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1, "never handed over");
    sleep(Duration::from_millis(300)).await;
    assert!(
        ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_none(),
        "dead-lettered once"
    );
    running.shutdown(Duration::from_secs(5)).await;
    let _ = ch
        .queue_delete(dlq.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered_with_the_reason_and_malformed_bodies_too() {
    let u = uid();
    let hub = format!("hub{u}");
    let failing = Arc::new(Probe {
        fail: true,
        ..Probe::default()
    });
    let topic = format!("f{u}.job");
    let (running, backend) = start(
        &hub,
        config(&format!("dlx{u}")),
        vec![(
            "worker",
            &[topic.as_str()],
            ConsumerOptions::default(),
            failing.clone(),
        )],
    )
    .await;
    backend
        .publish(&Message::new(topic.clone(), json!({"job": 7})))
        .await
        .unwrap();
    // A non-JSON body, and JSON no consumer could read back (a number beyond f64's range),
    // published straight to the exchange.
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    publish_raw(
        &ch,
        &topic,
        &[("bad-1", b"<not json>"), ("bad-2", br#"{"n": 1e400}"#)],
    )
    .await;
    let dlq = format!("{hub}.dead-letters");
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while dead.len() < 3 {
        assert!(Instant::now() < deadline, "dead letters: {}", dead.len());
        if let Some(msg) = ch
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let headers =
                hub_amqp::wire::table_to_json(msg.delivery.properties.headers().as_ref().unwrap());
            dead.push((
                String::from_utf8_lossy(&msg.delivery.data).into_owned(),
                headers,
            ));
        } else {
            sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        failing.calls.load(Ordering::SeqCst),
        3,
        "max_attempts = 3 deliveries, then dead-lettered"
    );
    let (body, h) = dead.iter().find(|(b, _)| b.contains("job")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        json!({"job": 7})
    );
    assert!(
        h["x-hub-reason"]
            .as_str()
            .unwrap()
            .contains("downstream is down"),
        "{h:?}"
    );
    assert_eq!(h["x-hub-consumer"], "worker");
    assert_eq!(h["x-hub-attempts"], 3);
    let (_, h) = dead.iter().find(|(b, _)| b == "<not json>").unwrap();
    assert!(
        h["x-hub-reason"].as_str().unwrap().contains("malformed"),
        "{h:?}"
    );
    let (_, h) = dead.iter().find(|(b, _)| b.contains("1e400")).unwrap();
    let reason = h["x-hub-reason"].as_str().unwrap();
    assert!(reason.contains("number out of range"), "{h:?}");
    running.shutdown(Duration::from_secs(5)).await;
    let _ = ch
        .queue_delete(dlq.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_queue_keeps_what_was_published_while_the_hub_was_down() {
    let u = uid();
    let hub = format!("hub{u}");
    let topic = format!("d{u}.event");
    let durable = ConsumerOptions {
        durable: true,
        ..ConsumerOptions::default()
    };
    let first = Arc::new(Probe::default());
    let (running, _) = start(
        &hub,
        config(&format!("dlx{u}")),
        vec![("keeper", &[topic.as_str()], durable.clone(), first)],
    )
    .await;
    running.shutdown(Duration::from_secs(5)).await;
    // The hub is down: publish 50 persistent messages.
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    for i in 0..50 {
        let body = serde_json::to_vec(&json!({"i": i})).unwrap();
        ch.basic_publish(
            "amq.topic".into(),
            topic.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let second = Arc::new(Probe::default());
    let (running, _) = start(
        &hub,
        config(&format!("dlx{u}")),
        vec![("keeper", &[topic.as_str()], durable, second.clone())],
    )
    .await;
    eventually("all 50 consumed after the restart", || {
        second.seen.lock().unwrap().len() == 50
    })
    .await;
    running.shutdown(Duration::from_secs(5)).await;
    let q = ch
        .queue_declare(
            format!("{hub}.keeper").as_str().into(),
            QueueDeclareOptions::durable().passive(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0, "everything acknowledged");
    let _ = ch
        .queue_delete(format!("{hub}.keeper").as_str().into(), Default::default())
        .await;
    let _ = ch
        .queue_delete(
            format!("{hub}.dead-letters").as_str().into(),
            Default::default(),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_an_error() {
    let u = uid();
    let (running, backend) = start(&format!("hub{u}"), config(&format!("dlx{u}")), vec![]).await;
    let err = backend
        .publish(&Message::new(format!("nobody{u}.listens"), json!({})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unroutable"), "{err}");
    running.shutdown(Duration::from_secs(5)).await;
    let _ = raw()
        .await
        .create_channel()
        .await
        .unwrap()
        .queue_delete(
            format!("hub{u}.dead-letters").as_str().into(),
            Default::default(),
        )
        .await;
}

#[derive(Default)]
struct Distinct {
    seen: Mutex<std::collections::BTreeSet<u64>>,
    calls: AtomicU64,
}

struct D(Arc<Distinct>);

#[async_trait]
impl Consumer for D {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0
            .seen
            .lock()
            .unwrap()
            .insert(msg.body()["i"].as_u64().unwrap());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_connection_close_mid_stream_loses_nothing() {
    const N: u64 = 300;
    let u = uid();
    let hub = format!("hub{u}");
    let topic = format!("r{u}.event");
    let probe = Arc::new(Distinct::default());
    let backend = config(&format!("dlx{u}")).build("rabbit").unwrap();
    let spec = ConsumerSpec {
        name: "steady".into(),
        backend: "rabbit".into(),
        patterns: vec![Pattern::new(&topic).unwrap()],
        options: ConsumerOptions {
            durable: true,
            ..ConsumerOptions::default()
        },
        dead_letter: None,
    };
    let running = EngineBuilder::new(hub.as_str())
        .backend("rabbit", backend)
        .consumer(spec, Arc::new(D(probe.clone())))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running.readiness().ready {
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(20)).await;
    }
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let mut saw_outage = false;
    for i in 0..N {
        let body = serde_json::to_vec(&json!({"i": i})).unwrap();
        ch.basic_publish(
            "amq.topic".into(),
            topic.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        if i == N / 3 {
            assert!(
                close_connection_named(&format!("hub {hub} rabbit consume")),
                "found the hub's connection"
            );
        }
        saw_outage |= !running.readiness().ready;
        sleep(Duration::from_millis(3)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe.seen.lock().unwrap().len() < N as usize {
        saw_outage |= !running.readiness().ready;
        assert!(
            Instant::now() < deadline,
            "consumed {} distinct of {N} after the forced close",
            probe.seen.lock().unwrap().len()
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert!(
        saw_outage,
        "hub_backend_connected / readiness showed the outage"
    );
    running.shutdown(Duration::from_secs(5)).await;
    let q = format!("{hub}.steady");
    let left = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::durable().passive(),
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(left, 0, "nothing left unacknowledged in the queue");
    eprintln!(
        "{} deliveries for {N} messages (duplicates are the ones in flight at the close)",
        probe.calls.load(Ordering::SeqCst)
    );
    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    let _ = ch
        .queue_delete(
            format!("{hub}.dead-letters").as_str().into(),
            Default::default(),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_redeclared_with_other_arguments_is_a_clear_fatal_error() {
    let u = uid();
    let hub = format!("hub{u}");
    let queue = format!("{hub}.strict");
    // Someone else made this queue non-durable; the hub wants it durable.
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let backend = config(&format!("dlx{u}")).build("rabbit").unwrap();
    let spec = ConsumerSpec {
        name: "strict".into(),
        backend: "rabbit".into(),
        patterns: vec![Pattern::new("x.y").unwrap()],
        options: ConsumerOptions {
            durable: true,
            ..ConsumerOptions::default()
        },
        dead_letter: None,
    };
    let mut running = EngineBuilder::new(hub.as_str())
        .backend("rabbit", backend)
        .consumer(spec, Arc::new(P(Arc::new(Probe::default()))))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), running.fatal())
        .await
        .expect("a fatal error")
        .expect("an error");
    let text = err.to_string();
    assert!(
        text.contains(&format!("declaring queue {queue:?}")),
        "{text}"
    );
    assert!(
        text.contains("PRECONDITION_FAILED") && text.contains("inequivalent arg 'durable'"),
        "{text}"
    );
    assert!(!running.readiness().ready);
    running.shutdown(Duration::from_secs(2)).await;
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = ch
        .queue_delete(
            format!("{hub}.dead-letters").as_str().into(),
            Default::default(),
        )
        .await;
}

/// A consumer whose queue is deleted behind the hub's back (the broker cancels its
/// subscription) declares it again and goes on consuming: no silent stop, and no exit either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_broker_cancels_subscribes_again() {
    let u = uid();
    let hub = format!("hub{u}");
    let topic = format!("g{u}.x");
    let durable = ConsumerOptions {
        durable: true,
        ..ConsumerOptions::default()
    };
    let probe = Arc::new(Probe::default());
    let (mut running, _) = start(
        &hub,
        config(&format!("dlx{u}")),
        vec![("gone", &[topic.as_str()], durable, Arc::clone(&probe))],
    )
    .await;
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let queue = format!("{hub}.gone");
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    // Declared again and bound by the hub: a message published now reaches the consumer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    while probe.seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing after the deletion"
        );
        n += 1;
        publish_raw(&ch, &topic, &[(&format!("m{n}"), b"{}")]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), running.fatal())
            .await
            .is_err(),
        "the backend stopped"
    );
    running.shutdown(Duration::from_secs(2)).await;
    for q in [queue, format!("{hub}.dead-letters")] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
}

/// Publishes `{"from": <id>}` on `to` while handling each message.
struct Relay {
    to: String,
}

#[async_trait]
impl Consumer for Relay {
    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        cx.publish_json(&self.to, json!({ "from": msg.id() }))
            .await
            .map_err(ConsumeError::transient)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_consumer_publishes_while_handling_carries_the_correlation_id() {
    use lapin::options::QueueBindOptions;
    let u = uid();
    let (inp, out) = (format!("c{u}.in"), format!("c{u}.out"));
    // A plain AMQP reader of what the hub publishes, to see the property as other tools do.
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let tap = format!("tap{u}");
    let opts = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare(tap.as_str().into(), opts, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        tap.as_str().into(),
        "amq.topic".into(),
        out.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let seen = Arc::new(Probe::default());
    let relay: Arc<dyn Consumer> = Arc::new(Relay { to: out.clone() });
    let (running, backend) = start_with(
        &format!("hub{u}"),
        config(&format!("dlx{u}")),
        vec![
            ("relay", &[inp.as_str()], ConsumerOptions::default(), relay),
            (
                "seen",
                &[out.as_str()],
                ConsumerOptions::default(),
                Arc::new(P(seen.clone())),
            ),
        ],
    )
    .await;
    let first = Message::builder(inp.clone(), json!({})).build();
    backend.publish(&first).await.unwrap();
    eventually("the relayed message arrives", || {
        seen.seen.lock().unwrap().len() == 1
    })
    .await;
    let relayed = seen.seen.lock().unwrap()[0].clone();
    // fedora-messaging's shape: message headers.
    assert_eq!(relayed.header("in_reply_to"), Some(&json!(first.id())));
    assert_eq!(relayed.header("correlation_id"), Some(&json!(first.id())));
    assert_eq!(relayed.body(), &json!({ "from": first.id() }));
    // The AMQP property too.
    let got = ch
        .basic_get(tap.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the tap queue holds the relayed message");
    assert_eq!(
        got.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some(first.id())
    );
    running.shutdown(Duration::from_secs(5)).await;
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[format!("hub{u}.dead-letters")]).await;
}

/// `hub dead requeue` on an AMQP dead-letter queue with `--consumer`, `--reason` and `--limit`:
/// only the selected letters move (to their own consumer's queue, dead-letter headers gone,
/// topic kept), the others stay in the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_moves_only_the_selected_dead_letters() {
    use hub_amqp::dead_letters::{Selection, requeue};
    use lapin::types::{AMQPValue, ShortString};

    let u = uid();
    let (dead, q1, q2) = (
        format!("hub{u}.dead-letters"),
        format!("hub{u}.one"),
        format!("hub{u}.two"),
    );
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    for q in [&dead, &q1, &q2] {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    // (id, consumer, reason, its queue), oldest first.
    let letters = [
        ("m1", "one", "exit 75: try later", &q1),
        ("m2", "one", "exit 65: bad input", &q1),
        ("m3", "two", "exit 75: try later", &q2),
        ("m4", "one", "exit 75: try later", &q1),
        ("m5", "two", "timed out", &q2),
    ];
    for (id, consumer, reason, queue) in &letters {
        let mut h = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(s.as_bytes().into());
        h.insert(ShortString::from("x-hub-consumer"), text(consumer));
        h.insert(ShortString::from("x-hub-reason"), text(reason));
        h.insert(ShortString::from("x-hub-queue"), text(queue));
        h.insert(ShortString::from("x-hub-topic"), text("org.t.x"));
        h.insert(ShortString::from("x-hub-attempts"), AMQPValue::LongUInt(3));
        ch.basic_publish(
            "".into(),
            dead.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default()
                .with_message_id((*id).into())
                .with_headers(h),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let ids_in = |q: String| async move {
        let conn = raw().await;
        let ch = conn.create_channel().await.unwrap();
        let mut ids = Vec::new();
        let mut headers = Vec::new();
        while let Some(got) = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
        {
            let p = &got.delivery.properties;
            ids.push(p.message_id().as_ref().unwrap().to_string());
            headers.push(p.headers().clone().unwrap_or_default());
        }
        // Not acknowledged: all back in the queue when the connection closes.
        let _ = conn.close(200, "bye".into()).await;
        (ids, headers)
    };
    let select = |consumer: Option<&str>, reason: Option<&str>, limit: Option<usize>| Selection {
        consumer: consumer.map(str::to_owned),
        reason: reason.map(str::to_owned),
        limit,
    };
    let moved = |s: Selection| {
        let (url, dead) = (url(), dead.clone());
        async move {
            let mut said = Vec::new();
            let n = requeue(&url, &dead, &s, |l| said.push(l.id.clone()))
                .await
                .unwrap();
            assert_eq!(n, said.len());
            said
        }
    };

    // Consumer `one`, reason "exit 75", at most 1: the oldest such, m1.
    assert_eq!(
        moved(select(Some("one"), Some("exit 75"), Some(1))).await,
        ["m1"]
    );
    // Consumer `two`, any reason: m3 and m5, to queue two.
    assert_eq!(moved(select(Some("two"), None, None)).await, ["m3", "m5"]);
    // Nothing matches: nothing moves.
    assert!(moved(select(Some("three"), None, None)).await.is_empty());
    let (left, _) = ids_in(dead.clone()).await;
    assert_eq!(left, ["m2", "m4"], "the unselected stay, in order");
    let (one, one_headers) = ids_in(q1.clone()).await;
    assert_eq!(one, ["m1"]);
    let (two, _) = ids_in(q2.clone()).await;
    assert_eq!(two, ["m3", "m5"]);
    let h = one_headers[0].inner();
    assert!(
        !h.contains_key("x-hub-reason") && !h.contains_key("x-hub-consumer"),
        "{h:?}"
    );
    assert!(!h.contains_key("x-hub-attempts"), "attempts start again");
    assert_eq!(
        h.get("x-hub-topic"),
        Some(&AMQPValue::LongString("org.t.x".as_bytes().into()))
    );
    // By reason only: m2.
    assert_eq!(moved(select(None, Some("exit 65"), None)).await, ["m2"]);
    let (left, _) = ids_in(dead.clone()).await;
    assert_eq!(left, ["m4"]);
    let _ = conn.close(200, "bye".into()).await;
    delete_queues(&[dead, q1, q2]).await;
}

/// A stream consumer started at `next` whose connection is cut and recovered while messages
/// keep arriving: it reads what was published during the outage (lapin's recovery alone would
/// start again at the stream's new end), and everything exactly once or at most again. Also
/// when the outage comes before it finished anything (`held`: its first message still in hand),
/// where it used to take the configured `next` again and skip the outage's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_consumer_reads_what_came_during_an_outage() {
    stream_outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_consumer_reads_what_came_during_an_outage_before_it_finished_anything() {
    stream_outage(true).await;
}

async fn stream_outage(held: bool) {
    let u = uid();
    let hub = format!("hub{u}");
    let topic = format!("s{u}.x");
    let record = format!("rec{u}");
    let mut proxy = hub_testkit::TcpProxy::start("127.0.0.1:5672").await;
    // An exchange of its own: a stream bound with `#` to amq.topic would make every other
    // test's publish routable.
    let exchange = format!("x{u}");
    let cfg: hub_amqp::AmqpConfig = serde_json::from_value(json!({
        "url": format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port()),
        "exchange": exchange,
        "record_stream": record,
    }))
    .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(if held { 0 } else { 1000 }));
    let probe = Arc::new(Probe {
        gate: Some(Arc::clone(&gate)),
        ..Probe::default()
    });
    let options = ConsumerOptions {
        durable: true,
        retry: Some(hub_core::RetryPolicy {
            in_order: true,
            ..hub_core::RetryPolicy::default()
        }),
        broker_queue: hub_core::BrokerQueue {
            kind: hub_core::QueueType::Stream,
            ..hub_core::BrokerQueue::default()
        },
        ..ConsumerOptions::default()
    };
    let (running, _) = start(
        &hub,
        cfg,
        vec![("s", &[topic.as_str()], options, Arc::clone(&probe))],
    )
    .await;
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let send = |range: std::ops::Range<u32>| {
        let (ch, topic, exchange) = (ch.clone(), topic.clone(), exchange.clone());
        async move {
            for i in range {
                let body = serde_json::to_vec(&json!({ "i": i })).unwrap();
                ch.basic_publish(
                    exchange.as_str().into(),
                    topic.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            }
        }
    };
    let distinct = || {
        let seen = probe.seen.lock().unwrap();
        seen.iter()
            .map(|m| m.body()["i"].as_u64().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    send(0..50).await;
    if held {
        eventually("the first one in hand", || {
            probe.calls.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
    } else {
        eventually("the first 50", || distinct() == 50).await;
    }
    proxy.cut().await;
    sleep(Duration::from_millis(300)).await;
    // Published straight to the broker while the hub is cut off: recorded in the stream.
    send(50..100).await;
    proxy.up().await;
    if held {
        // Its subscription taken up again while the first message is still in hand.
        eventually("connected again", || running.readiness().ready).await;
        sleep(Duration::from_millis(1000)).await;
    }
    gate.add_permits(1000);
    eventually("the 50 from the outage", || distinct() == 100).await;
    send(100..120).await;
    eventually("and what follows", || distinct() == 120).await;
    let total = probe.seen.lock().unwrap().len();
    assert!(total <= 120 + 50, "{total} deliveries for 120 messages");
    running.shutdown(Duration::from_secs(5)).await;
    for q in [
        record,
        format!("{hub}.s.offset"),
        format!("{hub}.dead-letters"),
    ] {
        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
    }
}
