//! Assembles backends, consumers and producers into a running hub, and shuts it down in order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use hub_core::{
    Backend, BackendContext, BackendError, BackendMetrics, BoxError, Consumer, ConsumerOptions,
    Context, Pattern, Producer, Publisher, Resources, Sink,
};

use crate::dead_letter::{DeadLetterSink, DeadLetterTarget, FileSink, TopicSink};
use crate::dispatcher::BackendIndex;
use crate::metrics::{MetricsHandle, Registry};
use crate::{Dispatcher, DrainReport};

/// How long an aborted producer or backend task is waited for at least, past the grace if need
/// be, before intake closes without it.
const ABORTED_TASK_WAIT: Duration = Duration::from_secs(1);

/// How one consumer is wired.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Unique consumer name (metric label, log field).
    pub name: String,
    /// Id of the backend that feeds it.
    pub backend: String,
    /// Topic patterns it wants.
    pub patterns: Vec<Pattern>,
    /// Dispatch options.
    pub options: ConsumerOptions,
    /// Where its dead letters go when the hub keeps them (its backend does not redeliver);
    /// `None`: logged whole at error level.
    pub dead_letter: Option<DeadLetterTarget>,
}

/// A wiring mistake found before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A consumer or producer names a backend that was not added.
    #[error("{what} {name}: unknown backend {backend:?}")]
    UnknownBackend {
        /// "consumer" or "producer".
        what: &'static str,
        /// Its name.
        name: String,
        /// The backend it asked for.
        backend: String,
    },
    /// Two consumers, producers or backends share a name.
    #[error("duplicate {what} name {name:?}")]
    Duplicate {
        /// "consumer", "producer" or "backend".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A consumer's start hook failed.
    #[error("consumer {consumer} failed to start: {source}")]
    ConsumerStart {
        /// Consumer name.
        consumer: String,
        /// Its error.
        #[source]
        source: BoxError,
    },
}

/// Collects the parts of a hub.
pub struct EngineBuilder {
    verdicts_to_backend: bool,
    max_queued_bytes: usize,
    live_tail: (usize, usize),
    name: String,
    registry: Registry,
    resources: Resources,
    backends: Vec<(String, Arc<dyn Backend>)>,
    consumers: Vec<(ConsumerSpec, Arc<dyn Consumer>)>,
    producers: Vec<(String, String, Arc<dyn Producer>)>,
}

