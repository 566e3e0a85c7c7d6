//! The `backups` table: one row per `backup run` (migration `0003_backups.sql`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    etcd::census::KeyUse,
    store::{
        Store, StoreError,
        audit::{NewEvent, Outcome, Ticket, record_many},
    },
};

/// Commits `tx` with `event` recorded in it: through `ticket` when the
/// event is a caller's (an API request's), so the caller knows it is written.
async fn commit_audited(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    event: &NewEvent,
    ticket: Option<&Ticket>,
) -> Result<(), StoreError> {
    match ticket {
        Some(t) => t.commit_with(tx, event).await,
        None => {
            record_many(&mut *tx, std::slice::from_ref(event)).await?;
            Ok(tx.commit().await?)
        }
    }
}

/// A backup as recorded. This is also the JSON of `rekey backup list --json`
/// and of `GET /v1/backups` (field names are stable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct BackupRecord {
    /// The backup id (in the object's header).
    pub id: Uuid,
    /// Where the encrypted object is.
    pub location: String,
    /// `running`, `completed`, `failed` or `pruned`.
    pub status: String,
    /// `etcd`.
    pub source: String,
    /// Who asked for it.
    pub requested_by: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Ciphertext bytes.
    pub size_bytes: Option<i64>,
    /// Hex SHA-256 of the ciphertext.
    pub sha256: Option<String>,
    /// Plaintext (snapshot) bytes.
    pub plaintext_bytes: Option<i64>,
    /// The KEK that wraps the data key.
    pub kek_id: String,
    /// Plaintext bytes per chunk.
    pub chunk_size: i32,
    /// etcd's revision at snapshot time.
    pub etcd_revision: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// When `prune` deleted the object.
    pub pruned_at: Option<DateTime<Utc>>,
    /// The encryption-at-rest keys the snapshot's values are stored under
    /// (`[{"key", "fingerprint", "values", "writing", "escrowed"}]`), from a
    /// scan at the snapshot's revision; null for backups taken before rekey
    /// recorded them (or without `[etcd] encryption_config`).
    pub encryption_keys: Option<sqlx::types::Json<Vec<KeyUse>>>,
}

const COLUMNS: &str = "id, location, status, source, requested_by, started_at, finished_at, \
     size_bytes, sha256, plaintext_bytes, kek_id, chunk_size, etcd_revision, error, pruned_at, \
     encryption_keys";

/// A backup about to start.
#[derive(Debug, Clone)]
pub struct NewBackup {
    /// Its id.
    pub id: Uuid,
    /// Where it will be written.
    pub location: String,
    /// Who asked.
    pub requested_by: String,
    /// The KEK id.
    pub kek_id: String,
    /// Chunk size.
    pub chunk_size: i32,
}

/// What a finished backup produced.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Ciphertext bytes.
    pub size_bytes: i64,
    /// Hex SHA-256 of the ciphertext.
    pub sha256: String,
    /// Plaintext bytes.
    pub plaintext_bytes: i64,
    /// etcd's revision when the snapshot was taken.
    pub etcd_revision: i64,
}

/// How long a backup may stay `running` before it counts as abandoned (the
/// process running it stopped: a snapshot of etcd's largest database is
/// written in minutes). An abandoned run left no object behind (objects
/// appear only when complete), so it holds no key and no place.
pub const ABANDONED_AFTER_HOURS: i32 = 6;

/// Records a backup as `running`; first marks runs that have been `running`
/// for over [`ABANDONED_AFTER_HOURS`] `failed` (audited as
/// `backup.abandoned`), in the same transaction.
pub async fn insert_running(store: &Store, b: &NewBackup) -> Result<BackupRecord, StoreError> {
    let mut tx = store.pool().begin().await?;
    let abandoned: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE backups SET status = 'failed', finished_at = now(),
                error = format('abandoned: still running after %s hours (the process running it stopped)', $1::int)
         WHERE status = 'running' AND started_at < now() - make_interval(hours => $1)
         RETURNING id, location",
    )
    .bind(ABANDONED_AFTER_HOURS)
    .fetch_all(&mut *tx)
    .await?;
    let events: Vec<NewEvent> = abandoned
        .iter()
        .map(|(id, location)| {
            let mut e = NewEvent::new(
                &b.requested_by,
                "backup.abandoned",
                location,
                Outcome::Failure,
            );
            e.details =
                serde_json::json!({ "backup_id": id, "after_hours": ABANDONED_AFTER_HOURS });
            e
        })
        .collect();
    record_many(&mut *tx, &events).await?;
    let record = sqlx::query_as::<_, BackupRecord>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO backups (id, location, status, requested_by, kek_id, chunk_size)
         VALUES ($1, $2, 'running', $3, $4, $5)
         RETURNING {COLUMNS}"
    )))
    .bind(b.id)
    .bind(&b.location)
    .bind(&b.requested_by)
    .bind(&b.kek_id)
    .bind(b.chunk_size)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(record)
}

