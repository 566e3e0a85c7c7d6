//! The inventory as the admin API lists it (`GET /v1/credentials`):
//! credential summaries in name order, one keyset page at a time.
//!
//! Part of the `credentials` table's owner ([`super::credentials`] holds the
//! full row and the engine's queries); a summary leaves out the spec and the
//! sink, which the detail endpoint shows.

use chrono::{DateTime, Utc};

use super::{Store, StoreError, credentials::Credential};

/// A tracked credential without its spec and sink.
#[derive(Debug, Clone, sqlx::FromRow)]
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
    /// Consecutive failed rotations.
    pub failures: i32,
    /// The last rotation error, while failing.
    pub last_error: Option<String>,
}

impl Summary {
    /// The full row's shape (spec and sink empty), for the state rules and
    /// the status renderers; `stamp` fills the times a summary lacks.
    pub fn to_credential(&self, stamp: DateTime<Utc>) -> Credential {
        Credential {
            id: 0,
            name: self.name.clone(),
            kind: self.kind.clone(),
            source: self.source.clone(),
            managed: self.managed,
            spec: serde_json::json!({}),
            sink: serde_json::json!({}),
            schedule: self.schedule.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            current_version: self.current_version,
            next_rotation_at: self.next_rotation_at,
            next_rotation_reason: self.next_rotation_reason.clone(),
            failures: self.failures,
            last_error: self.last_error.clone(),
            lease_owner: None,
            created_at: stamp,
            updated_at: stamp,
        }
    }
}

const SUMMARY_COLUMNS: &str = "name, kind, not_before, not_after, next_rotation_at, \
    next_rotation_reason, source, managed, schedule, current_version, failures, last_error";

impl Store {
    /// At most `limit` credentials not removed, by name, starting after the
    /// name `after` (keyset: the unique index on `name` is walked from there,
    /// so a late page costs what the first does).
    pub async fn credential_summaries(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Summary>, StoreError> {
        let query = match after {
            Some(after) => sqlx::query_as::<_, Summary>(sqlx::AssertSqlSafe(format!(
                "SELECT {SUMMARY_COLUMNS} FROM credentials
                 WHERE removed_at IS NULL AND name > $1 ORDER BY name LIMIT $2"
            )))
            .bind(after),
            None => sqlx::query_as::<_, Summary>(sqlx::AssertSqlSafe(format!(
                "SELECT {SUMMARY_COLUMNS} FROM credentials
                 WHERE removed_at IS NULL ORDER BY name LIMIT $1"
            ))),
        };
        Ok(query.bind(limit).fetch_all(self.pool()).await?)
    }
}
