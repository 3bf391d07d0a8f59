//! What the dispatch benches share: a dispatcher with N no-op consumers that count.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hub_core::{
    BackendMetrics, CancellationToken, ConsumeError, Consumer, ConsumerOptions, Context,
    Dispatcher, Intake, MemoryBackend, Message, Pattern, Publisher, Resources, async_trait,
};

/// Counts the messages it is handed.
pub struct Count(pub Arc<AtomicU64>);

#[async_trait]
impl Consumer for Count {
    async fn consume(&self, _cx: &Context, _msg: &Message) -> Result<(), ConsumeError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A started dispatcher with `consumers` counting consumers of `org.fedoraproject.#`, its
/// intake and the counts. Call within a tokio runtime (the workers are spawned on it).
pub fn hub(consumers: usize) -> (Intake, Vec<Arc<AtomicU64>>, Dispatcher) {
    let mut b = Dispatcher::builder();
    let bm = BackendMetrics::register("bench");
    let backend = b.backend(bm.clone());
    let mem: Arc<dyn hub_core::Backend> = Arc::new(MemoryBackend::new());
    let mut counts = Vec::new();
    for i in 0..consumers {
        let c = Arc::new(AtomicU64::new(0));
        counts.push(Arc::clone(&c));
        let cx = Context::new(
            format!("c{i}"),
            Publisher::new(Arc::clone(&mem), bm.clone()),
            Resources::new(),
            CancellationToken::new(),
        );
        b.consumer(
            backend,
            vec![Pattern::new("org.fedoraproject.#").unwrap()],
            ConsumerOptions::default(),
            Arc::new(Count(c)),
            cx,
        );
    }
    let d = b.build();
    d.start();
    (d.intake(backend), counts, d)
}
