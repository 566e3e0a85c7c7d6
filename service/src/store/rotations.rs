//! `rotations`: every rotation attempt, and "rotate now" requests.
//!
//! A manual request is a `rotations` row in state `queued` plus the
//! credential's `next_rotation_at` set to now: the engine claims it like any
//! due credential and runs the same state machine. At most one rotation per
//! credential is `queued` or `running` (a unique index), so a second request
//! joins the one in flight.
//!
//! An idempotency key (`rotation_requests`) belongs to one caller and one
//! credential and remembers a digest of the request it came with: a retry
//! with the same key and the same request gets the rotation back, the same
//! key with another request is a conflict ([`RequestOutcome::KeyConflict`]),
//! and keys are forgotten after [`IDEMPOTENCY_KEY_TTL`]. With a
//! [`Ticket`], the request's audit event commits in the same transaction
//! as the rotation it queued or joined.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    audit::{Outcome, Ticket},
    error::StoreError,
    pool::Store,
};

/// How long an idempotency key is remembered (documented in the README).
pub const IDEMPOTENCY_KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

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
    /// This caller used the idempotency key for this credential with another
    /// request (a different digest) within [`IDEMPOTENCY_KEY_TTL`].
    KeyConflict,
}

/// A "rotate now" request.
#[derive(Debug, Clone, Copy)]
pub struct ManualRequest<'a> {
    /// The credential's name.
    pub name: &'a str,
    /// Who asks (the audit actor; also the scope of the idempotency key).
    pub actor: &'a str,
    /// Why.
    pub reason: Option<&'a str>,
    /// The caller's idempotency key, if it sent one.
    pub idempotency: Option<Idempotency<'a>>,
}

/// An idempotency key and the digest of the request it came with.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    /// The key (1 to 255 visible ASCII characters; the API checks).
    pub key: &'a str,
    /// Hex SHA-256 of the request's canonical form (the API computes it).
    pub request_sha256: &'a str,
}

/// Hex SHA-256 of a caller's audit name: the scope of its idempotency keys.
fn caller_digest(actor: &str) -> String {
    hex::encode(Sha256::digest(actor.as_bytes()))
}

async fn remember_key(
    tx: &mut sqlx::PgConnection,
    credential_id: i64,
    request: &ManualRequest<'_>,
    rotation_id: Uuid,
) -> Result<(), StoreError> {
    if let Some(idem) = request.idempotency {
        sqlx::query(
            "INSERT INTO rotation_requests (credential_id, caller_sha256, idempotency_key, request_sha256, rotation_id)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(credential_id)
        .bind(caller_digest(request.actor))
        .bind(idem.key)
        .bind(idem.request_sha256)
        .bind(rotation_id)
        .execute(tx)
        .await?;
    }
    Ok(())
}

/// The audit details of a request that queued or joined `rotation`.
fn details(rotation: &Rotation, joined: bool, replayed: bool) -> serde_json::Value {
    serde_json::json!({ "rotation_id": rotation.id, "joined": joined, "replayed": replayed })
}

/// A rotation found through an idempotency key, with the digest it was stored with.
#[derive(sqlx::FromRow)]
struct KeyedRotation {
    request_sha256: Option<String>,
    #[sqlx(flatten)]
    rotation: Rotation,
}

const COLUMNS: &str =
    "r.id, c.name AS credential, r.trigger, r.requested_by, r.reason, r.due_at, r.status,
    r.version_id, r.replica, r.requested_at, r.started_at, r.finished_at, r.error";

impl Store {
    /// Queues a manual rotation of `name`, or returns the one in flight
    /// (no idempotency key, no audit event: see [`Store::request_rotation_audited`]).
    pub async fn request_rotation(
        &self,
        name: &str,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<RequestOutcome, StoreError> {
        let request = ManualRequest {
            name,
            actor,
            reason,
            idempotency: None,
        };
        self.request_rotation_audited(&request, None).await
    }

    /// Queues a manual rotation, or returns the one in flight, or (same
    /// caller, key and digest within [`IDEMPOTENCY_KEY_TTL`]) the one the
    /// key named. With `audit`, its event (success, with the rotation id)
    /// commits in the same transaction; outcomes that change nothing
    /// (`NotFound`, `KeyConflict`) leave the ticket unwritten.
    pub async fn request_rotation_audited(
        &self,
        request: &ManualRequest<'_>,
        audit: Option<&Ticket>,
    ) -> Result<RequestOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM credentials WHERE name = $1 AND managed AND removed_at IS NULL FOR UPDATE",
        )
        .bind(request.name)
        .fetch_optional(&mut *tx)
        .await?;
        // Early returns end the transaction explicitly: a dropped transaction
        // keeps its row lock until the pooled connection is next used, and
        // the engine's SKIP LOCKED claim would skip the credential meanwhile.
        let Some(id) = id else {
            tx.rollback().await?;
            return Ok(RequestOutcome::NotFound);
        };
        let commit = async |tx: sqlx::Transaction<'static, sqlx::Postgres>,
                            r: &Rotation,
                            joined: bool,
                            replayed: bool|
               -> Result<(), StoreError> {
            match audit {
                Some(t) => {
                    t.commit_with(tx, &t.event(Outcome::Success, details(r, joined, replayed)))
                        .await
                }
                None => Ok(tx.commit().await?),
            }
        };
        if let Some(idem) = request.idempotency {
            // Forget this credential's expired keys (under its row lock).
            sqlx::query(
                "DELETE FROM rotation_requests
                 WHERE credential_id = $1 AND created_at <= now() - make_interval(secs => $2)",
            )
            .bind(id)
            .bind(IDEMPOTENCY_KEY_TTL.as_secs_f64())
            .execute(&mut *tx)
            .await?;
            let sql = format!(
                "SELECT q.request_sha256, {COLUMNS} FROM rotation_requests q
                 JOIN rotations r ON r.id = q.rotation_id JOIN credentials c ON c.id = r.credential_id
                 WHERE q.credential_id = $1 AND q.caller_sha256 = $2 AND q.idempotency_key = $3"
            );
            let found: Option<KeyedRotation> =
                sqlx::query_as::<_, KeyedRotation>(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .bind(caller_digest(request.actor))
                    .bind(idem.key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(found) = found {
                if found.request_sha256.as_deref() != Some(idem.request_sha256) {
                    tx.rollback().await?;
                    return Ok(RequestOutcome::KeyConflict);
                }
                commit(tx, &found.rotation, true, true).await?;
                return Ok(RequestOutcome::Existing(found.rotation));
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
            remember_key(&mut tx, id, request, r.id).await?;
            commit(tx, &r, true, false).await?;
            return Ok(RequestOutcome::Existing(r));
        }
        let rid = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO rotations (id, credential_id, trigger, requested_by, reason, status)
             VALUES ($1, $2, 'manual', $3, $4, 'queued')",
        )
        .bind(rid)
        .bind(id)
        .bind(request.actor)
        .bind(request.reason)
        .execute(&mut *tx)
        .await?;
        remember_key(&mut tx, id, request, rid).await?;
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
        let sql = format!(
            "SELECT {COLUMNS} FROM rotations r JOIN credentials c ON c.id = r.credential_id WHERE r.id = $1"
        );
        let r = sqlx::query_as::<_, Rotation>(sqlx::AssertSqlSafe(sql))
            .bind(rid)
            .fetch_one(&mut *tx)
            .await?;
        commit(tx, &r, false, false).await?;
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
