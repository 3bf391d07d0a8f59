//! The IRC sink against a real server (ngircd on 127.0.0.1): lines arrive rendered, long ones
//! cut, a burst becomes one digest line per topic, and the notifier reconnects and rejoins
//! after the server restarts.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Ircd, Listener, context};
use hub_core::{Consumer, ErrorKind, Message, Resources, Timestamp, json};
use hub_notify::{Notifier, NotifyConfig};

const CHANNEL: &str = "#hub-test";

fn notifier(port: u16, extra: serde_json::Value) -> Notifier {
    let mut settings = json!({
        "sink": "irc",
        "server": "127.0.0.1",
        "port": port,
        "nick": "hubbot",
        "channel": CHANNEL,
        "reconnect_delay": "100ms",
        "reconnect_delay_max": "1s",
    });
    if let (Some(s), Some(e)) = (settings.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value::<NotifyConfig>(settings)
        .unwrap()
        .into_notifier()
        .unwrap()
}

/// Waits (up to `within`) until the notifier is in its channel.
async fn ready(n: &Notifier, within: Duration) {
    let deadline = Instant::now() + within;
    while !n.is_ready().await {
        assert!(
            Instant::now() < deadline,
            "the notifier did not join within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_arrive_rendered_and_long_ones_are_cut() {
    let ircd = Ircd::start().await;
    let listener = Listener::join(ircd.port, "listener", CHANNEL).await;
    let n = notifier(
        ircd.port,
        json!({"template": "{{ topic }}: {{ body.text }} ({{ body.user.name | default('nobody') }})"}),
    );
    let cx = context();
    n.start(&cx).await.unwrap();
    ready(&n, Duration::from_secs(10)).await;

    let m = Message::new(
        "org.example.build",
        json!({"text": "built\nfine", "user": {"name": "ada"}}),
    );
    n.consume(&cx, &m).await.unwrap();
    let long = Message::new("org.example.long", json!({"text": "é".repeat(600)}));
    n.consume(&cx, &long).await.unwrap();

    let heard = listener.wait_lines(2, Duration::from_secs(10)).await;
    assert_eq!(heard[0].0, "org.example.build: built fine (ada)");
    let cut = &heard[1].0;
    assert!(cut.starts_with("org.example.long: éé"), "{cut}");
    assert!(cut.ends_with('…'), "{cut}");
    assert!(cut.len() <= n.max_length(), "{} bytes", cut.len());
    assert!(cut.len() > n.max_length() - 4, "{} bytes", cut.len());
    assert_eq!(n.max_length(), 400);

    n.stop(&cx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_becomes_one_digest_line_per_topic() {
    let ircd = Ircd::start().await;
    let listener = Listener::join(ircd.port, "listener", CHANNEL).await;
    let n = notifier(ircd.port, json!({}));
    let cx = context();
    n.start(&cx).await.unwrap();
    ready(&n, Duration::from_secs(10)).await;

    // 500 messages over 3 topics and 40 s: 250, 150 and 100 of them.
    let t0: i64 = 1_772_366_400_000; // 2026-03-01T12:00:00Z, in ms
    let topics = [
        "org.fedoraproject.prod.bodhi.update.comment",
        "org.fedoraproject.prod.copr.build.end",
        "org.fedoraproject.prod.git.receive",
    ];
    let batch: Vec<Message> = (0..500)
        .map(|i| {
            let topic = match i % 10 {
                0..=4 => topics[0],
                5..=7 => topics[1],
                _ => topics[2],
            };
            let at = Timestamp::from_millisecond(t0 + i64::from(i) * 80).unwrap();
            Message::builder(topic, json!({"i": i}))
                .timestamp(at)
                .build()
        })
        .collect();
    assert_eq!(n.batch_take(500, 500), 500);
    assert_eq!(n.batch_take(5, 500), 1);
    let results = n.consume_batch(&cx, &batch).await;
    assert_eq!(results.len(), 500);
    assert!(results.iter().all(Result::is_ok));

    let heard = listener.wait_lines(3, Duration::from_secs(10)).await;
    // Nothing more comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heard_now: Vec<String> = listener.heard().into_iter().map(|(t, _)| t).collect();
    assert_eq!(heard_now.len(), 3, "{heard_now:?}");
    let texts: Vec<&str> = heard.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        texts,
        [
            "250 more on org.fedoraproject.prod.bodhi.update.comment in the last 40 s",
            "150 more on org.fedoraproject.prod.copr.build.end in the last 40 s",
            "100 more on org.fedoraproject.prod.git.receive in the last 40 s",
        ]
    );

    // A few messages (2 to digest_after): one line each.
    let few: Vec<Message> = (0..3)
        .map(|i| Message::new("org.example.few", json!({"i": i})))
        .collect();
    let results = n.consume_batch(&cx, &few).await;
    assert!(results.iter().all(Result::is_ok));
    let heard = listener.wait_lines(6, Duration::from_secs(10)).await;
    assert_eq!(heard[3].0, r#"org.example.few: {"i":0}"#);
    assert_eq!(heard[5].0, r#"org.example.few: {"i":2}"#);

    n.stop(&cx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_reconnects_and_rejoins_after_the_server_restarts() {
    let mut ircd = Ircd::start().await;
    let mut listener = Listener::join(ircd.port, "listener", CHANNEL).await;
    let n = notifier(ircd.port, json!({}));
    let cx = context();
    n.start(&cx).await.unwrap();
    ready(&n, Duration::from_secs(10)).await;
    n.consume(&cx, &Message::new("before", json!(1)))
        .await
        .unwrap();
    listener.wait_lines(1, Duration::from_secs(10)).await;

    ircd.kill();
    // The notifier notices the loss; a send meanwhile is a transient error (the hub retries).
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.is_ready().await {
        assert!(Instant::now() < deadline, "the loss went unnoticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = n
        .consume(&cx, &Message::new("during", json!(2)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert!(e.to_string().contains("127.0.0.1"), "{e}");

    ircd.restart().await;
    listener.wait_joined(2).await;
    ready(&n, Duration::from_secs(20)).await;
    n.consume(&cx, &Message::new("after", json!(3)))
        .await
        .unwrap();
    let heard = listener.wait_lines(2, Duration::from_secs(10)).await;
    assert_eq!(heard[1].0, "after: 3");

    n.stop(&cx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_nick_gets_an_underscore_and_settings_read_from_toml() {
    let ircd = Ircd::start().await;
    let listener = Listener::join(ircd.port, "hubbot", CHANNEL).await;
    let consumer = hub_testkit::build_consumer::<NotifyConfig>(
        &format!(
            r##"
            sink = "irc"
            server = "127.0.0.1"
            port = {}
            nick = "hubbot"
            channel = "{CHANNEL}"
            template = "[{{{{ topic }}}}] {{{{ body.who }}}}"
            "##,
            ircd.port
        ),
        &Resources::new(),
    )
    .unwrap();
    let cx = context();
    consumer.start(&cx).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match consumer
            .consume(&cx, &Message::new("t", json!({"who": "me"})))
            .await
        {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
                assert!(Instant::now() < deadline, "never joined: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let heard = listener.wait_lines(1, Duration::from_secs(10)).await;
    assert_eq!(heard[0].0, "[t] me");
    consumer.stop(&cx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_arrive_over_tls_with_a_private_ca() {
    // A CA and a certificate for "localhost" signed by it.
    let dir = tempfile::tempdir().unwrap();
    let pki = hub_testkit::localhost_pki(dir.path());
    let tls_port = common::free_port();
    let ircd = Ircd::start_with(
        common::free_port(),
        &format!(
            "[SSL]\nCertFile = {}\nKeyFile = {}\nPorts = {tls_port}\n",
            pki.cert.display(),
            pki.key.display()
        ),
    )
    .await;
    let listener = Listener::join(ircd.port, "listener", CHANNEL).await;
    let n = notifier(
        tls_port,
        json!({"server": "localhost", "tls": true, "ca_file": pki.ca}),
    );
    let cx = context();
    n.start(&cx).await.unwrap();
    ready(&n, Duration::from_secs(10)).await;
    n.consume(&cx, &Message::new("org.example.tls", json!("secret stuff")))
        .await
        .unwrap();
    let heard = listener.wait_lines(1, Duration::from_secs(10)).await;
    assert_eq!(heard[0].0, r#"org.example.tls: "secret stuff""#);
    n.stop(&cx).await;

    // Without the CA, the server's certificate is not trusted: never ready.
    let untrusted = notifier(tls_port, json!({"server": "localhost", "tls": true}));
    untrusted.start(&cx).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!untrusted.is_ready().await);
    let e = untrusted
        .consume(&cx, &Message::new("t", json!(1)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient);
    untrusted.stop(&cx).await;
}