impl EngineBuilder {
    /// A hub named `name` (`[hub] name`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            verdicts_to_backend: false,
            max_queued_bytes: crate::DEFAULT_MAX_QUEUED_BYTES,
            live_tail: (0, 512),
            name: name.into(),
            registry: Registry::new(),
            resources: Resources::new(),
            backends: Vec::new(),
            consumers: Vec::new(),
            producers: Vec::new(),
        }
    }

    /// Consumers with no `retry` of their own hand each failure's verdict to their backend as
    /// it is, even on a backend that does not redeliver (the test kit does this, so a test sees
    /// the consumer's own verdict); consumers with a `retry` get the hub's retries as usual.
    /// Off by default.
    pub fn verdicts_to_backend(mut self, on: bool) -> Self {
        self.verdicts_to_backend = on;
        self
    }

    /// Keeps the last `n` messages each consumer received for the live tail (`[http]
    /// live_tail`; 0, the default, keeps none), each text cut to `bytes`; see
    /// [`DispatcherBuilder::live_tail`](crate::DispatcherBuilder::live_tail).
    pub fn live_tail(mut self, n: usize, bytes: usize) -> Self {
        self.live_tail = (n, bytes);
        self
    }

    /// The most bytes queued over every consumer (`[hub] max_queued_bytes`, default
    /// [`DEFAULT_MAX_QUEUED_BYTES`](crate::DEFAULT_MAX_QUEUED_BYTES)); see
    /// [`DispatcherBuilder::max_queued_bytes`](crate::DispatcherBuilder::max_queued_bytes).
    pub fn max_queued_bytes(mut self, limit: usize) -> Self {
        self.max_queued_bytes = limit;
        self
    }

    /// Where the hub's series go (default: a registry of its own).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Shared resources every consumer and producer can reach through its [`Context`].
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Adds a backend under `id`.
    pub fn backend(mut self, id: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        self.backends.push((id.into(), backend));
        self
    }

    /// Adds a consumer.
    pub fn consumer(mut self, spec: ConsumerSpec, consumer: Arc<dyn Consumer>) -> Self {
        self.consumers.push((spec, consumer));
        self
    }

    /// Adds a producer publishing on `backend`.
    pub fn producer(
        mut self,
        name: impl Into<String>,
        backend: impl Into<String>,
        producer: Arc<dyn Producer>,
    ) -> Self {
        self.producers.push((name.into(), backend.into(), producer));
        self
    }

    /// Checks the wiring and registers every metric series in the hub's registry.
    ///
    /// # Errors
    /// [`EngineError`] for an unknown backend or a duplicate name.
    pub fn build(self) -> Result<Engine, EngineError> {
        let shutdown = CancellationToken::new();
        let mut seen = HashSet::new();
        let mut builder = Dispatcher::builder(self.registry.clone());
        builder.hub_name(&self.name);
        builder.verdicts_to_backend(self.verdicts_to_backend);
        builder.max_queued_bytes(self.max_queued_bytes);
        builder.live_tail(self.live_tail.0, self.live_tail.1);
        let mut backends = Vec::new();
        for (id, backend) in self.backends {
            if !seen.insert(("backend", id.clone())) {
                return Err(EngineError::Duplicate {
                    what: "backend",
                    name: id,
                });
            }
            let index = builder.backend(&id);
            builder.backend_redelivers(index, backend.redelivers());
            let metrics = builder.backend_metrics(index);
            let publisher = builder.publisher(index, Arc::clone(&backend));
            backends.push(BackendSlot {
                publisher,
                id: id.into(),
                backend,
                metrics,
                index,
            });
        }
        let find = |what: &'static str, name: &str, backend: &str| {
            backends
                .iter()
                .find(|b| &*b.id == backend)
                .ok_or_else(|| EngineError::UnknownBackend {
                    what,
                    name: name.to_owned(),
                    backend: backend.to_owned(),
                })
        };
        for (spec, consumer) in self.consumers {
            if !seen.insert(("consumer", spec.name.clone())) {
                return Err(EngineError::Duplicate {
                    what: "consumer",
                    name: spec.name,
                });
            }
            let b = find("consumer", &spec.name, &spec.backend)?;
            let cx = Context::new(
                spec.name.as_str(),
                builder.publisher(b.index, Arc::clone(&b.backend)),
                self.resources.clone(),
                shutdown.clone(),
            )
            .with_concurrency(spec.options.concurrency)
            .with_metrics_registry(self.registry.recorder());
            let sink: Option<Arc<dyn DeadLetterSink>> = match &spec.dead_letter {
                None => None,
                Some(DeadLetterTarget::File(path)) => Some(Arc::new(FileSink::new(path.clone()))),
                Some(DeadLetterTarget::Topic { topic, backend }) => {
                    let target = match backend {
                        Some(id) => find("consumer", &spec.name, id)?,
                        None => b,
                    };
                    let publisher = builder.publisher(target.index, Arc::clone(&target.backend));
                    Some(Arc::new(TopicSink::new(publisher, topic, &*target.id)))
                }
            };
            let id = builder.consumer(b.index, spec.patterns, spec.options, consumer, cx);
            if let Some(sink) = sink {
                builder.dead_letters(id, sink);
            }
        }
        let mut producers = Vec::new();
        for (name, backend, producer) in self.producers {
            if !seen.insert(("producer", name.clone())) {
                return Err(EngineError::Duplicate {
                    what: "producer",
                    name,
                });
            }
            let b = find("producer", &name, &backend)?;
            let backend_metrics = b.metrics.clone();
            let cx = Context::new(
                name.as_str(),
                builder.publisher(b.index, Arc::clone(&b.backend)),
                self.resources.clone(),
                shutdown.clone(),
            );
            producers.push((cx, producer, backend_metrics));
        }
        Ok(Engine {
            name: self.name.into(),
            registry: self.registry,
            dispatcher: builder.build(),
            backends,
            producers,
            shutdown,
        })
    }
}

struct BackendSlot {
    id: Arc<str>,
    publisher: Publisher,
    backend: Arc<dyn Backend>,
    metrics: BackendMetrics,
    index: BackendIndex,
}

/// A wired hub, not yet running.
pub struct Engine {
    name: Arc<str>,
    registry: Registry,
    dispatcher: Dispatcher,
    backends: Vec<BackendSlot>,
    producers: Vec<(Context, Arc<dyn Producer>, BackendMetrics)>,
    shutdown: CancellationToken,
}

impl Engine {
    /// The dispatcher (for metrics and state).
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// A publisher through backend `id` (counted in its series), to publish from outside any
    /// consumer; `None` for an unknown id.
    pub fn publisher(&self, id: &str) -> Option<Publisher> {
        self.backends
            .iter()
            .find(|b| &*b.id == id)
            .map(|b| b.publisher.clone())
    }

    /// Renders this hub's `/metrics`.
    pub fn metrics(&self) -> MetricsHandle {
        MetricsHandle {
            registry: self.registry.clone(),
            dispatcher: self.dispatcher.clone(),
        }
    }

