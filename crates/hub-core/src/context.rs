//! What consumers and producers get from the hub: a publish handle and shared resources.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::metrics::Counter;
use crate::{Backend, Message, PublishError};

/// Per consumer or producer: its name, a publisher to its backend, shared resources, and the hub's
/// shutdown signal; for a consumer, also the message it is handling. Cheap to clone (one
/// reference count), and a clone keeps the message it was handling: work spawned onto another
/// task with a clone still publishes correlated messages.
#[derive(Clone)]
pub struct Context {
    shared: Arc<Shared>,
    handling: Option<Message>,
}

struct Shared {
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
            shared: Arc::new(Shared {
                name: name.into(),
                publisher,
                resources,
                shutdown,
            }),
            handling: None,
        }
    }

    /// This context while handling `msg`: what [`Context::publish`] sends then carries `msg`'s id
    /// ([`crate::correlation`]). The engine gives each call to
    /// [`Consumer::consume`](crate::Consumer::consume) such a context.
    pub fn handling(&self, msg: Message) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            handling: Some(msg),
        }
    }

    /// Sets the message being handled (the engine does this around each call to
    /// [`Consumer::consume`](crate::Consumer::consume), on a context of the worker's own).
    #[inline]
    pub fn set_handled(&mut self, msg: Option<Message>) {
        self.handling = msg;
    }

    /// The message being handled, if any.
    pub fn handled(&self) -> Option<&Message> {
        self.handling.as_ref()
    }

    /// The configured name (`[consumers.<name>]`).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The publish handle for this consumer's backend. It publishes messages as they are:
    /// prefer [`Context::publish`], which adds the correlation headers.
    pub fn publisher(&self) -> &Publisher {
        &self.shared.publisher
    }

    /// Publishes a message on this consumer's backend. While a message is being handled, the
    /// published one carries `in_reply_to` and `correlation_id` ([`crate::correlation`]) unless
    /// it sets them itself.
    ///
    /// # Errors
    /// [`PublishError`] when the backend did not take or confirm it.
    pub async fn publish(&self, msg: Message) -> Result<(), PublishError> {
        let msg = crate::correlation::correlate(self.handling.as_ref(), msg);
        self.shared.publisher.publish(msg).await
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
        self.shared.resources.get::<T>()
    }

    /// All shared resources.
    pub fn resources(&self) -> &Resources {
        &self.shared.resources
    }

    /// Cancelled when the hub starts shutting down: long-running work may watch it.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shared.shutdown
    }
}

/// Publishes messages through one backend and counts them.
#[derive(Clone)]
pub struct Publisher {
    backend: Arc<dyn Backend>,
    published: Counter,
    failures: Counter,
}

impl Publisher {
    /// A publisher for `backend`, counting accepted publishes in `published` and failed ones in
    /// `failures` (the engine passes its series; a test may pass `Counter::noop()`).
    pub fn new(backend: Arc<dyn Backend>, published: Counter, failures: Counter) -> Self {
        Self {
            backend,
            published,
            failures,
        }
    }

    /// Publishes one message as it is; counts it in `hub_backend_published_messages_total` once
    /// accepted, or in `hub_backend_publish_failures_total`.
    ///
    /// # Errors
    /// [`PublishError`] when the backend did not take or confirm it.
    pub async fn publish(&self, msg: Message) -> Result<(), PublishError> {
        let res = self.backend.publish(&msg).await;
        match &res {
            Ok(()) => self.published.increment(1),
            Err(_) => self.failures.increment(1),
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
