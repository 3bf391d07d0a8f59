//! `[resources.<id>] type = "postgres_pool"`: a deadpool-postgres pool, built without connecting.

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hub_core::{BoxError, ResourceConfig, SecretSource};
use serde::Deserialize;
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

/// The `application_name` the pool's connections carry when the `url` sets none (it shows in
/// `pg_stat_activity`).
pub const DEFAULT_APPLICATION_NAME: &str = "hub";

/// `[resources.<id>]` with `type = "postgres_pool"`: a PostgreSQL connection pool
/// (deadpool-postgres over tokio-postgres, no TLS) that connects on first use.
///
/// ```toml
/// [resources.main]
/// type = "postgres_pool"
/// url = "host=127.0.0.1 user=postgres dbname=hub"   # or postgres://user@host/db
/// max_size = 16
/// connect_timeout = "10s"
/// password = { env = "PGPASSWORD" }                  # optional; or "text", { file = "/path" }
/// ```
///
/// Its `Debug` and every error it gives leave the password out.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgPoolConfig {
    /// A libpq-style connection string (`host=... user=... dbname=...`) or a `postgres://` URL.
    /// Required. `sslmode=require` is refused: this pool speaks no TLS.
    pub url: String,
    /// Connections at most, shared by every consumer that names this pool (default 16).
    #[serde(default = "default_max_size")]
    pub max_size: usize,
    /// Longest time to open one connection (default `"10s"`; a `connect_timeout` in the `url`
    /// wins for the TCP connect itself).
    #[serde(default = "default_connect_timeout", with = "hub_core::duration")]
    pub connect_timeout: Duration,
    /// The password, kept out of the `url`: `"text"`, `{ env = "VAR" }` or
    /// `{ file = "/path" }`; it replaces a password the `url` holds. Never logged.
    #[serde(default)]
    pub password: Option<SecretSource>,
}

fn default_max_size() -> usize {
    16
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl PgPoolConfig {
    /// A pool configuration for `url` with the default `max_size` (16) and `connect_timeout`
    /// (10 s).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_size: default_max_size(),
            connect_timeout: default_connect_timeout(),
            password: None,
        }
    }

    /// This configuration with its password from `password` (it replaces one in the `url`).
    #[must_use]
    pub fn password(mut self, password: SecretSource) -> Self {
        self.password = Some(password);
        self
    }

    /// This configuration with at most `max_size` connections.
    #[must_use]
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// This configuration with `timeout` to open a connection.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The parsed connection settings (with the default `application_name` and
    /// `connect_timeout` filled in).
    ///
    /// # Errors
    /// A `url` that does not parse, or asks for TLS; a `password` that cannot be read. The
    /// message never repeats the `url` or the password.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, BoxError> {
        let mut config: tokio_postgres::Config =
            self.url.parse().map_err(|e: tokio_postgres::Error| {
                // The parser's own words name an option or a value it refused; its other
                // messages may quote a character of the text (a password), so they are left out.
                let text = e.to_string();
                let why = if text.contains("unknown option") || text.contains("invalid value") {
                    text
                } else {
                    "malformed".to_owned()
                };
                format!(
                    "url: not a PostgreSQL connection string (`host=... user=... dbname=...` or \
                 postgres://user@host/db): {why}"
                )
            })?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(
                "url: sslmode=require is not supported (this pool speaks no TLS); \
                        use sslmode=disable or prefer"
                    .into(),
            );
        }
        if config.get_hosts().is_empty() {
            return Err("url: no host given (host=... or postgres://HOST/...)".into());
        }
        if let Some(password) = &self.password {
            let secret = password.resolve().map_err(|e| format!("password: {e}"))?;
            config.password(secret.expose());
        }
        if config.get_application_name().is_none() {
            config.application_name(DEFAULT_APPLICATION_NAME);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        Ok(config)
    }

    /// The connection settings without the password, for logs and errors:
    /// `host=127.0.0.1 port=5432 user=postgres dbname=hub`.
    pub fn describe(&self) -> String {
        self.url
            .parse::<tokio_postgres::Config>()
            .map_or_else(|_| "(unparsable url)".to_owned(), |c| describe(&c))
    }
}

