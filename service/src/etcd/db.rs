//! `etcd_checks`: the record of every encryption-at-rest check (this
//! module's own table; migration 0005).

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
             total, plaintext, stale, undecryptable, verified, errors, warnings, exit_code, report)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
             $19, $20, $21)
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
