//! `type = "postgres"`: every message stored as one row, a batch in one transaction.

use std::sync::Arc;

use deadpool_postgres::{Pool, PoolError};
use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Headers, Message, Resources,
    Timestamp, Value, async_trait,
};
use serde::Deserialize;
use tokio_postgres::types::Json;

use crate::schema::{self, TableName};

/// `[consumers.<id>.settings]` for `type = "postgres"`: stores every message it receives in a
/// table (`id`, `topic`, `sent_at`, `received_at`, `headers`, `body`), idempotent by id.
///
/// ```toml
/// [consumers.store]
/// type = "postgres"
/// topics = ["#"]
/// batch_size = 500          # rows per transaction
/// batch_delay = "50ms"
/// [consumers.store.settings]
/// pool = "main"             # a [resources.main] of type "postgres_pool"
/// table = "messages"        # or "schema.table"
/// create_schema = true      # create the table (versioned migration) if absent
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresStoreConfig {
    /// The `[resources.<id>]` of type `postgres_pool` to write through. Required.
    pub pool: String,
    /// The table, `name` or `schema.name` (plain identifiers, folded to lower case). Default
    /// `messages`.
    #[serde(default = "default_table")]
    pub table: String,
    /// Create the table and its indexes at start when absent, through the versioned migration
    /// recorded in `hub_schema_migrations` (default false: the table must exist).
    #[serde(default)]
    pub create_schema: bool,
}

fn default_table() -> String {
    "messages".into()
}

impl ConsumerConfig for PostgresStoreConfig {
    const TYPE: &'static str = "postgres";
    const DESCRIPTION: &'static str =
        "stores every message in a PostgreSQL table (a batch per transaction, idempotent by id)";

    fn build(self, resources: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        let table = TableName::parse(&self.table)?;
        let pool = resources.named::<Pool>(&self.pool)?;
        Ok(Arc::new(PostgresStore::new(
            pool,
            self.pool,
            table,
            self.create_schema,
        )))
    }
}

/// The store consumer (what [`PostgresStoreConfig::build`] makes).
pub struct PostgresStore {
    pool: Arc<Pool>,
    pool_id: String,
    table: TableName,
    create_schema: bool,
    /// All rows of a batch in one statement: arrays unnested.
    insert_many: String,
    /// One row (the row-by-row redo, and a batch of one).
    insert_one: String,
    /// Set once the table was migrated (with `create_schema`), checked and the statements
    /// prepared: at start, or, when PostgreSQL could not be reached then, before the first batch
    /// that reaches it.
    ready: tokio::sync::OnceCell<()>,
}

/// Why the table could not be set up.
enum Setup {
    /// No connection (PostgreSQL down, refused, too slow): try again later.
    Unreachable(String),
    /// The table does not fit, or the database refused to create it: a configuration error.
    Table(String),
}

impl PostgresStore {
    /// A store writing to `table` through `pool` (named `pool_id` in messages).
    pub fn new(pool: Arc<Pool>, pool_id: String, table: TableName, create_schema: bool) -> Self {
        let t = table.sql();
        Self {
            insert_many: format!(
                "INSERT INTO {t} (id, topic, sent_at, received_at, headers, body) \
                 SELECT id, topic, sent_at, $4, headers, body \
                 FROM unnest($1::text[], $2::text[], $3::timestamptz[], $5::jsonb[], $6::jsonb[]) \
                   AS m(id, topic, sent_at, headers, body) \
                 ON CONFLICT (id) DO NOTHING"
            ),
            insert_one: format!(
                "INSERT INTO {t} (id, topic, sent_at, received_at, headers, body) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING"
            ),
            pool,
            pool_id,
            table,
            create_schema,
            ready: tokio::sync::OnceCell::new(),
        }
    }

    /// Migrates (with `create_schema`) and checks the table, and prepares the statements.
    /// `who` starts the error messages (`consumer ID` at start).
    async fn set_up(&self, who: &str) -> Result<(), Setup> {
        let mut client = self.pool.get().await.map_err(|e| {
            Setup::Unreachable(format!(
                "{who}: cannot reach PostgreSQL: {}",
                self.pool_error(&e)
            ))
        })?;
        if self.create_schema {
            let applied = schema::migrate(&mut client, &self.table)
                .await
                .map_err(Setup::Table)?;
            for version in applied {
                tracing::info!(
                    store = who,
                    table = %self.table,
                    version,
                    "store schema migrated"
                );
            }
        } else {
            schema::check(&client, &self.table)
                .await
                .map_err(Setup::Table)?;
        }
        for sql in [&self.insert_many, &self.insert_one] {
            client.prepare_cached(sql).await.map_err(|e| {
                Setup::Table(format!("table {}: {}", self.table, describe_pg_error(&e)))
            })?;
        }
        Ok(())
    }

