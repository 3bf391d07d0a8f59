//! One pass of `HUB_BENCH_N` (default 100 000) single deliveries (`Sink::deliver`, as a
//! backend hands them over) to `HUB_BENCH_CONSUMERS` (default 4) no-op consumers on a
//! current-thread runtime, with the hub's own Prometheus registry and one scrape at the end: a fixed amount of work whose instruction count
//! (`valgrind --tool=callgrind`) compares two versions of the dispatcher without the host's noise.
//! Run N and 2N and take the difference over N for the cost of one delivery.
//! Build: `cargo bench -p hub-engine --bench dispatch_count --no-run`.
#![allow(missing_docs, clippy::unwrap_used)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::Ordering;

mod common;

use hub_core::{Delivery, Message};
use serde_json::json;

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs bench targets without `--bench`: nothing to check here.
    }
    let n = env_or("HUB_BENCH_N", 100_000);
    let consumers = env_or("HUB_BENCH_CONSUMERS", 4) as usize;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (sink, counts, metrics) = common::hub(consumers);
        let topics: Vec<String> = (0..200)
            .map(|i| format!("org.fedoraproject.prod.app{i}.state.change"))
            .collect();
        // 200 distinct messages, cloned (a reference count each): building messages is not
        // what is measured.
        let distinct: Vec<Message> = topics
            .iter()
            .map(|t| Message::new(t.as_str(), json!({"build_id": 1, "name": "kernel"})))
            .collect();
        let msgs: Vec<Message> = (0..n)
            .map(|i| distinct[(i % 200) as usize].clone())
            .collect();
        for m in msgs {
            sink.deliver(Delivery::new(m)).await.unwrap();
        }
        while counts.iter().any(|c| c.load(Ordering::Relaxed) < n) {
            tokio::task::yield_now().await;
        }
        let text = metrics.render();
        assert!(text.contains("hub_consumer_processed_messages_total"));
    });
}
