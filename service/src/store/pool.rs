//! The connection pool and the schema: connecting (patiently, while
//! Postgres starts), the embedded migrations, and [`Store::open`], the one way the
//! service and the command line get a migrated store.

use std::time::Duration;

use sqlx::{
    ConnectOptions,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
};

use super::error::StoreError;

/// The embedded migrations (`migrations/*.sql`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

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
        let pool = match PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await
        {
            Ok(pool) => pool,
            // The pool says only that it timed out: one direct attempt says
            // why (refused, no such database, authentication failed).
            Err(sqlx::Error::PoolTimedOut) => {
                let cause = match opts.connect().await {
                    Err(e) => e,
                    Ok(_) => sqlx::Error::PoolTimedOut,
                };
                return Err(StoreError::Connect { target, cause });
            }
            Err(cause) => return Err(StoreError::Connect { target, cause }),
        };
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
        let mut last_warned = String::new();
        loop {
            match Self::connect(url, max_connections).await {
                Ok(s) => return Ok(s),
                Err(e @ StoreError::BadUrl(_)) => return Err(e),
                Err(e) if tokio::time::Instant::now() + delay > deadline => return Err(e),
                Err(e) => {
                    // Once per distinct error: the same line again says nothing new.
                    let text = e.to_string();
                    if text != last_warned {
                        tracing::warn!(error = %text, "Postgres not reachable yet; retrying");
                        last_warned = text;
                    } else {
                        tracing::debug!(error = %text, "Postgres still not reachable; retrying");
                    }
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

    /// Closes every connection (waiting for those in use to come back): before
    /// stopping a Postgres this process started, so no connection finds it gone.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool, for queries in other modules' store files.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations; returns how many it applied. When the
    /// schema is already current it runs no DDL at all: no advisory lock, and
    /// none of Postgres' "already exists, skipping" notices.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let pending = match self.applied_migrations().await {
            Ok(applied) => match pending_migrations(&applied) {
                Some(0) => return Ok(0),
                Some(n) => n,
                // Something sqlx must judge (a changed, failed or unknown
                // migration): let it, and report its error.
                None => 0,
            },
            // Unreadable: sqlx decides.
            Err(_) => MIGRATOR.iter().filter(|m| is_up(m)).count(),
        };
        MIGRATOR.run(&self.pool).await?;
        Ok(pending)
    }

    /// (version, success, checksum) of every row of `_sqlx_migrations`, none
    /// before the table exists.
    async fn applied_migrations(&self) -> Result<Vec<(i64, bool, Vec<u8>)>, StoreError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(
            "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Connects (retrying for up to `patience` while Postgres starts) and
    /// applies pending migrations: how `rekey serve`, `rekey dev` and every
    /// command that needs the database get their store, with how many
    /// migrations were applied. A URL that does not parse is
    /// [`StoreError::BadUrl`]; a failed migration is [`StoreError::Migrate`].
    pub async fn open(
        url: &str,
        max_connections: u32,
        patience: Duration,
    ) -> Result<(Self, usize), StoreError> {
        let store = Self::connect_patiently(url, max_connections, patience).await?;
        let applied = store.migrate().await?;
        if applied > 0 {
            // `rekey migrate` says so on stdout; for other commands it is no news.
            tracing::debug!(applied, "database migrations applied");
        }
        Ok((store, applied))
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

fn is_up(m: &sqlx::migrate::Migration) -> bool {
    !m.migration_type.is_down_migration()
}

/// How many embedded migrations are not applied yet, given the rows of
/// `_sqlx_migrations`; `None` when the rows are not a clean prefix of the
/// embedded migrations (a failed one, a changed checksum, one this binary does
/// not know), which `MIGRATOR.run` reports as an error.
fn pending_migrations(applied: &[(i64, bool, Vec<u8>)]) -> Option<usize> {
    let embedded: Vec<_> = MIGRATOR.iter().filter(|m| is_up(m)).collect();
    for (version, success, checksum) in applied {
        let m = embedded.iter().find(|m| m.version == *version)?;
        if !success || m.checksum.as_ref() != checksum.as_slice() {
            return None;
        }
    }
    Some(embedded.len() - applied.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<(i64, bool, Vec<u8>)> {
        MIGRATOR
            .iter()
            .filter(|m| is_up(m))
            .take(n)
            .map(|m| (m.version, true, m.checksum.to_vec()))
            .collect()
    }

    #[test]
    fn pending_counts_what_is_not_applied_and_defers_oddities_to_sqlx() {
        let all = MIGRATOR.iter().filter(|m| is_up(m)).count();
        assert!(all > 1);
        assert_eq!(pending_migrations(&[]), Some(all));
        assert_eq!(pending_migrations(&rows(all)), Some(0));
        assert_eq!(pending_migrations(&rows(1)), Some(all - 1));
        let mut failed = rows(all);
        failed[0].1 = false;
        assert_eq!(pending_migrations(&failed), None);
        let mut changed = rows(all);
        changed[1].2[0] ^= 1;
        assert_eq!(pending_migrations(&changed), None);
        let mut unknown = rows(all);
        unknown.push((99_999_999, true, vec![0]));
        assert_eq!(pending_migrations(&unknown), None);
    }
}
