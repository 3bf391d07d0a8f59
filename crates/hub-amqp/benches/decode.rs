//! Instructions per inbound AMQP message (`scripts/bench-instructions`, under callgrind): a
//! fedora-messaging-shaped delivery (its properties, five headers and a 200-byte body) made into
//! a [`Message`] as the receive loop does (`wire::decode_shared`, then `byte_size` as the
//! queue's byte limit reads it), handed to a consumer that reads only the body, then dropped.
//! `HUB_BENCH_N` messages (default 100 000); prints the time per message too.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use hub_core::Message;
use serde_json::json;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u64 = std::env::var("HUB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let m = Message::builder(
        "org.fedoraproject.prod.bodhi.update.comment",
        json!({"pad": "x".repeat(180)}),
    )
    .header("fedora_messaging_user_alice", true)
    .header("fedora_messaging_rpm_kernel", true)
    .build();
    let (props, body) = hub_amqp::wire::encode(&m);
    let props = std::sync::Arc::new(props);
    let t = Instant::now();
    let mut size = 0;
    for _ in 0..n {
        // The receive loop's path: the properties shared with the message, not copied.
        let msg = hub_amqp::wire::decode_shared(
            m.topic(),
            false,
            false,
            std::sync::Arc::clone(black_box(&props)),
            &body,
        )
        .unwrap();
        size += msg.byte_size();
        black_box(msg.body());
    }
    black_box(size);
    println!(
        "{n} decodes: {:.0} ns per message",
        t.elapsed().as_nanos() as f64 / n as f64
    );
}
