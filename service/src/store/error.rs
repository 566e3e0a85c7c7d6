//! Errors talking to Postgres.

/// Errors talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL does not parse.
    #[error("database.url is not a valid Postgres URL: {0}")]
    BadUrl(String),
    /// Could not connect (after retrying).
    #[error("cannot connect to Postgres at {target}: {}", connect_cause(.cause))]
    Connect {
        /// Host and database, without credentials.
        target: String,
        /// The driver's error (in the message, not the error chain: its own
        /// text carries Postgres' source line, "at line 948").
        cause: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    /// A row holds what the code cannot read (written by a newer rekey?).
    #[error("database: {0}")]
    Corrupt(String),
}

/// What Postgres or the driver said, for a person: the server's message and
/// SQLSTATE, without the line of Postgres' C source sqlx appends.
fn connect_cause(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) => format!("{} (SQLSTATE {code})", d.message()),
            None => d.message().to_string(),
        },
        e => e.to_string(),
    }
}
