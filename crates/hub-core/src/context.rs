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
    concurrency: usize,
    registry: Option<Arc<dyn crate::metrics::Recorder + Send + Sync>>,
    pacer: Option<Arc<dyn Pacer>>,
}

/// A consumer's `rate_limit` as the hub applies it, for a call that sends several things (a
/// notifier's digest of several lines) to pay for the extra ones: see [`Context::pace`].
#[async_trait::async_trait]
pub trait Pacer: Send + Sync + 'static {
    /// Waits until `n` more sends are allowed and takes them (the wait counts as throttled).
    async fn take(&self, n: u32);
}

/// What [`Context::metrics_registry`] gives outside a hub: records nothing.
static NO_REGISTRY: metrics::NoopRecorder = metrics::NoopRecorder;

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
            concurrency: 1,
            registry: None,
            pacer: None,
        }
    }

    /// This context with its consumer's rate limit (the engine sets it when `rate_limit` is
    /// configured).
    pub fn with_pacer(mut self, pacer: Arc<dyn Pacer>) -> Self {
        self.pacer = Some(pacer);
        self
    }

    /// Takes `n` more tokens from this consumer's `rate_limit`, waiting as long as it says (the
    /// wait counts in `hub_consumer_throttled_seconds_total`); returns at once when the consumer
    /// has no rate limit. The hub takes one token before each call; a call that sends more than
    /// one thing (a digest of five lines) paces the rest with this, so the limit holds per thing
    /// sent, not per call.
    pub async fn pace(&self, n: u32) {
        if let (Some(p), true) = (&self.pacer, n > 0) {
            p.take(n).await;
        }
    }

    /// This context with the hub's metrics registry (the engine sets it).
    pub fn with_metrics_registry(
        mut self,
        registry: Arc<dyn crate::metrics::Recorder + Send + Sync>,
    ) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The hub's metrics registry: a consumer crate registers its own series there through the
    /// engine's metrics module (`hub_engine::metrics::exec_series(..)`, say), as a backend does.
    /// Outside a hub (a test's own context), one that records nothing.
    pub fn metrics_registry(&self) -> &dyn crate::metrics::Recorder {
        match &self.registry {
            Some(r) => &**r,
            None => &NO_REGISTRY,
        }
    }

    /// This context for a consumer run with `concurrency` calls at once (the engine sets it).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How many calls to `consume` the hub makes at once for this consumer (its `concurrency`;
    /// 1 for a producer).
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// This context while handling `msg`: what [`Context::publish`] sends then carries `msg`'s id
    /// ([`crate::correlation`]). The engine gives each call to
    /// [`Consumer::consume`](crate::Consumer::consume) such a context.
    pub fn handling(&self, msg: Message) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            handling: Some(msg),
            concurrency: self.concurrency,
            registry: self.registry.clone(),
            pacer: self.pacer.clone(),
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

    /// Which attempt at the handled message this is: 1 the first time, 2 on its first retry,
    /// and so on (from its [`ATTEMPTS_HEADER`](crate::message::ATTEMPTS_HEADER), which every
    /// backend carries). 1 outside a call to `consume`.
    pub fn attempt(&self) -> u32 {
        self.handling.as_ref().map_or(1, Message::attempt)
    }

    /// The configured name (`[consumers.<name>]`).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The publish handle for this consumer's backend. It publishes messages as they are (less
    /// the hub's count of attempts, as every publish): prefer [`Context::publish`], which adds
    /// the correlation headers.
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

    /// Publishes one message as it is, less the hub's count of attempts
    /// ([`Message::without_attempts`]: the next hub to receive it counts its own); counts it in
    /// `hub_backend_published_messages_total` once accepted, or in
    /// `hub_backend_publish_failures_total`.
    ///
    /// # Errors
    /// [`PublishError`] when the backend did not take or confirm it.
    pub async fn publish(&self, msg: Message) -> Result<(), PublishError> {
        let msg = msg.without_attempts();
        let res = self.backend.publish(&msg).await;
        match &res {
            Ok(()) => self.published.increment(1),
            Err(_) => self.failures.increment(1),
        }
        res
    }
}

/// A typed map of shared resources: one value per type, shared by every consumer and producer
/// (a database pool, an HTTP client). Each value is kept in an `Arc`: register the value itself
/// (`Pool`, not `Arc<Pool>`); one registered as an `Arc<T>` is found as `T` all the same.
#[derive(Clone, Default)]
pub struct Resources {
    map: Arc<HashMap<TypeId, Entry>>,
    /// `[resources.<id>]`, by id.
    named: Arc<HashMap<String, Entry>>,
}

