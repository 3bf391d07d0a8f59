//! What consumers and producers get from the hub: a publish handle and shared resources.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::metrics::BackendMetrics;
use crate::{Backend, Message, PublishError};

/// Per consumer or producer: its name, a publisher to its backend, shared resources, and the hub's
/// shutdown signal. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    name: Arc<str>,
    publisher: Publisher,
    resources: Resources,
    shutdown: CancellationToken,
}

impl Context {
    /// Builds a context (the hub does this; tests may too).
    pub fn new(
        name: impl Into<Arc<str>>,
        publisher: Publisher,
        resources: Resources,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            name: name.into(),
            publisher,
            resources,
            shutdown,
        }
    }

    /// The configured name (`[consumers.<name>]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The publish handle for this consumer's backend.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Publishes a message on this consumer's backend.
    ///
    /// # Errors
    /// [`PublishError`] when the backend did not take or confirm it.
    pub async fn publish(&self, msg: Message) -> Result<(), PublishError> {
        self.publisher.publish(msg).await
    }

    /// Publishes a new message with a fresh id.
    ///
    /// # Errors
    /// As [`Context::publish`].
    pub async fn publish_json(&self, topic: &str, body: Value) -> Result<(), PublishError> {
        self.publish(Message::new(topic, body)).await
    }

    /// A shared resource registered with the hub, such as a database pool.
    pub fn resource<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.resources.get::<T>()
    }

    /// All shared resources.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// Cancelled when the hub starts shutting down: long-running work may watch it.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// Publishes messages through one backend and counts them.
#[derive(Clone)]
pub struct Publisher {
    backend: Arc<dyn Backend>,
    metrics: BackendMetrics,
}

impl Publisher {
    /// A publisher for `backend`, counting into `metrics`.
    pub fn new(backend: Arc<dyn Backend>, metrics: BackendMetrics) -> Self {
        Self { backend, metrics }
    }

    /// Publishes one message; counts it in `hub_backend_published_messages_total` once accepted,
    /// or in `hub_backend_publish_failures_total`.
    ///
    /// # Errors
    /// [`PublishError`] when the backend did not take or confirm it.
    pub async fn publish(&self, msg: Message) -> Result<(), PublishError> {
        let res = self.backend.publish(&msg).await;
        match &res {
            Ok(()) => self.metrics.published.increment(1),
            Err(_) => self.metrics.publish_failures.increment(1),
        }
        res
    }
}

/// A typed map of shared resources: one value per type.
#[derive(Clone, Default)]
pub struct Resources {
    map: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the resource of type `T`.
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.map).insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// The resource of type `T`, if registered.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|v| Arc::clone(v).downcast::<T>().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use serde_json::json;

    #[tokio::test]
    async fn publishes_are_counted_by_outcome() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let metrics = metrics::with_local_recorder(&recorder, || BackendMetrics::register("mem"));
        // A memory backend that is not running refuses the message.
        let publisher = Publisher::new(Arc::new(MemoryBackend::new()), metrics);
        let err = publisher
            .publish(Message::new("a.b", json!({})))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
        let text = handle.render();
        assert!(
            text.contains("hub_backend_publish_failures_total{backend=\"mem\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hub_backend_published_messages_total{backend=\"mem\"} 0"),
            "{text}"
        );
    }
}
