//! The store's table: its name, its versioned creation (`create_schema = true`) and the check of
//! its columns at start.

use std::fmt;

use deadpool_postgres::GenericClient;

use crate::store::describe_pg_error;

/// The columns the store writes, with the type `information_schema.columns.data_type` must show.
pub const COLUMNS: [(&str, &str); 6] = [
    ("id", "text"),
    ("topic", "text"),
    ("sent_at", "timestamp with time zone"),
    ("received_at", "timestamp with time zone"),
    ("headers", "jsonb"),
    ("body", "jsonb"),
];

/// The newest schema version this crate knows (1: the table above, indexes on `topic` and
/// `sent_at`).
pub const SCHEMA_VERSION: i32 = 1;

/// The bookkeeping table of the migrations, made in the store table's schema.
pub const MIGRATIONS_TABLE: &str = "hub_schema_migrations";

/// The advisory lock key every hub takes while it migrates (`pg_advisory_xact_lock`): two hubs
/// starting at once migrate one after the other. ("hubschem" in ASCII.)
const MIGRATION_LOCK: i64 = 0x6875_6273_6368_656d;

/// A table name as configured: `name` or `schema.name`, each part a plain SQL identifier
/// (letters, digits, `_`, not starting with a digit, at most 63 bytes), folded to lower case as
/// PostgreSQL folds unquoted names, and always written quoted in SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema, when given.
    pub schema: Option<String>,
    /// The table.
    pub name: String,
}

impl TableName {
    /// Reads `name` or `schema.name`.
    ///
    /// # Errors
    /// Anything but one or two plain identifiers joined by a `.`, with the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > 2 {
            return Err(format!(
                "table {text:?}: at most `schema.name` (one `.`), each part a plain identifier"
            ));
        }
        for part in &parts {
            check_identifier(part).map_err(|why| format!("table {text:?}: {why}"))?;
        }
        let lower = |s: &str| s.to_ascii_lowercase();
        Ok(match parts.as_slice() {
            [name] => Self {
                schema: None,
                name: lower(name),
            },
            [schema, name] => Self {
                schema: Some(lower(schema)),
                name: lower(name),
            },
            _ => return Err(format!("table {text:?}: empty")),
        })
    }

    /// The name as written in SQL: `"schema"."name"` or `"name"`.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(s) => format!("\"{s}\".\"{}\"", self.name),
            None => format!("\"{}\"", self.name),
        }
    }

    /// An index name for `column`: `<table>_<column>_idx`, cut to PostgreSQL's 63 bytes.
    fn index_name(&self, column: &str) -> String {
        let suffix = format!("_{column}_idx");
        let keep = 63usize.saturating_sub(suffix.len()).min(self.name.len());
        format!("{}{suffix}", &self.name[..keep])
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

fn check_identifier(part: &str) -> Result<(), String> {
    let Some(first) = part.chars().next() else {
        return Err("an empty name".into());
    };
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(format!("`{part}` must start with a letter or `_`"));
    }
    if !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`{part}`: use letters, digits and `_` only"));
    }
    if part.len() > 63 {
        return Err(format!(
            "`{part}` is longer than PostgreSQL's 63 bytes for a name"
        ));
    }
    Ok(())
}

/// Where the table lives once resolved: its schema (`current_schema()` for an unqualified
/// name) and name.
#[derive(Debug, Clone)]
struct Resolved {
    schema: String,
    name: String,
}

impl Resolved {
    fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// `"schema"."name"` of a resolved table, for `to_regclass`.
fn table_sql(at: &Resolved) -> String {
    format!("\"{}\".\"{}\"", at.schema, at.name)
}

/// The schema an unqualified table would be created in or found in.
async fn resolve(client: &impl GenericClient, table: &TableName) -> Result<Resolved, String> {
    if let Some(schema) = &table.schema {
        return Ok(Resolved {
            schema: schema.clone(),
            name: table.name.clone(),
        });
    }
    // An existing table found through the search_path, else where CREATE TABLE would put it.
    let row = client
        .query_one(
            "SELECT coalesce(
                 (SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.oid = to_regclass($1)),
                 current_schema()::text)",
            &[&table.sql()],
        )
        .await
        .map_err(|e| describe_pg_error(&e))?;
    let schema: Option<String> = row.get(0);
    let schema = schema.ok_or_else(|| {
        format!(
            "table {table}: no schema to put it in (the search_path names none that exists); \
             write it as `schema.{}`",
            table.name
        )
    })?;
    Ok(Resolved {
        schema,
        name: table.name.clone(),
    })
}