#[derive(Clone)]
struct Entry {
    type_name: &'static str,
    value: Arc<dyn Any + Send + Sync>,
}

/// The type name recorded for a resource that could not be built.
const BROKEN: &str = "(not built)";

/// A resource a consumer asked for ([`Resources::require`], [`Resources::named`]) that is not
/// there, or not of the type asked for.
#[derive(Debug, thiserror::Error)]
pub enum MissingResource {
    /// No value of that type was registered.
    #[error(
        "no shared resource of type `{wanted}` is registered (add it with HubBuilder::resource or \
         resource_async before the hub is checked or run); registered: {registered}"
    )]
    Type {
        /// The type asked for.
        wanted: &'static str,
        /// The types registered, comma-separated (`none` when there are none).
        registered: String,
    },
    /// No `[resources.<id>]` with that id.
    #[error("no [resources.{id}] is configured{hint}; configured: {configured}")]
    Id {
        /// The id asked for.
        id: String,
        /// ` (did you mean `x`?)` or nothing.
        hint: String,
        /// The ids configured, comma-separated (`none`).
        configured: String,
    },
    /// `[resources.<id>]` is configured but could not be built.
    #[error("[resources.{id}] could not be built (its own problem is reported at its key)")]
    Broken {
        /// The id.
        id: String,
    },
    /// `[resources.<id>]` is of another type.
    #[error("[resources.{id}] is a `{actual}`, not the `{wanted}` this needs")]
    WrongType {
        /// The id.
        id: String,
        /// What it is.
        actual: &'static str,
        /// What was asked for.
        wanted: &'static str,
    },
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the resource of type `T`.
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        let entry = Entry {
            type_name: std::any::type_name::<T>(),
            value: Arc::new(value),
        };
        Arc::make_mut(&mut self.map).insert(TypeId::of::<T>(), entry);
        self
    }

    /// The resource of type `T`, if registered (also when it was registered as an `Arc<T>`).
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        if let Some(e) = self.map.get(&TypeId::of::<T>()) {
            return Arc::clone(&e.value).downcast::<T>().ok();
        }
        let wrapped = self.map.get(&TypeId::of::<Arc<T>>())?;
        wrapped.value.downcast_ref::<Arc<T>>().cloned()
    }

    /// The resource of type `T`, or an error naming it and what is registered. Call it in
    /// [`ConsumerConfig::build`](crate::ConsumerConfig::build) and return the error: a
    /// missing resource then fails `hub check`, not the first message.
    ///
    /// # Errors
    /// [`MissingResource`] when no `T` (nor `Arc<T>`) is registered.
    pub fn require<T: Any + Send + Sync>(&self) -> Result<Arc<T>, MissingResource> {
        self.get::<T>().ok_or_else(|| {
            let mut names: Vec<&str> = self.map.values().map(|e| e.type_name).collect();
            names.sort_unstable();
            MissingResource::Type {
                wanted: std::any::type_name::<T>(),
                registered: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            }
        })
    }

    /// Adds (or replaces) the resource with id `id` (what `[resources.<id>]` builds).
    pub fn with_named<T: Any + Send + Sync>(mut self, id: impl Into<String>, value: T) -> Self {
        self.add_named(id.into(), std::any::type_name::<T>(), Arc::new(value));
        self
    }

    /// Marks `[resources.<id>]` as configured but not built (its own problem is reported where
    /// it is): consumers that name it are told so, not that it does not exist.
    pub fn add_broken(&mut self, id: String) {
        self.add_named(id, BROKEN, Arc::new(()));
    }

    /// Adds a resource already type-erased (the hub does this for `[resources.<id>]`).
    pub fn add_named(
        &mut self,
        id: String,
        type_name: &'static str,
        value: Arc<dyn Any + Send + Sync>,
    ) {
        Arc::make_mut(&mut self.named).insert(id, Entry { type_name, value });
    }

    /// The resource `[resources.<id>]`, which must be a `T`. Call it in
    /// [`ConsumerConfig::build`](crate::ConsumerConfig::build) with the id from the consumer's
    /// settings and return the error: a wrong or missing id then fails `hub check`.
    ///
    /// # Errors
    /// [`MissingResource::Id`] (with the closest configured id) or
    /// [`MissingResource::WrongType`].
    pub fn named<T: Any + Send + Sync>(&self, id: &str) -> Result<Arc<T>, MissingResource> {
        let Some(e) = self.named.get(id) else {
            let mut ids: Vec<&str> = self.named.keys().map(String::as_str).collect();
            ids.sort_unstable();
            let hint = ids
                .iter()
                .find(|k| one_typo_apart(id, k))
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(MissingResource::Id {
                id: id.to_owned(),
                hint,
                configured: if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(", ")
                },
            });
        };
        if e.type_name == BROKEN {
            return Err(MissingResource::Broken { id: id.to_owned() });
        }
        if let Some(wrapped) = e.value.downcast_ref::<Arc<T>>() {
            return Ok(Arc::clone(wrapped));
        }
        Arc::clone(&e.value)
            .downcast::<T>()
            .map_err(|_| MissingResource::WrongType {
                id: id.to_owned(),
                actual: e.type_name,
                wanted: std::any::type_name::<T>(),
            })
    }
}