    /// Stores `batch` and gives one result per message, in order: all `Ok` once the
    /// transaction committed; each row the database refused on its own account `invalid`;
    /// everything transient when the batch could not be committed.
    pub async fn store(&self, batch: &[Message]) -> Vec<Result<(), ConsumeError>> {
        if batch.is_empty() {
            return Vec::new();
        }
        if self.ready.get().is_none() {
            // PostgreSQL was down at start: set the table up now, once, before storing.
            let set_up = self.ready.get_or_try_init(|| async {
                self.set_up(&format!("postgres store {}", self.table)).await
            });
            if let Err(Setup::Unreachable(why) | Setup::Table(why)) = set_up.await {
                return batch
                    .iter()
                    .map(|_| Err(ConsumeError::transient(why.clone())))
                    .collect();
            }
        }
        match self.try_store(batch).await {
            Ok(rows) => rows
                .into_iter()
                .map(|r| r.map_err(ConsumeError::invalid))
                .collect(),
            Err(why) => {
                let text = format!(
                    "postgres store {}: {} message(s) not stored, nothing committed: {why}",
                    self.table,
                    batch.len()
                );
                batch
                    .iter()
                    .map(|_| Err(ConsumeError::transient(text.clone())))
                    .collect()
            }
        }
    }

    /// `Ok(per row: Ok, or the database's reason for refusing that row)` once committed;
    /// `Err(reason)` when nothing was committed.
    async fn try_store(&self, batch: &[Message]) -> Result<Vec<Result<(), String>>, String> {
        let mut client = self.pool.get().await.map_err(|e| self.pool_error(&e))?;
        let received = Timestamp::now();
        if let [msg] = batch {
            // One statement is its own transaction: committed when it returns.
            let stmt = client
                .prepare_cached(&self.insert_one)
                .await
                .map_err(|e| describe_pg_error(&e))?;
            return match client
                .execute(&stmt, &row_params(msg, &received).as_refs())
                .await
            {
                Ok(_) => Ok(vec![Ok(())]),
                Err(e) if is_row_error(&e) => Ok(vec![Err(self.row_refused(msg, &e))]),
                Err(e) => Err(describe_pg_error(&e)),
            };
        }
        let stmt = client
            .prepare_cached(&self.insert_many)
            .await
            .map_err(|e| describe_pg_error(&e))?;
        let columns = Columns::of(batch);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &columns.ids,
            &columns.topics,
            &columns.sent,
            &received,
            &columns.headers,
            &columns.bodies,
        ];
        let mut tx = client
            .transaction()
            .await
            .map_err(|e| describe_pg_error(&e))?;
        // The savepoint and the insert go out together (one round trip): the savepoint lets a
        // refused batch be redone row by row in this same transaction.
        let (savepoint, inserted) = tokio::join!(
            biased;
            tx.batch_execute("SAVEPOINT hub_batch"),
            tx.execute(&stmt, &params)
        );
        savepoint.map_err(|e| describe_pg_error(&e))?;
        match inserted {
            Ok(_) => {
                tx.commit().await.map_err(|e| describe_pg_error(&e))?;
                return Ok(batch.iter().map(|_| Ok(())).collect());
            }
            Err(e) if is_row_error(&e) => {
                tracing::debug!(
                    table = %self.table,
                    error = %describe_pg_error(&e),
                    "a row of the batch was refused; storing the batch row by row"
                );
            }
            Err(e) => return Err(describe_pg_error(&e)),
        }
        tx.batch_execute("ROLLBACK TO SAVEPOINT hub_batch")
            .await
            .map_err(|e| describe_pg_error(&e))?;
        let one = tx
            .prepare_cached(&self.insert_one)
            .await
            .map_err(|e| describe_pg_error(&e))?;
        let mut out = Vec::with_capacity(batch.len());
        for msg in batch {
            let row = row_params(msg, &received);
            let sp = tx
                .savepoint("hub_row")
                .await
                .map_err(|e| describe_pg_error(&e))?;
            match sp.execute(&one, &row.as_refs()).await {
                Ok(_) => {
                    sp.commit().await.map_err(|e| describe_pg_error(&e))?;
                    out.push(Ok(()));
                }
                Err(e) if is_row_error(&e) => {
                    sp.rollback().await.map_err(|e| describe_pg_error(&e))?;
                    out.push(Err(self.row_refused(msg, &e)));
                }
                Err(e) => return Err(describe_pg_error(&e)),
            }
        }
        tx.commit().await.map_err(|e| describe_pg_error(&e))?;
        Ok(out)
    }

    fn row_refused(&self, msg: &Message, e: &tokio_postgres::Error) -> String {
        format!(
            "postgres store {}: message {} refused by the database: {}",
            self.table,
            msg.id(),
            describe_pg_error(e)
        )
    }

    fn pool_error(&self, e: &PoolError) -> String {
        let why = match e {
            PoolError::Backend(e) => describe_pg_error(e),
            other => other.to_string(),
        };
        format!("pool [resources.{}]: {why}", self.pool_id)
    }
}