/// Creates the table and its indexes if absent, as migration version 1, recorded in
/// `<schema>.hub_schema_migrations`: in one transaction, under an advisory lock, which also
/// [`check`]s the table before it commits (a table someone else made that does not fit records
/// nothing). A table recorded once and dropped since is created again. Returns the versions
/// applied now (empty when the table was up to date).
///
/// # Errors
/// What the database said, in words.
pub async fn migrate(
    client: &mut deadpool_postgres::Client,
    table: &TableName,
) -> Result<Vec<i32>, String> {
    let fail = |e: tokio_postgres::Error| {
        format!(
            "creating table {table} (create_schema = true): {}",
            describe_pg_error(&e)
        )
    };
    let tx = client.transaction().await.map_err(fail)?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    let at = resolve(&tx, table).await?;
    let schema_sql = format!("\"{}\"", at.schema);
    let migrations = format!("{schema_sql}.\"{MIGRATIONS_TABLE}\"");
    // CREATE SCHEMA IF NOT EXISTS needs the CREATE right on the database even when the schema
    // is there: ask first.
    let has_schema: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&at.schema],
        )
        .await
        .map_err(fail)?
        .get(0);
    if !has_schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema_sql}"))
            .await
            .map_err(fail)?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {migrations} (
             table_name text NOT NULL,
             version int NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (table_name, version))"
    ))
    .await
    .map_err(fail)?;
    let qualified = at.qualified();
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {migrations} WHERE table_name = $1"),
            &[&qualified],
        )
        .await
        .map_err(fail)?;
    let mut current: i32 = row.get(0);
    let exists: bool = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table_sql(&at)])
        .await
        .map_err(fail)?
        .get(0);
    if current > 0 && !exists {
        // Recorded, then dropped by hand: the record is stale; create it again from version 1.
        tx.execute(
            &format!("DELETE FROM {migrations} WHERE table_name = $1"),
            &[&qualified],
        )
        .await
        .map_err(fail)?;
        current = 0;
    }
    let target = TableName {
        schema: Some(at.schema.clone()),
        name: at.name.clone(),
    };
    let mut applied = Vec::new();
    for version in (current + 1)..=SCHEMA_VERSION {
        tx.batch_execute(&migration_sql(&target, version))
            .await
            .map_err(fail)?;
        tx.execute(
            &format!("INSERT INTO {migrations} (table_name, version) VALUES ($1, $2)"),
            &[&qualified, &version],
        )
        .await
        .map_err(fail)?;
        applied.push(version);
    }
    // A table that was there before (made by someone else) and does not fit: nothing is
    // recorded (the transaction is rolled back when `tx` drops).
    check(&tx, table).await?;
    tx.commit().await.map_err(fail)?;
    Ok(applied)
}

/// The statements of one migration version.
fn migration_sql(table: &TableName, version: i32) -> String {
    let t = table.sql();
    match version {
        1 => format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                 id text PRIMARY KEY,
                 topic text NOT NULL,
                 sent_at timestamptz NOT NULL,
                 received_at timestamptz NOT NULL DEFAULT now(),
                 headers jsonb NOT NULL,
                 body jsonb NOT NULL);
             CREATE INDEX IF NOT EXISTS \"{topic}\" ON {t} (topic);
             CREATE INDEX IF NOT EXISTS \"{sent}\" ON {t} (sent_at);",
            topic = table.index_name("topic"),
            sent = table.index_name("sent_at"),
        ),
        _ => String::new(),
    }
}

/// Checks that the table exists with every column the store writes, each of the right type,
/// and a unique index on `id` alone (what `ON CONFLICT (id)` needs).
///
/// # Errors
/// The table missing, or each column missing or of another type, naming the table, the column
/// and what was expected.
pub async fn check(client: &impl GenericClient, table: &TableName) -> Result<(), String> {
    let at = resolve(client, table).await?;
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
              WHERE table_schema = $1 AND table_name = $2",
            &[&at.schema, &at.name],
        )
        .await
        .map_err(|e| format!("table {table}: {}", describe_pg_error(&e)))?;
    if rows.is_empty() {
        return Err(format!(
            "table {} does not exist (or this user may not see it): create it, or set \
             create_schema = true to let the store create it",
            at.qualified()
        ));
    }
    let found: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut problems = Vec::new();
    for (column, expected) in COLUMNS {
        match found.iter().find(|(name, _)| name == column) {
            None => problems.push(format!(
                "column `{column}` is missing (expected {expected})"
            )),
            Some((_, actual)) if actual != expected => problems.push(format!(
                "column `{column}` is {actual}, expected {expected}"
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        let unique = client
            .query_one(
                "SELECT EXISTS (
                   SELECT 1 FROM pg_index i
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                    WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 1
                      AND i.indpred IS NULL AND a.attname = 'id')",
                &[&table_sql(&at)],
            )
            .await
            .map_err(|e| format!("table {table}: {}", describe_pg_error(&e)))?;
        if !unique.get::<_, bool>(0) {
            problems.push(
                "column `id` has no primary key or unique index of its own (expected `id text \
                 PRIMARY KEY`: storing is idempotent by id)"
                    .into(),
            );
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "table {} does not fit the store: {}",
            at.qualified(),
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        let t = TableName::parse("Hub.Messages").ok();
        assert_eq!(
            t,
            Some(TableName {
                schema: Some("hub".into()),
                name: "messages".into()
            })
        );
        assert_eq!(t.map(|t| t.sql()).as_deref(), Some("\"hub\".\"messages\""));
        assert_eq!(
            TableName::parse("messages")
                .map(|t| t.sql())
                .ok()
                .as_deref(),
            Some("\"messages\"")
        );
        for bad in [
            "",
            "a.b.c",
            "1abc",
            "msgs; DROP TABLE x",
            "a.",
            ".a",
            "\"quoted\"",
            "ünï",
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(64);
        assert!(TableName::parse(&long).is_err());
        let t = TableName::parse(&"y".repeat(63)).ok();
        assert_eq!(t.map(|t| t.index_name("sent_at").len()), Some(63));
    }
}
