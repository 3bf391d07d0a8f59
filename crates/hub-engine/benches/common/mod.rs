//! What the dispatch benches share: a dispatcher with N no-op consumers that count.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hub_core::{
    CancellationToken, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern,
    Resources, Sink, async_trait,
};
use hub_engine::{Dispatcher, MemoryBackend, MetricsHandle, Registry};

/// Counts the messages it is handed.
pub struct Count(pub Arc<AtomicU64>);

#[async_trait]
impl Consumer for Count {
    async fn consume(&self, _cx: &Context, _msg: &Message) -> Result<(), ConsumeError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A started dispatcher with `consumers` counting consumers of `org.fedoraproject.#`: the sink
/// a backend would be given, the counts, and the hub's metrics. Call within a tokio runtime (the
/// workers are spawned on it).
pub fn hub(consumers: usize) -> (Sink, Vec<Arc<AtomicU64>>, MetricsHandle) {
    let registry = Registry::new();
    let mut b = Dispatcher::builder(registry.clone());
    let backend = b.backend("bench");
    let mem: Arc<dyn hub_core::Backend> = Arc::new(MemoryBackend::new());
    let mut counts = Vec::new();
    for i in 0..consumers {
        let c = Arc::new(AtomicU64::new(0));
        counts.push(Arc::clone(&c));
        let cx = Context::new(
            format!("c{i}"),
            b.publisher(backend, Arc::clone(&mem)),
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
    let sink = Sink::new(d.intake(backend));
    (sink, counts, MetricsHandle::new(registry, d))
}
