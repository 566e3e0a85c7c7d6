//! Errors talking to Postgres.

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
