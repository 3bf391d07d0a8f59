//! Shutdown while a producer is blocked on a full `block` queue: the delivery it was handing
//! over reached one consumer already, so the other consumer must get it too (before, the
//! intake was closed before the stopped producer's future was dropped, and the copy still
//! waiting was refused: the last tick was in one consumer's file and not the other's). Before
//! the fix, 250 rounds found the loss in 10 runs of 10.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_core::{
    Backend, BoxError, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern,
    Producer, async_trait,
};
use hub_engine::{ConsumerSpec, EngineBuilder, MemoryBackend};
use serde_json::json;

/// Publishes `{"seq": n}` for n = 0, 1, ... as fast as the consumers take them.
struct Count;

#[async_trait]
impl Producer for Count {
    async fn produce(&self, cx: &Context) -> Result<(), BoxError> {
        let mut seq = 0u64;
        loop {
            cx.publish(Message::new("load.tick", json!({ "seq": seq })))
                .await?;
            seq += 1;
        }
    }
}

/// Notes every seq it is given; `slow` ones yield once per message, so their one-message queue
/// stays full and the producer keeps waiting on it and being woken (the moments that race
/// with the shutdown).
struct Keep {
    seen: Mutex<Vec<u64>>,
    slow: bool,
}

#[async_trait]
impl Consumer for Keep {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        if self.slow {
            tokio::task::yield_now().await;
        }
        let seq = msg.body()["seq"].as_u64().unwrap();
        self.seen.lock().unwrap().push(seq);
        Ok(())
    }
}

fn spec(name: &str, queue_capacity: usize) -> ConsumerSpec {
    ConsumerSpec {
        name: name.into(),
        backend: "mem".into(),
        patterns: vec![Pattern::new("load.#").unwrap()],
        options: ConsumerOptions {
            queue_capacity,
            ..ConsumerOptions::default()
        },
        dead_letter: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_gets_what_another_got_when_the_hub_stops_mid_publish() {
    for round in 0..250u64 {
        let fast = Arc::new(Keep {
            seen: Mutex::default(),
            slow: false,
        });
        let slow = Arc::new(Keep {
            seen: Mutex::default(),
            slow: true,
        });
        let running = EngineBuilder::new("h")
            .backend("mem", Arc::new(MemoryBackend::new()) as Arc<dyn Backend>)
            .consumer(
                spec("fast", 100_000),
                Arc::clone(&fast) as Arc<dyn Consumer>,
            )
            .consumer(spec("slow", 1), Arc::clone(&slow) as Arc<dyn Consumer>)
            .producer("count", "mem", Arc::new(Count))
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        while fast.seen.lock().unwrap().len() < 10 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_micros(round * 37 % 3000)).await;
        let report = running.shutdown(Duration::from_secs(10)).await;
        assert!(report.drain.is_clean(), "round {round}: {:?}", report.drain);
        let fast = fast.seen.lock().unwrap().clone();
        let mut slow = slow.seen.lock().unwrap().clone();
        let n = fast.len() as u64;
        assert!(
            fast.iter().copied().eq(0..n),
            "round {round}: fast in order"
        );
        slow.sort_unstable();
        assert!(
            slow.iter().copied().eq(0..n),
            "round {round}: slow got {} of the {n} fast got (last {:?})",
            slow.len(),
            slow.last()
        );
    }
}