/// Marks a running backup `completed` with what it produced, and records
/// its audit `event` in the same transaction (through `ticket`, if given).
pub async fn mark_completed(
    store: &Store,
    id: Uuid,
    f: &Finished,
    event: &NewEvent,
    ticket: Option<&Ticket>,
) -> Result<BackupRecord, StoreError> {
    let mut tx = store.pool().begin().await?;
    let record = sqlx::query_as::<_, BackupRecord>(sqlx::AssertSqlSafe(format!(
        "UPDATE backups SET status = 'completed', finished_at = now(),
                size_bytes = $2, sha256 = $3, plaintext_bytes = $4, etcd_revision = $5
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(f.size_bytes)
    .bind(&f.sha256)
    .bind(f.plaintext_bytes)
    .bind(f.etcd_revision)
    .fetch_one(&mut *tx)
    .await?;
    commit_audited(tx, event, ticket).await?;
    Ok(record)
}

/// Records the keys a running backup's snapshot needs (before the snapshot
/// is taken: a running backup already counts as needing them).
pub async fn set_encryption_keys(
    store: &Store,
    id: Uuid,
    keys: &[KeyUse],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE backups SET encryption_keys = $2 WHERE id = $1")
        .bind(id)
        .bind(sqlx::types::Json(keys))
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Backups that are kept and may be restored: completed ones, and running
/// ones (about to be; not those abandoned, see [`ABANDONED_AFTER_HOURS`]),
/// newest first. What key retirement must respect.
pub async fn retained(store: &Store) -> Result<Vec<BackupRecord>, StoreError> {
    Ok(
        sqlx::query_as::<_, BackupRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM backups
             WHERE status = 'completed'
                OR (status = 'running' AND started_at >= now() - make_interval(hours => $1))
             ORDER BY started_at DESC, id"
        )))
        .bind(ABANDONED_AFTER_HOURS)
        .fetch_all(store.pool())
        .await?,
    )
}

/// Marks a running backup `failed` with the reason, and records its audit
/// `event` in the same transaction (through `ticket`, if given).
pub async fn mark_failed(
    store: &Store,
    id: Uuid,
    error: &str,
    event: &NewEvent,
    ticket: Option<&Ticket>,
) -> Result<(), StoreError> {
    let mut tx = store.pool().begin().await?;
    sqlx::query(
        "UPDATE backups SET status = 'failed', finished_at = now(), error = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    commit_audited(tx, event, ticket).await
}

/// Marks a completed backup `pruned` (its object was deleted).
pub async fn mark_pruned(store: &Store, id: Uuid) -> Result<(), StoreError> {
    sqlx::query("UPDATE backups SET status = 'pruned', pruned_at = now() WHERE id = $1")
        .bind(id)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Records a re-wrapped object: new KEK id and ciphertext hash.
pub async fn update_envelope(
    store: &Store,
    id: Uuid,
    kek_id: &str,
    sha256: &str,
    size_bytes: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE backups SET kek_id = $2, sha256 = $3, size_bytes = $4
         WHERE id = $1 AND status <> 'pruned'",
    )
    .bind(id)
    .bind(kek_id)
    .bind(sha256)
    .bind(size_bytes)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Which backups to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter {
    /// Include pruned backups.
    pub include_pruned: bool,
    /// Only completed backups.
    pub completed_only: bool,
    /// At most this many, newest first (0: all).
    pub limit: i64,
}

/// Backups, newest first.
pub async fn list(store: &Store, filter: ListFilter) -> Result<Vec<BackupRecord>, StoreError> {
    let limit = if filter.limit > 0 {
        filter.limit
    } else {
        i64::MAX
    };
    Ok(
        sqlx::query_as::<_, BackupRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM backups
         WHERE ($1 OR status <> 'pruned') AND (NOT $2 OR status = 'completed')
         ORDER BY started_at DESC, id
         LIMIT $3"
        )))
        .bind(filter.include_pruned)
        .bind(filter.completed_only)
        .bind(limit)
        .fetch_all(store.pool())
        .await?,
    )
}

/// When the newest completed backup finished (pruned ones count: they were
/// completed) and its size, whoever took it: the `rekey-backup` CronJob,
/// `serve`'s schedule or an API call. Exported by every replica's `/metrics`
/// as `rekey_backup_latest_completed_timestamp_seconds` and
/// `rekey_backup_latest_completed_bytes`, so the "backup too old" alert and
/// the dashboard do not depend on which process ran the backup.
pub async fn latest_completed(
    store: &Store,
) -> Result<Option<(DateTime<Utc>, Option<i64>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT finished_at, size_bytes FROM backups
         WHERE status IN ('completed', 'pruned') AND finished_at IS NOT NULL
         ORDER BY finished_at DESC LIMIT 1",
    )
    .fetch_optional(store.pool())
    .await?)
}

/// One backup by id.
pub async fn get(store: &Store, id: Uuid) -> Result<Option<BackupRecord>, StoreError> {
    Ok(
        sqlx::query_as::<_, BackupRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM backups WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(store.pool())
        .await?,
    )
}

// Keyset pages for `GET /v1/backups`: newest first (`started_at DESC, id`),
// each page starting after the last row of the previous one, so backups
// recorded between two requests neither repeat nor hide older ones.

const PAGE_COLUMNS: &str = "id, location, status, source, requested_by, started_at, finished_at, \
     size_bytes, sha256, plaintext_bytes, kek_id, chunk_size, etcd_revision, error, pruned_at, \
     encryption_keys";

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
            "SELECT {PAGE_COLUMNS} FROM backups
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