/// Whether two ids are one typo apart: a letter added, dropped or changed, or two neighbours
/// swapped.
fn one_typo_apart(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    if a.len().max(b.len()) - prefix - suffix <= 1 {
        return true;
    }
    let differ: Vec<usize> = (0..a.len().min(b.len()))
        .filter(|&i| a[i] != b[i])
        .collect();
    a.len() == b.len()
        && differ.len() == 2
        && differ[1] == differ[0] + 1
        && a[differ[0]] == b[differ[1]]
        && a[differ[1]] == b[differ[0]]
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pool(u32);

    /// Keeps what is published through it.
    #[derive(Default)]
    struct Captured(std::sync::Mutex<Vec<Message>>);

    #[async_trait::async_trait]
    impl Backend for Captured {
        async fn run(&self, _cx: crate::BackendContext) -> Result<(), crate::BackendError> {
            Ok(())
        }

        async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(msg.clone());
            Ok(())
        }
    }

    /// A consumer that passes on the message it handles (on its third attempt) publishes it
    /// without the hub's count: the next hub would otherwise dead-letter it at its first failure.
    #[tokio::test]
    async fn what_the_hub_publishes_leaves_its_count_of_attempts_behind() {
        use crate::message::ATTEMPTS_HEADER;
        let backend = Arc::new(Captured::default());
        let publisher = Publisher::new(
            Arc::clone(&backend) as Arc<dyn Backend>,
            Counter::noop(),
            Counter::noop(),
        );
        let handled = Message::builder("org.a", serde_json::json!({"n": 1}))
            .id("m-1")
            .header(ATTEMPTS_HEADER, 3)
            .header("kept", "yes")
            .build();
        assert_eq!(handled.attempt(), 3);
        publisher.publish(handled.clone()).await.unwrap();
        let out = backend.0.lock().unwrap().clone();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].header(ATTEMPTS_HEADER), None);
        assert_eq!(out[0].attempt(), 1);
        assert_eq!(out[0].header("kept"), Some(&serde_json::json!("yes")));
        assert_eq!((out[0].id(), out[0].body()), (handled.id(), handled.body()));
    }

    #[test]
    fn a_resource_is_found_by_its_type_even_registered_in_an_arc() {
        let r = Resources::new().with(Arc::new(Pool(7)));
        assert_eq!(r.get::<Pool>().map(|p| p.0), Some(7));
        assert_eq!(r.require::<Pool>().map(|p| p.0).ok(), Some(7));
        let err = Resources::new()
            .with(5u8)
            .require::<Pool>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("Pool") && err.contains("registered: u8"),
            "{err}"
        );
    }

    #[test]
    fn named_resources_say_what_is_wrong() {
        let r = Resources::new().with_named("main", Pool(1));
        assert_eq!(r.named::<Pool>("main").map(|p| p.0).ok(), Some(1));
        let err = r
            .named::<Pool>("mian")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("no [resources.mian]") && err.contains("did you mean `main`"),
            "{err}"
        );
        let err = r
            .named::<u8>("main")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("is a `") && err.contains("Pool`, not the `u8`"),
            "{err}"
        );
        // Registered as an `Arc`: found all the same.
        let wrapped = Resources::new().with_named("main", Arc::new(Pool(2)));
        assert_eq!(wrapped.named::<Pool>("main").map(|p| p.0).ok(), Some(2));
        // Configured but not built: said so, not "no such resource".
        let mut broken = Resources::new();
        broken.add_broken("main".into());
        let err = broken
            .named::<Pool>("main")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("[resources.main] could not be built"), "{err}");
    }
}
