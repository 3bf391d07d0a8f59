//! # hub
//!
//! The `hub` daemon as a library: register consumer, producer and backend types with
//! [`Hub::builder`], then [`HubBuilder::run_cli`] gives the whole CLI (`run`, `check`,
//! `consumers`). The stock binary is `Hub::builder().stock().run_cli()`; your own binary adds
//! your types:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     hub::Hub::builder().stock().consumer::<my_crate::MyConsumerConfig>().run_cli()
//! }
//! ```
//!
//! # Layout
//! - `config`: figment loading and validation (every problem at once).
//! - `registry`: `type = "..."` → settings → built consumer/producer/backend.
//! - `http`: `/metrics`, `/live`, `/ready`.
//! - `stock`: `echo`, `delay`, `reply`, `ticker`.
//! - `telemetry`: logs (metrics are `hub_engine::metrics`).

mod api;
mod cli_tools;
pub mod config;
mod dead;
mod http;
mod import;
mod registry;
pub mod stock;
pub mod telemetry;
mod top;

use std::any::Any;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hub_core::{
    BackendConfig, CancellationToken, ConsumerConfig, ProducerConfig, ResourceConfig, Resources,
};
use hub_core::{BackendError, BoxError};
use hub_engine::{ConsumerSpec, EngineBuilder, EngineError, MemoryConfig};
pub use hub_engine::{DrainReport, ShutdownReport};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

pub use config::{Config, ConfigErrors, ConfigIssue, ConfigSource};
use registry::Registry;
use telemetry::LogFormat;