/// `host=... port=... user=... dbname=...` of a connection configuration, never its password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut s = format!("host={}", hosts.join(","));
    if !ports.is_empty() {
        s.push_str(&format!(" port={}", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        s.push_str(&format!(" user={user}"));
    }
    if let Some(db) = config.get_dbname() {
        s.push_str(&format!(" dbname={db}"));
    }
    if config.get_password().is_some() {
        s.push_str(" password=(hidden)");
    }
    s
}

/// Shows the connection settings without the password.
impl fmt::Debug for PgPoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPoolConfig")
            .field("url", &self.describe())
            .field("max_size", &self.max_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("password", &self.password)
            .finish()
    }
}

impl ResourceConfig for PgPoolConfig {
    const TYPE: &'static str = "postgres_pool";
    const DESCRIPTION: &'static str =
        "a PostgreSQL connection pool (deadpool-postgres, no TLS), connecting on first use";
    type Resource = Pool;

    fn build(self, _id: &str) -> Result<Pool, BoxError> {
        if self.max_size == 0 {
            return Err("max_size: must be at least 1".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout: must be longer than zero".into());
        }
        let config = self.pg_config()?;
        // `Fast`: a connection given back is reused unless its socket is closed (a connection
        // the server ended is found closed and replaced); a query per checkout would cost a
        // round trip per batch.
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(self.max_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .build()
            .map_err(|e| format!("the pool could not be built: {e}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_from_a_file_or_the_environment_replaces_the_urls() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("pw");
        std::fs::write(&file, "fr0m-file\n").expect("written");
        let config = PgPoolConfig::new("postgres://hub:in-url@db/hub")
            .password(SecretSource::File(file.clone()));
        let pg = config.pg_config().expect("parsed");
        assert_eq!(pg.get_password(), Some(&b"fr0m-file"[..]));
        assert!(!format!("{config:?}").contains("fr0m-file"));
        // PATH is set wherever tests run: its value stands for a variable's.
        let path = std::env::var("PATH").expect("PATH");
        let pg = PgPoolConfig::new("host=db user=hub")
            .password(SecretSource::Env("PATH".into()))
            .pg_config()
            .expect("parsed");
        assert_eq!(pg.get_password(), Some(path.as_bytes()));
        let unset = PgPoolConfig::new("host=db user=hub")
            .password(SecretSource::Env("HUB_TEST_NO_SUCH_VARIABLE_7".into()))
            .pg_config()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            unset.starts_with("password:") && unset.contains("HUB_TEST_NO_SUCH_VARIABLE_7"),
            "{unset}"
        );
        let missing = PgPoolConfig::new("host=db user=hub")
            .password(SecretSource::File(dir.path().join("none")))
            .build("main")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(missing.contains("password: cannot read"), "{missing}");
    }

    #[test]
    fn the_password_stays_out_of_debug_and_errors() {
        for url in [
            "host=db user=hub password=s3cret dbname=hub",
            "postgres://hub:s3cret@db/hub",
        ] {
            let config = PgPoolConfig::new(url);
            let debug = format!("{config:?}");
            assert!(!debug.contains("s3cret"), "{debug}");
            assert!(
                debug.contains("host=db") && debug.contains("user=hub"),
                "{debug}"
            );
            let pool = config.build("main");
            assert!(pool.is_ok(), "built without connecting");
            if let Ok(pool) = pool {
                let debug = format!("{pool:?}");
                assert!(!debug.contains("s3cret"), "{debug}");
            }
        }
        for bad in [
            "host=db password='s3cret",
            "host=db password=s3cret sslmode=require",
            "host=db password=s3cret bogus=1",
            "postgres://hub:s3cret@db:notaport/hub",
        ] {
            let err = PgPoolConfig::new(bad)
                .build("main")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.starts_with("url: "), "{bad}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn defaults_and_limits() {
        let c = PgPoolConfig::new("host=127.0.0.1 user=postgres dbname=test");
        assert_eq!(c.max_size, 16);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        let pg = c.pg_config().ok();
        assert_eq!(
            pg.as_ref().and_then(|p| p.get_application_name()),
            Some(DEFAULT_APPLICATION_NAME)
        );
        assert_eq!(
            pg.as_ref().and_then(|p| p.get_connect_timeout().copied()),
            Some(Duration::from_secs(10))
        );
        let err = c
            .clone()
            .max_size(0)
            .build("main")
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("max_size: must be at least 1"));
        let pool = c.max_size(3).build("main").ok();
        assert_eq!(pool.map(|p| p.status().max_size), Some(3));
    }
}
