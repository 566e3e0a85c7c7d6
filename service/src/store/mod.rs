//! The Postgres store: the system of record for credential metadata.
//!
//! One file per table group. Queries are checked at run time (`sqlx::query`),
//! so a fresh machine builds without a database. Migrations in
//! `migrations/` are embedded and applied by `rekey migrate` and at start-up.

pub mod audit;
pub mod credentials;
pub mod engine;
pub mod inventory;
pub mod listen;
pub mod paging;
pub mod rotations;
pub mod sync;

use std::time::Duration;

use sqlx::{
    ConnectOptions,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
};

/// The embedded migrations (`migrations/*.sql`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Errors talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL does not parse.
    #[error("database.url is not a valid Postgres URL: {0}")]
    BadUrl(String),
    /// Could not connect (after retrying).
    #[error("cannot connect to Postgres at {target}: {source}")]
    Connect {
        /// Host and database, without credentials.
        target: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
}

/// A connection pool with the queries rekey needs.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects (lazily: the pool reconnects as Postgres comes and goes).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::BadUrl(
                "it must start with postgres:// or postgresql://".into(),
            ));
        }
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::BadUrl(redact_url_error(&e)))?;
        let opts =
            opts.log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
        let target = format!(
            "{}:{}/{}",
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        );
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Connect { target, source })?;
        Ok(Self { pool })
    }

    /// Connects, retrying for up to `patience` while Postgres starts.
    pub async fn connect_patiently(
        url: &str,
        max_connections: u32,
        patience: Duration,
    ) -> Result<Self, StoreError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut delay = Duration::from_millis(100);
        loop {
            match Self::connect(url, max_connections).await {
                Ok(s) => return Ok(s),
                Err(e @ StoreError::BadUrl(_)) => return Err(e),
                Err(e) if tokio::time::Instant::now() + delay > deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "Postgres not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool, for queries in other modules' store files.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// True when Postgres answers and every embedded migration is applied.
    pub async fn ready(&self) -> bool {
        let applied: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await;
        matches!(applied, Ok(n) if n as usize >= MIGRATOR.iter().count())
    }
}

/// sqlx's URL errors may echo the URL, password included: keep only the kind.
fn redact_url_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(inner) => {
            let s = inner.to_string();
            if s.contains('@') {
                "malformed URL".into()
            } else {
                s
            }
        }
        _ => "malformed URL".into(),
    }
}