/// Exit code: a runtime failure (a backend failed for good, a consumer did not start, the HTTP
/// port is taken).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: invalid configuration or command line.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code: a second SIGINT/SIGTERM cut the graceful shutdown short.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a hub could not run, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration does not build (every problem at once).
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The engine refused the assembled parts, or a consumer's start hook failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A backend failed for good while running.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The HTTP listener (binding `[http] listen`, or reading a given listener's address).
    #[error("{context}")]
    Listen {
        /// What was being done, naming the address and the key.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Entry point: `Hub::builder()`.
pub struct Hub;

impl Hub {
    /// A builder that knows the `memory` backend and nothing else yet.
    pub fn builder() -> HubBuilder {
        let mut registry = Registry::default();
        registry.backend::<MemoryConfig>();
        HubBuilder {
            registry,
            resources: Resources::new(),
            env_overrides: true,
            hooks: Vec::new(),
        }
    }
}

/// Registers types and shared resources; then runs the CLI or a configuration.
pub struct HubBuilder {
    registry: Registry,
    resources: Resources,
    env_overrides: bool,
    hooks: Vec<ResourceHook>,
}

/// A [`HubBuilder::resource_async`] hook: adds its resource to what it is given.
type ResourceHook = Box<
    dyn FnOnce(
            Resources,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<Resources, BoxError>> + Send>>
        + Send,
>;

impl HubBuilder {
    /// Registers the stock types: consumers `echo`, `delay`, `reply`, `exec`, `http`,
    /// `notify`, `postgres`; resources `http_client`, `postgres_pool`; producer `ticker`; backends `zeromq` and `amqp` (`memory` is always
    /// there).
    pub fn stock(self) -> Self {
        self.backend::<hub_zeromq::ZeroMqConfig>()
            .backend::<hub_amqp::AmqpConfig>()
            .consumer::<hub_exec::ExecConfig>()
            .consumer::<hub_http::HttpConfig>()
            .consumer::<hub_notify::NotifyConfig>()
            .resource_type::<hub_http::HttpClientConfig>()
            .consumer::<hub_postgres::PostgresStoreConfig>()
            .resource_type::<hub_postgres::PgPoolConfig>()
            .consumer::<stock::EchoConfig>()
            .consumer::<stock::DelayConfig>()
            .consumer::<stock::ReplyConfig>()
            .producer::<stock::TickerConfig>()
    }

    /// Registers a consumer type (`type = C::TYPE`).
    pub fn consumer<C: ConsumerConfig>(mut self) -> Self {
        self.registry.consumer::<C>();
        self
    }

    /// Registers a producer type.
    pub fn producer<P: ProducerConfig>(mut self) -> Self {
        self.registry.producer::<P>();
        self
    }

    /// Registers a shared resource type (`[resources.<id>] type = R::TYPE`).
    pub fn resource_type<R: ResourceConfig>(mut self) -> Self {
        self.registry.resource::<R>();
        self
    }

    /// Registers a backend type.
    pub fn backend<B: BackendConfig>(mut self) -> Self {
        self.registry.backend::<B>();
        self
    }

    /// Adds a shared resource (a database pool, an HTTP client) that every consumer and producer
    /// can fetch with `cx.resource::<T>()`.
    pub fn resource<T: Any + Send + Sync>(mut self, value: T) -> Self {
        self.resources = self.resources.with(value);
        self
    }

    /// The registered type names: `(consumers, producers, backends, resources)`, each with its
    /// description.
    pub fn types(&self) -> [Vec<(&'static str, &'static str)>; 4] {
        fn list<B>(
            m: &std::collections::BTreeMap<&'static str, registry::Kind<B>>,
        ) -> Vec<(&'static str, &'static str)> {
            m.iter().map(|(k, v)| (*k, v.description)).collect()
        }
        [
            list(&self.registry.consumers),
            list(&self.registry.producers),
            list(&self.registry.backends),
            list(&self.registry.resources),
        ]
    }

    /// Whether `HUB_<SECTION>__<KEY>` environment variables override the configuration
    /// (default: yes, as the CLI does). Tests turn it off so the environment they run in
    /// cannot change what they check.
    pub fn env_overrides(mut self, on: bool) -> Self {
        self.env_overrides = on;
        self
    }

    /// Reads and validates a configuration against the registered types (the TOML, every
    /// section and key, each part's settings read into its type) without building any part:
    /// what [`HubBuilder::check`] does first.
    ///
    /// # Errors
    /// Every problem found, at once.
    pub fn load(&self, source: &ConfigSource) -> Result<Config, ConfigErrors> {
        config::load(source, &self.registry, self.env_overrides)
    }

    /// Reads and validates a configuration, and builds every part of it, as `hub check` and
    /// [`HubBuilder::run`] do (each `build` runs, with this builder's resources; nothing
    /// connects). A settings value that only `build` refuses fails here too.
    ///
    /// # Errors
    /// Every problem found, at once.
    pub fn check(&self, source: &ConfigSource) -> Result<Config, ConfigErrors> {
        // Every part that reads is built, even when others have problems, so that what only
        // `build` sees is reported in the same round. Building consumes the parts, so the
        // configuration is read again for the caller.
        let (probe, mut issues) = config::load_partial(source, &self.registry, self.env_overrides)?;
        match self.assemble(probe) {
            Ok(engine) if issues.is_empty() => {
                if let Err(e) = engine.build() {
                    issues.push(ConfigIssue {
                        source: source.to_string(),
                        key: String::new(),
                        message: e.to_string(),
                    });
                }
            }
            Ok(_) => {}
            Err(ConfigErrors(more)) => issues.extend(more),
        }
        if !issues.is_empty() {
            return Err(ConfigErrors(issues));
        }
        config::load(source, &self.registry, self.env_overrides)
    }

    fn assemble(&self, config: Config) -> Result<EngineBuilder, ConfigErrors> {
        let mut issues = Vec::new();
        let source = config.source.to_string();
        let mut issue = |key: String, message: String| {
            issues.push(ConfigIssue {
                source: source.clone(),
                key,
                message,
            });
        };
        // Resources first: consumers and producers find them by id when they are built.
        let mut resources = self.resources.clone();
        for id in config.broken_resources {
            resources.add_broken(id);
        }
        for r in config.resources {
            match (r.build)(&r.id) {
                Ok((type_name, value)) => resources.add_named(r.id, type_name, value),
                Err(e) => {
                    issue(format!("resources.{}", r.id), e.to_string());
                    resources.add_broken(r.id);
                }
            }
        }
        let mut engine = EngineBuilder::new(config.hub.name.clone())
            .max_queued_bytes(config.hub.max_queued_bytes)
            .live_tail(config.http.live_tail, config.http.live_tail_bytes)
            .resources(resources.clone());
        for b in config.backends {
            match (b.build)(&b.id) {
                Ok(backend) => engine = engine.backend(b.id, backend),
                Err(e) => issue(format!("backends.{}", b.id), e.to_string()),
            }
        }
        for p in config.producers {
            match (p.build)(&resources) {
                Ok(producer) => engine = engine.producer(p.id, p.backend, producer),
                Err(e) => issue(format!("producers.{}.settings", p.id), e.to_string()),
            }
        }
        for c in config.consumers {
            match (c.build)(&resources) {
                Ok(consumer) => {
                    let spec = ConsumerSpec {
                        name: c.id,
                        backend: c.backend,
                        patterns: c.topics,
                        options: c.options,
                        dead_letter: c.dead_letter,
                    };
                    engine = engine.consumer(spec, consumer);
                }
                Err(e) => issue(format!("consumers.{}.settings", c.id), e.to_string()),
            }
        }
        if issues.is_empty() {
            Ok(engine)
        } else {
            Err(ConfigErrors(issues))
        }
    }

    /// Runs a configuration until `shutdown` resolves, then drains within `[hub] shutdown_grace`,
    /// serving `/metrics`, `/live` and `/ready` on `listener` (already bound, so a test or an
    /// embedding program can pass port 0 and read the address first; `[http] listen` is only
    /// what the CLI binds). Each run has its own metrics registry: no process-global recorder,
    /// so several hubs can run in one process, each with its own counts.
    ///
    /// # Errors
    /// A configuration that does not build, a consumer that does not start, or a backend that
    /// failed for good.
    pub async fn run(
        self,
        config: Config,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<ShutdownReport, RunError> {
        let grace = config.hub.shutdown_grace;
        let source = config.source.to_string();
        let listen = listener.local_addr().map_err(|source| RunError::Listen {
            context: "reading the listener's address".into(),
            source,
        })?;
        let limits = http::Limits {
            connections: config.http.max_connections.max(1),
            body_bytes: config.http.max_body_bytes,
            idle: config
                .http
                .idle_timeout
                .max(std::time::Duration::from_millis(100)),
            hosts: http::HostPolicy::new(config.http.allowed_hosts.as_deref(), listen),
        };
        let catalog = api::Catalog {
            name: config.hub.name.clone(),
            config: source.clone(),
            started: std::time::Instant::now(),
            started_at: hub_core::Timestamp::now(),
            backends: config
                .backends
                .iter()
                .map(|b| (b.id.clone(), b.kind.clone()))
                .collect(),
            consumers: config
                .consumers
                .iter()
                .map(|c| api::ConsumerEntry {
                    id: c.id.clone(),
                    kind: c.kind.clone(),
                    backend: c.backend.clone(),
                    topics: c.topics.iter().map(|p| p.as_str().to_owned()).collect(),
                    dead_letters: dead_letters_of(&config, c),
                })
                .collect(),
            // Read (and checked) when the configuration was loaded.
            admin_token: config
                .http
                .admin_token
                .as_ref()
                .and_then(|t| t.resolve().ok()),
            live_tail: config.http.live_tail,
        };
        let gateway = config.gateway.clone();
        let engine = self.assemble(config)?.build()?;
        let metrics = engine.metrics();
        let mut running = engine.start().await?;
        if let Some(gw) = &gateway
            && let Some(to) = &gw.config().forward_to
            && let Some(publisher) = running.publisher(to)
        {
            gw.set_forward(to, publisher);
        }
        let stop_http = CancellationToken::new();
        let writable = catalog.admin_token.is_some();
        let server = tokio::spawn(http::serve(
            listener,
            limits,
            api::Api {
                catalog: std::sync::Arc::new(catalog),
                dispatcher: running.dispatcher().clone(),
                readiness: running.readiness_probe(),
                metrics,
            },
            gateway.as_ref().map(hub_gateway::Gateway::routes),
            stop_http.clone(),
        ));
        info!(config = %source, %listen, api_writable = writable, "Serving /metrics, /live, /ready, the JSON API under /api/v1/ and (from loopback) /dead-letters/requeue.");
        let fatal = tokio::select! {
            () = shutdown => None,
            e = running.fatal() => e,
        };
        let report = running.shutdown(grace).await;
        stop_http.cancel();
        let _ = server.await;
        match fatal {
            Some(e) => Err(RunError::Backend(e)),
            None => Ok(report),
        }
    }

    /// The CLI's `run`: binds `[http] listen`, stops on the first SIGINT/SIGTERM.
    async fn run_until_signal(self, config: Config) -> Result<ShutdownReport, RunError> {
        let listen = config.http.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| RunError::Listen {
                context: format!("cannot listen on {listen} ([http] listen)"),
                source,
            })?;
        let stop = CancellationToken::new();
        // Ours only while the hub runs: in the caller's runtime, Ctrl-C is theirs again after.
        let watcher = tokio::spawn(watch_signals(stop.clone()));
        let result = self
            .run(config, listener, async move { stop.cancelled().await })
            .await;
        watcher.abort();
        result
    }

    /// Parses the command line and runs it on a runtime of its own; returns the process exit
    /// code. In a program that already runs tokio (`#[tokio::main]`), use
    /// [`HubBuilder::run_cli_async`] instead.
    pub fn run_cli(self) -> ExitCode {
        match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.run_cli_async()),
            Err(e) => {
                eprintln!("error: cannot start the tokio runtime: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }

    /// [`HubBuilder::run_cli`] inside the caller's tokio runtime (multi-threaded), so that a
    /// `#[tokio::main]` program can set things up asynchronously first (or with
    /// [`HubBuilder::resource_async`]):
    ///
    /// ```ignore
    /// #[tokio::main]
    /// async fn main() -> std::process::ExitCode {
    ///     let pool = my_crate::connect().await;
    ///     hub::Hub::builder().stock().resource(pool).run_cli_async().await
    /// }
    /// ```
    pub async fn run_cli_async(self) -> ExitCode {
        let cli = Cli::parse();
        telemetry::init_logs(cli.log_format);
        // Resources made by the program are needed only by the commands that build parts.
        let builds = matches!(
            cli.command,
            Command::Run { .. } | Command::Check { .. } | Command::Route { .. }
        );
        let this = if builds {
            match self.prepare().await {
                Ok(this) => this,
                Err(e) => {
                    error!(error = %e, "A resource could not be set up.");
                    eprintln!("error: setting up a resource: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            }
        } else {
            self
        };
        this.run_command(cli.command).await
    }

    /// Adds a shared resource made asynchronously (connecting a database pool, say), made once
    /// before the configuration is checked or run: by [`HubBuilder::run_cli`],
    /// [`HubBuilder::run_cli_async`], or your call of [`HubBuilder::prepare`].
    pub fn resource_async<T, F, Fut>(mut self, make: F) -> Self
    where
        T: Any + Send + Sync,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
    {
        self.hooks.push(Box::new(move |resources: Resources| {
            Box::pin(async move { Ok(resources.with(make().await?)) })
        }));
        self
    }

    /// Runs the [`HubBuilder::resource_async`] hooks, in the order they were added, and keeps
    /// what they made. Call it before [`HubBuilder::check`] or [`HubBuilder::run`] when you
    /// use those directly.
    ///
    /// # Errors
    /// The first hook's error.
    pub async fn prepare(mut self) -> Result<Self, BoxError> {
        for hook in std::mem::take(&mut self.hooks) {
            self.resources = hook(self.resources).await?;
        }
        Ok(self)
    }

    async fn run_command(self, command: Command) -> ExitCode {
        match command {
            Command::Consumers => self.print_types(),
            Command::Tail {
                connect,
                topic,
                format,
                count,
            } => cli_tools::tail(&connect, &topic, format, count).await,
            Command::Import {
                from:
                    ImportFrom::FedoraMessaging {
                        config,
                        python,
                        adapter,
                    },
            } => import::fedora_messaging(&config, &python, &adapter),
            Command::Publish {
                bind,
                connect,
                amqp,
                exchange,
                topic,
                json,
                format,
                wait,
            } => match amqp {
                Some(url) => cli_tools::publish_amqp(&url, &exchange, &topic, &json).await,
                None => cli_tools::publish(bind, connect, &topic, &json, format, wait).await,
            },
            Command::Dead { action } => self.dead(action).await,
            Command::Top { url, token } => top::run(url, token).await,
            Command::Route { topic, config } => {
                let source = source(config);
                match self.check(&source) {
                    Ok(c) => route(&c, &topic),
                    Err(e) => {
                        eprint!("{e}");
                        ExitCode::from(EXIT_CONFIG)
                    }
                }
            }
            Command::Check { config } => self.check_cli(&source(config)),
            Command::Run { config } => self.run_cli_config(&source(config)).await,
        }
    }

    /// `hub dead list|requeue`.
    async fn dead(&self, action: DeadAction) -> ExitCode {
        let (select, rest) = match action {
            DeadAction::List { select, newest } => (select, Err(newest)),
            DeadAction::Requeue { select, hub, token } => (select, Ok((hub, token))),
        };
        let filter = dead::Filter {
            consumer: select.consumer,
            reason: select.reason,
            limit: select.limit,
        };
        let from = source(select.config);
        let config = || {
            self.check(&from)
                .map(|c| (c, from.clone()))
                .map_err(|e| e.to_string())
        };
        match rest {
            Err(newest) => dead::list(&select.source, &filter, newest, config).await,
            Ok((hub, token)) => {
                let to = dead::HubAddress { url: hub, token };
                dead::requeue(&select.source, &filter, to, config).await
            }
        }
    }

    /// `hub consumers`.
    fn print_types(&self) -> ExitCode {
        let [consumers, producers, backends, resources] = self.types();
        let width = [&consumers, &producers, &backends, &resources]
            .iter()
            .flat_map(|l| l.iter().map(|(name, _)| name.len()))
            .max()
            .unwrap_or(0);
        for (title, list) in [
            ("consumers", consumers),
            ("producers", producers),
            ("backends", backends),
            ("resources", resources),
        ] {
            if list.is_empty() {
                continue;
            }
            println!("{title}:");
            for (name, description) in list {
                println!("  {name:<width$}  {description}");
            }
        }
        ExitCode::SUCCESS
    }

    /// `hub check`.
    fn check_cli(&self, source: &ConfigSource) -> ExitCode {
        match self.check(source) {
            Ok(config) => {
                print!("{}", summarize(&config));
                println!("{source}: OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        }
    }

    /// `hub run`.
    async fn run_cli_config(self, source: &ConfigSource) -> ExitCode {
        if matches!(source, ConfigSource::Embedded) {
            info!("No --config given: running the embedded default (config/hub.toml).");
        }
        // Read only: `run` builds every part (once), reporting what `build` refuses as
        // `hub check` would.
        let config = match config::load(source, &self.registry, self.env_overrides) {
            Ok(c) => c,
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        match self.run_until_signal(config).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(RunError::Config(c)) => {
                eprint!("{c}");
                ExitCode::from(EXIT_CONFIG)
            }
            Err(e) => {
                let e = with_causes(&e);
                error!(error = %e, "Hub stopped with an error.");
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

/// An error and its causes, `: `-separated.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn source(config: Option<PathBuf>) -> ConfigSource {
    config.map_or(ConfigSource::Embedded, ConfigSource::File)
}

/// `hub route`: every consumer whose patterns match `topic`, with its backend and the matching
/// patterns, as the dispatcher would route it; exit 1 when none matches, 2 for a topic with
/// wildcards or empty words.
fn route(c: &Config, topic: &str) -> ExitCode {
    match hub_core::Pattern::new(topic) {
        Ok(p) if p.is_literal() => {}
        Ok(_) => {
            eprintln!("topic {topic:?}: a topic has no wildcards (* and # are for patterns)");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("topic {topic:?}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let mut reached = 0;
    for cs in &c.consumers {
        let matching: Vec<&str> = cs
            .topics
            .iter()
            .filter(|p| p.matches(topic))
            .map(|p| p.as_str())
            .collect();
        if !matching.is_empty() {
            reached += 1;
            println!(
                "consumer {:<16} type={:<8} backend={} patterns={matching:?}",
                cs.id, cs.kind, cs.backend
            );
        }
    }
    if reached == 0 {
        eprintln!("no consumer's patterns match {topic:?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Where `consumer`'s dead letters go: its own or its backend's `dead_letter`, else an AMQP
/// backend's dead-letter queue, else nowhere.
fn dead_letters_of(c: &Config, consumer: &config::ConsumerEntry) -> api::DeadLetters {
    use hub_engine::dead_letter::DeadLetterTarget;
    match &consumer.dead_letter {
        Some(DeadLetterTarget::File(p)) => api::DeadLetters::File(p.clone()),
        Some(DeadLetterTarget::Topic { topic, backend }) => api::DeadLetters::Topic {
            topic: topic.clone(),
            backend: backend.clone().unwrap_or_else(|| consumer.backend.clone()),
        },
        None if c
            .backends
            .iter()
            .any(|b| b.id == consumer.backend && b.kind == "amqp") =>
        {
            api::DeadLetters::Queue(format!("{}.dead-letters", c.hub.name))
        }
        None => api::DeadLetters::None,
    }
}

fn summarize(c: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "hub {:?}: http listen {}, shutdown_grace {:?}",
        c.hub.name, c.http.listen, c.hub.shutdown_grace
    );
    for r in &c.resources {
        let _ = writeln!(s, "resource {:<16} type={}", r.id, r.kind);
    }
    for b in &c.backends {
        let _ = writeln!(s, "backend  {:<16} type={}", b.id, b.kind);
    }
    for p in &c.producers {
        let _ = writeln!(
            s,
            "producer {:<16} type={:<8} backend={}",
            p.id, p.kind, p.backend
        );
    }
    for cs in &c.consumers {
        let topics: Vec<&str> = cs.topics.iter().map(|t| t.as_str()).collect();
        let _ = writeln!(
            s,
            "consumer {:<16} type={:<8} backend={} topics={:?} concurrency={} queue_capacity={} when_full={} timeout={}",
            cs.id,
            cs.kind,
            cs.backend,
            topics,
            cs.options.concurrency,
            cs.options.queue_capacity,
            match cs.options.when_full {
                hub_core::WhenFull::Block => "block",
                hub_core::WhenFull::DropNewest => "drop_newest",
                hub_core::WhenFull::DropOldest => "drop_oldest",
            },
            cs.options
                .timeout
                .map_or_else(|| "none".to_owned(), |t| format!("{t:?}"))
        );
        let retry = cs.options.retry.map_or_else(
            || "backend default".to_owned(),
            |r| {
                format!(
                    "max_attempts={} delay={:?} max_delay={:?}{}",
                    r.max_attempts,
                    r.delay,
                    r.max_delay,
                    if r.in_order { " in_order" } else { "" }
                )
            },
        );
        let rate = cs.options.rate_limit.map_or_else(
            || "none".to_owned(),
            |l| format!("{}/{:?} burst={}", l.rate, l.per, l.burst),
        );
        let broker = c
            .backends
            .iter()
            .any(|b| b.id == cs.backend && b.kind == "amqp");
        let dead = match &cs.dead_letter {
            None if broker => "the backend's dead-letter queue".to_owned(),
            None => "logged (no sink)".to_owned(),
            Some(hub_engine::dead_letter::DeadLetterTarget::File(p)) => {
                format!("file {}", p.display())
            }
            Some(hub_engine::dead_letter::DeadLetterTarget::Topic { topic, backend }) => {
                format!(
                    "topic {topic} on {}",
                    backend.as_deref().unwrap_or(&cs.backend)
                )
            }
        };
        let batch = if cs.options.batch_size > 1 {
            format!(
                "; batch_size: {} batch_delay: {:?}",
                cs.options.batch_size, cs.options.batch_delay
            )
        } else {
            String::new()
        };
        let q = cs.options.broker_queue;
        let queue = if broker && cs.options.durable {
            let mut t = format!("; queue_type: {}", q.kind.as_str());
            if let Some(l) = q.delivery_limit {
                let _ = write!(t, " delivery_limit={l}");
            }
            if q.single_active_consumer {
                t.push_str(" single_active_consumer");
            }
            if q.kind == hub_core::QueueType::Stream {
                let _ = write!(t, " offset={:?}", q.offset);
            }
            t
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "         {:<16} retry: {retry}; rate_limit: {rate}; dead letters: {dead}{batch}{queue}",
            ""
        );
    }
    s
}

/// First SIGINT/SIGTERM/SIGHUP: graceful stop. Second: exit at once with
/// [`EXIT_INTERRUPTED`], taking the exec programs (in process groups of their own) with it.
async fn watch_signals(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut hangup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "Cannot listen for SIGTERM and SIGHUP; only SIGINT stops the hub.");
            std::future::pending::<()>().await;
            return;
        }
    };
    for n in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hangup.recv() => {}
        }
        if n == 0 {
            info!("Signal received: stopping intake and draining (send it again to exit at once).");
            stop.cancel();
        }
    }
    let programs = hub_exec::kill_all();
    eprintln!("second signal: exiting without draining ({programs} exec program(s) killed)");
    std::process::exit(i32::from(EXIT_INTERRUPTED));
}

/// `hub`: runs message consumers, each on its own bounded queue, with backlog metrics.
#[derive(Debug, Parser)]
#[command(
    name = "hub",
    version,
    about = "Runs message consumers, each on its own bounded queue, and measures how far behind each one is.",
    after_help = "Exit codes: 0 success (also after a graceful shutdown), 1 runtime failure, 2 invalid configuration or usage, 130 second signal during shutdown.\nEnvironment: HUB_CONFIG (the --config file), HUB_<SECTION>__<KEY> overrides a key (HUB_HTTP__LISTEN=127.0.0.1:9999), RUST_LOG filters logs."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub until SIGINT/SIGTERM, then drain within [hub] shutdown_grace.
    Run {
        /// TOML configuration file; without it, the embedded default (config/hub.toml) runs.
        #[arg(short, long, env = "HUB_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print each consumer with its type, topics and backend; connects to nothing.
    Check {
        /// TOML configuration file; without it, the embedded default is checked.
        #[arg(short, long, env = "HUB_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Routing dry-run: print which consumers a topic reaches, with the patterns that match it; exit 1 when none does.
    Route {
        /// The topic, such as org.fedoraproject.prod.bodhi.update.comment.
        topic: String,
        /// TOML configuration file; without it, the embedded default.
        #[arg(short, long, env = "HUB_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List the registered consumer, producer and backend types.
    Consumers,
    /// Print every message from a ZeroMQ PUB endpoint as one JSON line (like fedmsg-tail).
    Tail {
        /// PUB endpoint to connect to, such as tcp://127.0.0.1:9940.
        #[arg(long)]
        connect: String,
        /// Only messages matching this pattern (repeatable; `*` one word, `#` any).
        #[arg(long)]
        topic: Vec<String>,
        /// Wire format.
        #[arg(long, value_enum, default_value = "fedmsg")]
        format: cli_tools::WireFormat,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// A terminal dashboard of a running hub's consumers (its JSON API): backlog, age, catch-up, rates; q quits.
    Top {
        /// The hub's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:9898")]
        url: String,
        /// The hub's `[http] admin_token`, to pause (p) and resume (r) the selected consumer.
        #[arg(long, env = "HUB_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Dead letters: `list` counts them by consumer and reason; `requeue` sends them back to be consumed again.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Print a hub configuration made from another tool's configuration (`fedora-messaging CONFIG`).
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
    /// Send one message: over ZeroMQ (like fedmsg-logger) or to RabbitMQ (like fedora-messaging publish).
    #[command(group(clap::ArgGroup::new("peer").required(true).args(["bind", "connect", "amqp"])))]
    Publish {
        /// Publish to this AMQP broker (amqp://user:pass@host/vhost), confirmed and mandatory.
        #[arg(long)]
        amqp: Option<String>,
        /// AMQP exchange (with --amqp).
        #[arg(long, default_value = "amq.topic")]
        exchange: String,
        /// Bind a PUB socket here and wait for a subscriber to connect first.
        #[arg(long)]
        bind: Option<String>,
        /// Connect to a SUB socket that binds here (a relay).
        #[arg(long)]
        connect: Option<String>,
        /// Topic of the message.
        topic: String,
        /// JSON body of the message.
        json: String,
        /// Wire format.
        #[arg(long, value_enum, default_value = "fedmsg")]
        format: cli_tools::WireFormat,
        /// How long to wait for a subscriber (with --bind) or a connection (with --connect).
        #[arg(long, default_value = "10s", value_parser = hub_core::duration::parse)]
        wait: std::time::Duration,
    },
}

/// Which dead letters (`hub dead ...`).
#[derive(Debug, clap::Args)]
struct DeadSelect {
    /// A dead-letter file (JSON lines), or the id of a backend or consumer in the configuration
    /// (an AMQP backend: its dead-letter queue; otherwise the dead-letter file configured for it).
    source: String,
    /// Only this consumer's letters.
    #[arg(long)]
    consumer: Option<String>,
    /// Only letters whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// At most this many letters.
    #[arg(long)]
    limit: Option<usize>,
    /// TOML configuration file (to resolve a backend or consumer id, and the hub's HTTP address).
    #[arg(short, long, env = "HUB_CONFIG")]
    config: Option<PathBuf>,
}

/// `hub dead ...`.
#[derive(Debug, Subcommand)]
enum DeadAction {
    /// Count dead letters by consumer and reason, and show the newest few.
    List {
        #[command(flatten)]
        select: DeadSelect,
        /// How many of the newest to show.
        #[arg(long, default_value_t = 5)]
        newest: usize,
    },
    /// Send dead letters back to their consumers, removing each from its source only once it was
    /// handed back (a file: through the running hub, which answers once the consumer is done;
    /// an AMQP dead-letter queue: republished to the consumer's queue, confirmed).
    Requeue {
        #[command(flatten)]
        select: DeadSelect,
        /// The running hub's HTTP address (default: `[http] listen` of the configuration).
        #[arg(long)]
        hub: Option<String>,
        /// The hub's `[http] admin_token`, which a hub that has one asks for (default: the
        /// configuration's).
        #[arg(long, env = "HUB_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// `hub import ...`.
#[derive(Debug, Subcommand)]
enum ImportFrom {
    /// From a fedora-messaging config file: its AMQP url, TLS files, qos, bindings and durable
    /// queues, and an exec consumer running its callback unchanged (printed on stdout; what
    /// cannot be translated is said on stderr).
    FedoraMessaging {
        /// The fedora-messaging config file (TOML).
        config: PathBuf,
        /// Where the hub's fedora-messaging adapter is (`crates/hub-exec/python/hub_fm_adapter.py`
        /// in the hub's source).
        #[arg(long, default_value = "hub_fm_adapter.py")]
        adapter: String,
        /// The Python that has fedora-messaging and the callback's package.
        #[arg(long, default_value = "python3")]
        python: String,
    },
}
