//! PostgreSQL for the hub: the shared pool resource `type = "postgres_pool"`
//! ([`PgPoolConfig`]) and the store consumer `type = "postgres"` ([`PostgresStoreConfig`]),
//! which keeps every message it receives as one row of a table (datanommer's job), a batch per
//! transaction, idempotent by message id.
//!
//! ```toml
//! [resources.main]
//! type = "postgres_pool"
//! url = "host=127.0.0.1 user=hub dbname=hub"
//! max_size = 16
//!
//! [consumers.store]
//! type = "postgres"
//! topics = ["#"]
//! batch_size = 500
//! batch_delay = "50ms"
//! retry = { max_attempts = 10, delay = "1s", max_delay = "1m" }
//! settings = { pool = "main", table = "messages", create_schema = true }
//! ```
//!
//! Every key, the table, the migration and what happens on each kind of failure:
//! `docs/postgres-store.md`.

mod pool;
pub mod schema;
mod store;

pub use pool::{DEFAULT_APPLICATION_NAME, PgPoolConfig, describe as describe_connection};
pub use store::{PostgresStore, PostgresStoreConfig};

/// The pool crate, re-exported: the resource is a [`deadpool_postgres::Pool`], so a consumer of
/// another crate can share it (`resources.named::<hub_postgres::deadpool_postgres::Pool>(id)`).
pub use deadpool_postgres;
/// The client crate under the pool, re-exported.
pub use tokio_postgres;
