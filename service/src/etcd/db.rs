//! This module's own tables: `etcd_checks`, the record of every
//! encryption-at-rest check (migration 0002), and `etcd_migrations`, every
//! storage migration with its progress (migration 0010).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::report::{Report, Severity};
use crate::store::{
    Store, StoreError,
    audit::{Outcome, Ticket},
};

/// What started a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `rekey etcd verify`.
    Cli,
    /// The scheduled job in `rekey serve`.
    Schedule,
    /// `POST /v1/etcd/verify`.
    Api,
}

impl Trigger {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::Schedule => "schedule",
            Self::Api => "api",
        }
    }
}

/// A recorded check (the summary columns; `report` holds the rest).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CheckRow {
    /// Row id.
    pub id: i64,
    /// When the check started.
    pub started_at: DateTime<Utc>,
    /// When it was recorded.
    pub finished_at: DateTime<Utc>,
    /// `cli`, `schedule` or `api`.
    pub trigger: String,
    /// The EncryptionConfiguration file.
    pub encryption_config: String,
    /// Whether the API server would accept it.
    pub config_valid: bool,
    /// Prefix scanned.
    pub prefix: String,
    /// Write transformer, e.g. `aesgcm:key1`.
    pub write_key: Option<String>,
    /// Values seen.
    pub total: i64,
    /// Plaintext values.
    pub plaintext: i64,
    /// Stale values.
    pub stale: i64,
    /// Undecryptable values.
    pub undecryptable: i64,
    /// Verified values.
    pub verified: i64,
    /// 0, 1 or 2.
    pub exit_code: i16,
    /// The full report.
    pub report: serde_json::Value,
}

/// Where a check looked, recorded with it.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The etcd client URLs.
    pub endpoints: &'a [String],
    /// The key prefix scanned.
    pub prefix: &'a str,
    /// The resource whose rules applied.
    pub resource: &'a str,
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Records a finished check; returns its id.
pub async fn record(
    store: &Store,
    report: &Report,
    scope: Scope<'_>,
    trigger: Trigger,
    started_at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    record_audited(store, report, scope, trigger, started_at, None).await
}

/// Records a finished check and, with `audit`, its audit event (success,
/// with the check id and exit code) in the same transaction.
pub async fn record_audited(
    store: &Store,
    report: &Report,
    scope: Scope<'_>,
    trigger: Trigger,
    started_at: DateTime<Utc>,
    audit: Option<&Ticket>,
) -> Result<i64, StoreError> {
    let mut tx = store.pool().begin().await?;
    let scan = report.scan.as_ref();
    let errors = report
        .config
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = report
        .config
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    let json = serde_json::to_value(report).unwrap_or(serde_json::Value::Null);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO etcd_checks (started_at, finished_at, trigger, encryption_config, config_sha256,
             config_valid, endpoints, prefix, resource, revision, write_key, write_key_fingerprint,
             total, plaintext, stale, undecryptable, verified, errors, warnings, exit_code, report,
             version_sum)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
             $19, $20, $21, $22)
         RETURNING id",
    )
    .bind(started_at)
    .bind(report.checked_at)
    .bind(trigger.as_str())
    .bind(&report.config.path)
    .bind(&report.config.sha256)
    .bind(report.config.valid)
    .bind(scope.endpoints.join(","))
    .bind(scope.prefix)
    .bind(scope.resource)
    .bind(scan.map(|s| s.revision))
    .bind(&report.config.write)
    .bind(&report.config.write_fingerprint)
    .bind(scan.map_or(0, |s| count(s.total)))
    .bind(scan.map_or(0, |s| count(s.counts.plaintext)))
    .bind(scan.map_or(0, |s| count(s.counts.stale)))
    .bind(scan.map_or(0, |s| count(s.counts.undecryptable)))
    .bind(scan.map_or(0, |s| count(s.verified)))
    .bind(i32::try_from(errors).unwrap_or(i32::MAX))
    .bind(i32::try_from(warnings).unwrap_or(i32::MAX))
    .bind(i16::from(report.exit_code))
    .bind(json)
    .bind(scan.map(|s| count(s.version_sum)))
    .fetch_one(&mut *tx)
    .await?;
    match audit {
        Some(t) => {
            let details = serde_json::json!({ "check_id": id, "exit_code": report.exit_code });
            t.commit_with(tx, &t.event(Outcome::Success, details))
                .await?;
        }
        None => tx.commit().await?,
    }
    Ok(id)
}

/// The first recorded check of `prefix` that saw the key with this
/// fingerprint writing, with the write counts it summed (the base of the
/// aesgcm write budget).
pub async fn first_version_sum(
    store: &Store,
    fingerprint: &str,
    prefix: &str,
) -> Result<Option<(DateTime<Utc>, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT started_at, version_sum FROM etcd_checks
         WHERE write_key_fingerprint = $1 AND prefix = $2 AND config_valid AND version_sum IS NOT NULL
         ORDER BY started_at, id LIMIT 1",
    )
    .bind(fingerprint)
    .bind(prefix)
    .fetch_optional(store.pool())
    .await?)
}