    /// Runs consumers' start hooks, then starts consumer workers, backends, producers and a
    /// once-a-second gauge refresh, on the current tokio runtime.
    ///
    /// # Errors
    /// [`EngineError::ConsumerStart`] when a start hook fails (nothing keeps running then).
    pub async fn start(self) -> Result<RunningEngine, EngineError> {
        self.dispatcher
            .start_consumers()
            .await
            .map_err(|(consumer, source)| EngineError::ConsumerStart { consumer, source })?;
        self.dispatcher.start();
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        let mut backend_tasks = Vec::new();
        for b in &self.backends {
            let cx = BackendContext {
                id: Arc::clone(&b.id),
                hub_name: Arc::clone(&self.name),
                subscriptions: self.dispatcher.subscriptions(b.index),
                sink: Sink::new(self.dispatcher.intake(b.index)),
                shutdown: self.shutdown.child_token(),
                metrics: b.metrics.clone(),
            };
            let backend = Arc::clone(&b.backend);
            let id = Arc::clone(&b.id);
            let fatal = fatal_tx.clone();
            let metrics = b.metrics.clone();
            let task = async move {
                if let Err(e) = backend.run(cx).await {
                    metrics.set_connected(false);
                    error!(backend = %id, error = %e, "Backend stopped with an error.");
                    let _ = fatal.send(e);
                }
            };
            backend_tasks.push(tokio::spawn(
                task.instrument(info_span!("backend", backend = %b.id)),
            ));
        }
        let mut producer_tasks = Vec::new();
        for (cx, producer, backend) in self.producers.iter().cloned() {
            let span = info_span!("producer", producer = %cx.name());
            producer_tasks.push(tokio::spawn(
                run_producer(cx, producer, backend).instrument(span),
            ));
        }
        let dispatcher = self.dispatcher.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                dispatcher.refresh_gauges();
                dispatcher.record_history();
            }
        });
        info!(hub = %self.name, backends = self.backends.len(), producers = self.producers.len(), "Hub started.");
        Ok(RunningEngine {
            engine: self,
            backend_tasks,
            producer_tasks,
            ticker,
            fatal: fatal_rx,
        })
    }
}

async fn run_producer(cx: Context, producer: Arc<dyn Producer>, backend: BackendMetrics) {
    let token = cx.shutdown().clone();
    let work = async {
        // Publishing before the backend is up only fails: wait for it.
        while !backend.is_connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match producer.interval() {
            Some(period) => {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = producer.produce(&cx).await {
                        warn!(producer = %cx.name(), error = %e, "Producer round failed.");
                    }
                }
            }
            None => loop {
                match producer.produce(&cx).await {
                    Ok(()) => break,
                    Err(e) => {
                        warn!(producer = %cx.name(), error = %e, "Producer failed; restarting in 1 s.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            },
        }
    };
    tokio::select! {
        () = token.cancelled() => {}
        () = work => {}
    }
}

/// Whether the hub can take traffic: every backend connected and every consumer started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// True when nothing below is missing.
    pub ready: bool,
    /// Backend ids not connected now.
    pub backends_down: Vec<String>,
    /// For those of them that said why (their last failed attempt): id and reason.
    pub down_reasons: Vec<(String, String)>,
    /// False until consumers have started (and again once shutdown begins).
    pub consumers_started: bool,
}

/// What shutdown did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Messages left unfinished, per consumer.
    pub drain: DrainReport,
}

/// A running hub.
pub struct RunningEngine {
    engine: Engine,
    backend_tasks: Vec<JoinHandle<()>>,
    producer_tasks: Vec<JoinHandle<()>>,
    ticker: JoinHandle<()>,
    fatal: mpsc::UnboundedReceiver<BackendError>,
}

impl RunningEngine {
    /// The dispatcher (for metrics and state).
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.engine.dispatcher
    }

    /// Renders this hub's `/metrics`.
    pub fn metrics(&self) -> MetricsHandle {
        self.engine.metrics()
    }

    /// A publisher through backend `id`; see [`Engine::publisher`].
    pub fn publisher(&self, id: &str) -> Option<Publisher> {
        self.engine.publisher(id)
    }

    /// Readiness now.
    pub fn readiness(&self) -> Readiness {
        self.readiness_probe().readiness()
    }

    /// A cheap handle that answers [`readiness`](Self::readiness) from another task.
    pub fn readiness_probe(&self) -> ReadinessProbe {
        ReadinessProbe {
            backends: self
                .engine
                .backends
                .iter()
                .map(|b| (b.id.to_string(), b.metrics.clone()))
                .collect(),
            shutdown: self.engine.shutdown.clone(),
        }
    }

    /// Resolves when a backend stops with an error no reconnect can fix.
    pub async fn fatal(&mut self) -> Option<BackendError> {
        self.fatal.recv().await
    }

    /// Stops producers and backend intake, drains consumers within `grace`, runs stop hooks, and
    /// closes backends.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let deadline = Instant::now() + grace;
        info!(grace = ?grace, "Shutting down: intake stopped, draining consumers.");
        self.engine.shutdown.cancel();
        // Every source of deliveries stops before intake closes: an aborted task is gone only
        // once its handle resolves (a task running on another thread finishes its poll first),
        // and a delivery it was handing over must reach all of its consumers, not some.
        for t in &self.producer_tasks {
            t.abort();
        }
        for t in self.producer_tasks {
            joined(t, deadline).await;
        }
        for mut t in self.backend_tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                joined(t, deadline).await;
            }
        }
        let left: Vec<(String, usize)> = self
            .engine
            .dispatcher
            .states()
            .into_iter()
            .map(|s| (s.name, s.backlog + s.in_flight))
            .filter(|(_, n)| *n > 0)
            .collect();
        if !left.is_empty() {
            let total: usize = left.iter().map(|(_, n)| n).sum();
            let per_consumer = left
                .iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            let within = deadline.saturating_duration_since(Instant::now());
            info!(messages_left = total, consumers = %per_consumer, within = ?within, "Waiting for {total} queued or in-flight messages to finish; what is left when the grace ends is given back unprocessed.");
        }
        let drain = self
            .engine
            .dispatcher
            .drain(deadline.saturating_duration_since(Instant::now()))
            .await;
        let stop_limit = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        if tokio::time::timeout(stop_limit, self.engine.dispatcher.stop_consumers())
            .await
            .is_err()
        {
            warn!("Consumer stop hooks did not finish in time.");
        }
        for b in &self.engine.backends {
            if tokio::time::timeout(Duration::from_secs(5), b.backend.close())
                .await
                .is_err()
            {
                warn!(backend = %b.id, "Backend did not close in time.");
            }
        }
        self.ticker.abort();
        self.engine.log_totals();
        if drain.is_clean() {
            info!("Shutdown complete: every queued message finished.");
        } else {
            for (consumer, queued, in_flight) in &drain.unfinished {
                warn!(%consumer, queued, in_flight, "Left unfinished at shutdown.");
            }
        }
        ShutdownReport { drain }
    }
}

