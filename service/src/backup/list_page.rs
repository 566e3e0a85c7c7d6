//! Keyset pages of the `backups` table for `GET /v1/backups`: newest first
//! (`started_at DESC, id`), each page starting after the last row of the
//! previous one, so backups recorded between two requests neither repeat
//! nor hide older ones.
//!
//! Part of the table's owner (see [`super::records`]); a file of its own
//! only because issue 11 split the work between helpers.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::records::{BackupRecord, ListFilter};
use crate::store::{Store, StoreError};

const COLUMNS: &str = "id, location, status, source, requested_by, started_at, finished_at, \
     size_bytes, sha256, plaintext_bytes, kek_id, chunk_size, etcd_revision, error, pruned_at";

/// At most `filter.limit` backups matching `filter`, newest first, starting
/// after the row whose `(started_at, id)` is `after`.
pub async fn page(
    store: &Store,
    filter: ListFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Vec<BackupRecord>, StoreError> {
    let (at, id) = after.unzip();
    Ok(
        sqlx::query_as::<_, BackupRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM backups
             WHERE ($1 OR status <> 'pruned') AND (NOT $2 OR status = 'completed')
               AND ($3::timestamptz IS NULL OR started_at < $3 OR (started_at = $3 AND id > $4))
             ORDER BY started_at DESC, id
             LIMIT $5"
        )))
        .bind(filter.include_pruned)
        .bind(filter.completed_only)
        .bind(at)
        .bind(id)
        .bind(filter.limit.max(1))
        .fetch_all(store.pool())
        .await?,
    )
}
