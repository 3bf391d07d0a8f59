//! A consumer that needs a shared resource: counts messages per topic in PostgreSQL, through a
//! `deadpool_postgres::Pool` defined once in the hub's file and shared by every consumer that
//! names it:
//!
//! ```toml
//! [resources.main]
//! type = "postgres_pool"
//! url = "host=127.0.0.1 user=postgres dbname=test"
//! max_size = 8
//!
//! [consumers.count]
//! type = "topic_count"
//! topics = ["org.example.#"]
//! settings = { pool = "main", table = "topic_counts" }
//! ```
//!
//! `topic_count`'s `build` takes the pool with `Resources::named`, so a wrong pool id (or a
//! resource of another type) fails `hub check`, naming the ids configured, instead of failing
//! at the first message.
//!
//! `type = "crash"` panics on every message: it shows how a panic looks in the logs (one
//! structured event, also under `--log-format json`) and that the hub keeps going.

use std::sync::Arc;

use deadpool_postgres::Pool;
use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Message, ResourceConfig, Resources,
    ResultExt, async_trait,
};
use serde::Deserialize;

/// `[resources.<id>]` with `type = "postgres_pool"`: a pool that connects on first use. The
/// type is hub-postgres's (registered by `HubBuilder::stock`), re-exported here: the resource is
/// a `deadpool_postgres::Pool`, which this consumer takes by id.
pub use hub_postgres::PgPoolConfig;

fn default_url() -> String {
    "host=127.0.0.1 user=postgres dbname=test".into()
}

/// `[consumers.<id>.settings]` for `type = "topic_count"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicCountConfig {
    /// The `[resources.<id>]` pool to use. Default `main`.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Table holding `(topic, n)`; created at start if absent. Default `topic_counts`.
    #[serde(default = "default_table")]
    pub table: String,
}

fn default_pool() -> String {
    "main".into()
}

fn default_table() -> String {
    "topic_counts".into()
}

struct TopicCount {
    pool: Arc<Pool>,
    upsert: String,
    create: String,
}

impl ConsumerConfig for TopicCountConfig {
    const TYPE: &'static str = "topic_count";
    const DESCRIPTION: &'static str = "counts messages per topic in PostgreSQL (shared pool)";

    fn build(self, resources: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        let valid = !self.table.is_empty()
            && self
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "table {:?}: use letters, digits and `_` only (it is put in SQL as is)",
                self.table
            )
            .into());
        }
        let t = &self.table;
        Ok(Arc::new(TopicCount {
            pool: resources.named::<Pool>(&self.pool)?,
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (topic text PRIMARY KEY, n bigint NOT NULL)"
            ),
            upsert: format!(
                "INSERT INTO {t} (topic, n) VALUES ($1, 1) ON CONFLICT (topic) DO UPDATE SET n = {t}.n + 1"
            ),
        }))
    }
}

#[async_trait]
impl Consumer for TopicCount {
    async fn start(&self, _cx: &Context) -> Result<(), BoxError> {
        let client = self.pool.get().await?;
        client.batch_execute(&self.create).await?;
        Ok(())
    }

    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        // The database being away is worth a retry: `.transient()` (from `ResultExt`) says so.
        let client = self.pool.get().await.transient()?;
        client
            .execute(&self.upsert, &[&msg.topic()])
            .await
            .transient()?;
        Ok(())
    }
}

/// `type = "crash"`: panics on every message (no settings).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashConfig {}

struct Crash;

impl ConsumerConfig for CrashConfig {
    const TYPE: &'static str = "crash";
    const DESCRIPTION: &'static str = "panics on every message (to see how panics are logged)";

    fn build(self, _: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        Ok(Arc::new(Crash))
    }
}

#[async_trait]
impl Consumer for Crash {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        panic!("crash consumer: message {} on {}", msg.id(), msg.topic());
    }
}

/// A pool on the default database, tried once (for tests and programs that make their pool
/// themselves, with `HubBuilder::resource_async`).
///
/// # Errors
/// A pool that cannot be made, or a database that does not answer.
pub async fn pool() -> Result<Pool, BoxError> {
    let pool = PgPoolConfig::new(default_url()).max_size(8).build("main")?;
    // Fail at set-up, not at the first message, when the database is not there.
    drop(pool.get().await?);
    Ok(pool)
}