/// When a check first saw the key with this fingerprint as the write key.
pub async fn first_seen_writing(
    store: &Store,
    fingerprint: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let t: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT min(started_at) FROM etcd_checks WHERE write_key_fingerprint = $1 AND config_valid",
    )
    .bind(fingerprint)
    .fetch_one(store.pool())
    .await?;
    Ok(t)
}

/// The most recent checks, newest first.
pub async fn recent(store: &Store, limit: i64) -> Result<Vec<CheckRow>, StoreError> {
    let rows = sqlx::query_as::<_, CheckRow>(
        "SELECT id, started_at, finished_at, trigger, encryption_config, config_valid, prefix,
                write_key, total, plaintext, stale, undecryptable, verified, exit_code, report
         FROM etcd_checks ORDER BY finished_at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    Ok(rows)
}

// `etcd_migrations`: one row per storage migration (migration 0010). A
// stopped run (crashed or failed) is continued by the next run with the
// same plan, in the same row.

/// A recorded migration.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MigrationRow {
    /// Row id.
    pub id: i64,
    /// When it (first) started.
    pub started_at: DateTime<Utc>,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// Per resource progress (see the migration's `ResourceReport`).
    pub progress: serde_json::Value,
}

/// A migration about to start.
#[derive(Debug, Clone)]
pub struct NewMigration<'a> {
    /// What started it.
    pub trigger: Trigger,
    /// Who asked.
    pub requested_by: &'a str,
    /// The EncryptionConfiguration file.
    pub encryption_config: &'a str,
    /// Its SHA-256.
    pub config_sha256: &'a str,
    /// The plan's id (resources and write keys).
    pub plan: &'a str,
    /// The resources.
    pub resources: &'a [String],
    /// Objects per second at most.
    pub max_rate: Option<f64>,
}

/// Counters of a migration.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrationTotals {
    /// Values that needed a rewrite.
    pub planned: u64,
    /// Rewritten.
    pub rewritten: u64,
    /// 409s.
    pub conflicts: u64,
    /// 404s.
    pub gone: u64,
    /// Not written by the server.
    pub unchanged: u64,
}

/// The newest migration of `plan` that did not complete.
pub async fn unfinished_migration(
    store: &Store,
    plan: &str,
) -> Result<Option<MigrationRow>, StoreError> {
    Ok(sqlx::query_as::<_, MigrationRow>(
        "SELECT id, started_at, status, progress FROM etcd_migrations
         WHERE plan = $1 AND status <> 'completed' ORDER BY started_at DESC, id DESC LIMIT 1",
    )
    .bind(plan)
    .fetch_optional(store.pool())
    .await?)
}

/// Records a new migration as `running`; returns its id.
pub async fn start_migration(store: &Store, m: &NewMigration<'_>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO etcd_migrations (trigger, requested_by, status, encryption_config, config_sha256,
             plan, resources, max_rate)
         VALUES ($1, $2, 'running', $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(m.trigger.as_str())
    .bind(m.requested_by)
    .bind(m.encryption_config)
    .bind(m.config_sha256)
    .bind(m.plan)
    .bind(m.resources)
    .bind(m.max_rate)
    .fetch_one(store.pool())
    .await?)
}

/// Marks a stopped migration `running` again, by its new runner.
pub async fn resume_migration(
    store: &Store,
    id: i64,
    requested_by: &str,
    max_rate: Option<f64>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE etcd_migrations SET status = 'running', error = NULL, requested_by = $2,
             max_rate = $3, finished_at = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(requested_by)
    .bind(max_rate)
    .execute(store.pool())
    .await?;
    Ok(())
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Saves a migration's progress (after each finished page).
pub async fn save_migration_progress(
    store: &Store,
    id: i64,
    progress: &serde_json::Value,
    t: MigrationTotals,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE etcd_migrations SET progress = $2, planned = $3, rewritten = $4, conflicts = $5,
             gone = $6, unchanged = $7, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(progress)
    .bind(signed(t.planned))
    .bind(signed(t.rewritten))
    .bind(signed(t.conflicts))
    .bind(signed(t.gone))
    .bind(signed(t.unchanged))
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Records how a migration ended: `completed` (the re-scan counted no stale
/// value) or `failed` (with the reason).
pub async fn finish_migration(
    store: &Store,
    id: i64,
    completed: bool,
    remaining_stale: Option<u64>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE etcd_migrations SET status = $2, remaining_stale = $3, error = $4,
             finished_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(if completed { "completed" } else { "failed" })
    .bind(remaining_stale.map(signed))
    .bind(error)
    .execute(store.pool())
    .await?;
    Ok(())
}
