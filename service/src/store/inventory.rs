//! The inventory as the admin API lists it (`GET /v1/credentials`):
//! credential summaries in name order, one keyset page at a time.
//!
//! Part of the `credentials` table's owner ([`super::credentials`] holds the
//! full row and the engine's queries); a summary leaves out the spec and the
//! sink, which the detail endpoint shows.

use chrono::{DateTime, Utc};

use super::{Store, StoreError, credentials::Credential};

/// A tracked credential without its spec and sink.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Unique name (the sort key).
    pub name: String,
    /// `certificate`, `service_account_token` or `bootstrap_token`.
    pub kind: String,
    /// Start of the current version's validity.
    pub not_before: Option<DateTime<Utc>>,
    /// End of the current version's validity.
    pub not_after: Option<DateTime<Utc>>,
    /// When the engine will rotate it next.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Why then.
    pub next_rotation_reason: Option<String>,
    /// `config`, `api`, `scan` or `discovered`.
    pub source: String,
    /// Rotated by rekey (false: tracked for expiry only).
    pub managed: bool,
    /// Cron schedule, if any.
    pub schedule: Option<String>,
    /// Id of the current published version.
    pub current_version: Option<i64>,
    /// Its number among the credential's versions (1, 2, 3, ...).
    pub current_version_number: Option<i64>,
    /// Consecutive failed rotations.
    pub failures: i32,
    /// The last rotation error, while failing.
    pub last_error: Option<String>,
    /// sha256 of the leaf the probed consumer served at the last probe.
    pub served_fingerprint: Option<String>,
    /// When that was.
    pub served_checked_at: Option<DateTime<Utc>>,
    /// When it turns `stale-consumer` unless the consumer moves first.
    pub stale_consumer_at: Option<DateTime<Utc>>,
}

impl Summary {
    /// The full row's shape (spec and sink empty objects), for the state
    /// rules; `stamp` fills the times a summary lacks. Moves, never copies.
    pub fn into_credential(self, stamp: DateTime<Utc>) -> Credential {
        Credential {
            id: 0,
            name: self.name,
            kind: self.kind,
            source: self.source,
            managed: self.managed,
            spec: serde_json::Value::Object(Default::default()),
            sink: serde_json::Value::Object(Default::default()),
            schedule: self.schedule,
            not_before: self.not_before,
            not_after: self.not_after,
            current_version: self.current_version,
            current_version_number: self.current_version_number,
            next_rotation_at: self.next_rotation_at,
            next_rotation_reason: self.next_rotation_reason,
            failures: self.failures,
            last_error: self.last_error,
            lease_owner: None,
            created_at: stamp,
            updated_at: stamp,
            observed: super::credentials::Observed {
                served_fingerprint: self.served_fingerprint,
                served_checked_at: self.served_checked_at,
                stale_consumer_at: self.stale_consumer_at,
                ..Default::default()
            },
        }
    }
}

/// The columns of a [`Summary`], in the order its `FromRow` reads them.
const SUMMARY_COLUMNS: &str = "name, kind, not_before, not_after, next_rotation_at, \
    next_rotation_reason, source, managed, schedule, current_version, failures, last_error, \
    served_fingerprint, served_checked_at, stale_consumer_at, \
    (SELECT v.number FROM credential_versions v WHERE v.id = current_version)";

/// By position, not by name: a page is 100 to 1,000 rows of 16 columns, and
/// looking each column up by name was about 7 % of the server's work per page.
impl sqlx::FromRow<'_, sqlx::postgres::PgRow> for Summary {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            name: row.try_get(0)?,
            kind: row.try_get(1)?,
            not_before: row.try_get(2)?,
            not_after: row.try_get(3)?,
            next_rotation_at: row.try_get(4)?,
            next_rotation_reason: row.try_get(5)?,
            source: row.try_get(6)?,
            managed: row.try_get(7)?,
            schedule: row.try_get(8)?,
            current_version: row.try_get(9)?,
            failures: row.try_get(10)?,
            last_error: row.try_get(11)?,
            served_fingerprint: row.try_get(12)?,
            served_checked_at: row.try_get(13)?,
            stale_consumer_at: row.try_get(14)?,
            current_version_number: row.try_get(15)?,
        })
    }
}

impl Store {
    /// At most `limit` credentials not removed, by name, starting after the
    /// name `after` (keyset: the unique index on `name` is walked from there,
    /// so a late page costs what the first does).
    ///
    /// The limit is written into the statement rather than bound: with a
    /// bound limit Postgres cannot trust a generic plan and plans every
    /// execution anew; with a literal one the prepared statement keeps its
    /// plan (about a tenth of the query's cost at 100 rows). Clients use one
    /// or two limits, so few statements are prepared.
    pub async fn credential_summaries(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Summary>, StoreError> {
        let limit = limit.max(1);
        let rows = match after {
            Some(after) => {
                sqlx::query_as::<_, Summary>(sqlx::AssertSqlSafe(format!(
                    "SELECT {SUMMARY_COLUMNS} FROM credentials
                     WHERE removed_at IS NULL AND name > $1 ORDER BY name LIMIT {limit}"
                )))
                .bind(after)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query_as::<_, Summary>(sqlx::AssertSqlSafe(format!(
                    "SELECT {SUMMARY_COLUMNS} FROM credentials
                     WHERE removed_at IS NULL ORDER BY name LIMIT {limit}"
                )))
                .fetch_all(self.pool())
                .await?
            }
        };
        Ok(rows)
    }
}
