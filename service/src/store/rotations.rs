//! `rotations`: every rotation attempt, and "rotate now" requests.
//!
//! A manual request is a `rotations` row in state `queued` plus the
//! credential's `next_rotation_at` set to now: the engine claims it like any
//! due credential and runs the same state machine. At most one rotation per
//! credential is `queued` or `running` (a unique index), so a second request
//! joins the one in flight.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{error::StoreError, pool::Store};

/// The channel engines LISTEN on to wake up for new work.
pub const WAKE_CHANNEL: &str = "rekey_wake";

/// A rotation attempt.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Rotation {
    /// Rotation id.
    pub id: Uuid,
    /// The credential's name.
    pub credential: String,
    /// `schedule`, `expiry`, `manual`, `join` or `startup`.
    pub trigger: String,
    /// Who asked: an API caller, or `rekey/<replica>`.
    pub requested_by: String,
    /// Why (free text).
    pub reason: Option<String>,
    /// The due time served.
    pub due_at: Option<DateTime<Utc>>,
    /// `queued`, `running`, `succeeded`, `failed` or `abandoned`.
    pub status: String,
    /// The version it produced.
    pub version_id: Option<i64>,
    /// The replica that ran it.
    pub replica: Option<String>,
    /// When requested.
    pub requested_at: DateTime<Utc>,
    /// When the engine started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

impl Rotation {
    /// True once it has succeeded, failed or been abandoned.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "abandoned")
    }
}

/// The result of asking for a rotation.
#[derive(Debug, Clone)]
pub enum RequestOutcome {
    /// A new rotation was queued.
    Queued(Rotation),
    /// One was already queued or running (or the idempotency key matched): that one.
    Existing(Rotation),
    /// No managed credential has that name.
    NotFound,
}

async fn remember_key(
    tx: &mut sqlx::PgConnection,
    credential_id: i64,
    key: Option<&str>,
    rotation_id: Uuid,
) -> Result<(), StoreError> {
    if let Some(key) = key {
        sqlx::query(
            "INSERT INTO rotation_requests (credential_id, idempotency_key, rotation_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(credential_id)
        .bind(key)
        .bind(rotation_id)
        .execute(tx)
        .await?;
    }
    Ok(())
}

const COLUMNS: &str =
    "r.id, c.name AS credential, r.trigger, r.requested_by, r.reason, r.due_at, r.status,
    r.version_id, r.replica, r.requested_at, r.started_at, r.finished_at, r.error";

impl Store {
    /// Queues a manual rotation of `name`, or returns the one in flight.
    pub async fn request_rotation(
        &self,
        name: &str,
        actor: &str,
        reason: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<RequestOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM credentials WHERE name = $1 AND managed AND removed_at IS NULL FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        // Early returns end the transaction explicitly: a dropped transaction
        // keeps its row lock until the pooled connection is next used, and
        // the engine's SKIP LOCKED claim would skip the credential meanwhile.
        let Some(id) = id else {
            tx.rollback().await?;
            return Ok(RequestOutcome::NotFound);
        };
        if let Some(key) = idempotency_key {
            let sql = format!(
                "SELECT {COLUMNS} FROM rotation_requests q
                 JOIN rotations r ON r.id = q.rotation_id JOIN credentials c ON c.id = r.credential_id
                 WHERE q.credential_id = $1 AND q.idempotency_key = $2"
            );
            if let Some(r) = sqlx::query_as::<_, Rotation>(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?
            {
                tx.rollback().await?;
                return Ok(RequestOutcome::Existing(r));
            }
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.credential_id = $1 AND r.status IN ('queued', 'running')"
        );
        if let Some(r) = sqlx::query_as::<_, Rotation>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        {
            // Joining the rotation in flight: the key now names it.
            remember_key(&mut tx, id, idempotency_key, r.id).await?;
            tx.commit().await?;
            return Ok(RequestOutcome::Existing(r));
        }
        let rid = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO rotations (id, credential_id, trigger, requested_by, reason, status)
             VALUES ($1, $2, 'manual', $3, $4, 'queued')",
        )
        .bind(rid)
        .bind(id)
        .bind(actor)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        remember_key(&mut tx, id, idempotency_key, rid).await?;
        sqlx::query(
            "UPDATE credentials SET next_rotation_at = now(), next_rotation_reason = 'manual', updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, 'manual')")
            .bind(WAKE_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let r = self
            .rotation(rid)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))?;
        Ok(RequestOutcome::Queued(r))
    }

    /// One rotation by id.
    pub async fn rotation(&self, id: Uuid) -> Result<Option<Rotation>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM rotations r JOIN credentials c ON c.id = r.credential_id WHERE r.id = $1"
        );
        Ok(sqlx::query_as::<_, Rotation>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Rotations of one credential, newest first.
    pub async fn rotations_of(&self, name: &str, limit: i64) -> Result<Vec<Rotation>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE c.name = $1 ORDER BY r.requested_at DESC LIMIT $2"
        );
        Ok(sqlx::query_as::<_, Rotation>(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(limit.clamp(1, 1000))
            .fetch_all(self.pool())
            .await?)
    }
}