/// The batch as one array per column (borrowing from the messages).
struct Columns<'a> {
    ids: Vec<&'a str>,
    topics: Vec<&'a str>,
    sent: Vec<Timestamp>,
    headers: Vec<Json<&'a Headers>>,
    bodies: Vec<Json<&'a Value>>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a [Message]) -> Self {
        let n = batch.len();
        let mut c = Self {
            ids: Vec::with_capacity(n),
            topics: Vec::with_capacity(n),
            sent: Vec::with_capacity(n),
            headers: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
        };
        for m in batch {
            c.ids.push(m.id());
            c.topics.push(m.topic());
            c.sent.push(m.timestamp());
            c.headers.push(Json(m.headers()));
            c.bodies.push(Json(m.body()));
        }
        c
    }
}

/// One row's parameters for `insert_one`.
struct Row<'a> {
    id: &'a str,
    topic: &'a str,
    sent: Timestamp,
    received: &'a Timestamp,
    headers: Json<&'a Headers>,
    body: Json<&'a Value>,
}

fn row_params<'a>(msg: &'a Message, received: &'a Timestamp) -> Row<'a> {
    Row {
        id: msg.id(),
        topic: msg.topic(),
        sent: msg.timestamp(),
        received,
        headers: Json(msg.headers()),
        body: Json(msg.body()),
    }
}

impl Row<'_> {
    fn as_refs(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 6] {
        [
            &self.id,
            &self.topic,
            &self.sent,
            self.received,
            &self.headers,
            &self.body,
        ]
    }
}

/// Whether the database refused a statement because of the data of a row (so another row may
/// well go in), rather than because of the connection, the server or the table: SQLSTATE class
/// 22 (data exception: `\u0000` in jsonb is 22P05, a NUL byte in text 22021, a value out of
/// range), class 23 (a constraint of the table: NOT NULL, CHECK, another unique index) and
/// 54000 (a value too large for an index or a jsonb); or a value the client could not encode.
pub(crate) fn is_row_error(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            code.starts_with("22") || code.starts_with("23") || code == "54000"
        }
        None => e.to_string().starts_with("error serializing parameter"),
    }
}

/// An error in words: the database's message with its SQLSTATE and detail, or the client's.
pub(crate) fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                let text = inner.to_string();
                if !s.contains(&text) {
                    s.push_str(&format!(": {text}"));
                }
                source = inner.source();
            }
            s
        }
    }
}

#[async_trait]
impl Consumer for PostgresStore {
    async fn start(&self, cx: &Context) -> Result<(), BoxError> {
        match self.set_up(&format!("consumer {}", cx.name())).await {
            Ok(()) => {
                let _ = self.ready.set(());
                Ok(())
            }
            Err(Setup::Unreachable(why)) => {
                // Not a reason to stay down: messages wait in the queue (its backlog shows) and
                // each batch tries again, with the consumer's retries, until PostgreSQL answers.
                tracing::warn!(
                    consumer = cx.name(),
                    table = %self.table,
                    error = %why,
                    "PostgreSQL unreachable at start; the table is checked when it answers"
                );
                Ok(())
            }
            Err(Setup::Table(why)) => Err(why.into()),
        }
    }

    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.store(std::slice::from_ref(msg))
            .await
            .pop()
            .unwrap_or_else(|| Err(ConsumeError::transient("postgres store: no result")))
    }

    async fn consume_batch(
        &self,
        _cx: &Context,
        batch: &[Message],
    ) -> Vec<Result<(), ConsumeError>> {
        self.store(batch).await
    }
}