/// Waits for an (aborted or finishing) task to be gone, until `deadline` but at least a moment:
/// an aborted task ends at its next await, so it is waited for even past the deadline.
async fn joined(task: JoinHandle<()>, deadline: Instant) {
    let limit = deadline.max(Instant::now() + ABORTED_TASK_WAIT);
    if tokio::time::timeout_at(limit, task).await.is_err() {
        warn!(
            "A producer or backend task did not stop when aborted (a call that never awaits); intake closes without it."
        );
    }
}

impl Engine {
    /// Logs what each backend delivered and what became of each consumer's messages since
    /// start: the books an operator (or a fault test) balances after a stop.
    fn log_totals(&self) {
        let d = &self.dispatcher;
        for b in &self.backends {
            info!(backend = %b.id, received = d.backend_received(b.index), "Backend totals.");
        }
        for s in d.status() {
            let o = s.outcomes;
            info!(
                consumer = %s.state.name,
                received = o.received,
                ok = o.ok,
                transient = o.transient,
                invalid = o.invalid,
                timeout = o.timeout,
                panic = o.panic,
                dropped = o.dropped,
                retried = o.retried,
                dead_lettered = o.dead_lettered,
                "Consumer totals."
            );
        }
    }
}

/// Answers readiness without holding the running hub.
#[derive(Clone)]
pub struct ReadinessProbe {
    backends: Vec<(String, BackendMetrics)>,
    shutdown: CancellationToken,
}

impl ReadinessProbe {
    /// Each backend's recent outages (the last ten), by id, in registration order.
    pub fn outages(&self) -> Vec<(String, Vec<hub_core::metrics::Outage>)> {
        self.backends
            .iter()
            .map(|(id, m)| (id.clone(), m.outages()))
            .collect()
    }

    /// Readiness now.
    pub fn readiness(&self) -> Readiness {
        let backends_down: Vec<String> = self
            .backends
            .iter()
            .filter(|(_, m)| !m.is_connected())
            .map(|(id, _)| id.clone())
            .collect();
        let consumers_started = !self.shutdown.is_cancelled();
        let down_reasons = self
            .backends
            .iter()
            .filter(|(_, m)| !m.is_connected())
            .filter_map(|(id, m)| Some((id.clone(), m.down_reason()?)))
            .collect();
        Readiness {
            ready: backends_down.is_empty() && consumers_started,
            backends_down,
            down_reasons,
            consumers_started,
        }
    }
}
