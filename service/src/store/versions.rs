//! `credential_versions` past their grace period: superseded versions of
//! service-account tokens whose `retire_after` has come, claimed for
//! retirement (`FOR UPDATE SKIP LOCKED`, so each is retired by one replica)
//! and marked `revoked` in the same transaction as their audit events.

use sqlx::{Postgres, Transaction};

use super::{
    audit::{NewEvent, record_many},
    error::StoreError,
    pool::Store,
};

/// A superseded version due for retirement.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueVersion {
    /// The version id.
    pub id: i64,
    /// The credential's name.
    pub credential: String,
    /// The credential's spec (JSON).
    pub spec: serde_json::Value,
    /// The version's non-secret details (e.g. its bound Secret).
    pub details: serde_json::Value,
}

/// Versions claimed for retirement, locked until [`Retirement::finish`]
/// (dropping it releases them untouched).
pub struct Retirement {
    tx: Transaction<'static, Postgres>,
    /// The versions claimed, oldest `retire_after` first.
    pub due: Vec<DueVersion>,
}

impl std::fmt::Debug for Retirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retirement")
            .field("due", &self.due.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Claims up to `limit` superseded token versions whose grace period
    /// is over and that no other replica holds.
    pub async fn claim_retirements(&self, limit: i64) -> Result<Retirement, StoreError> {
        let mut tx = self.pool().begin().await?;
        let due = sqlx::query_as::<_, DueVersion>(
            "SELECT v.id, c.name AS credential, c.spec, v.details
             FROM credential_versions v JOIN credentials c ON c.id = v.credential_id
             WHERE v.status = 'superseded' AND v.retire_after <= now() AND c.kind = 'service_account_token'
             ORDER BY v.retire_after
             LIMIT $1
             FOR UPDATE OF v SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok(Retirement { tx, due })
    }
}

impl Retirement {
    /// Marks the `revoked` versions as such, records `events`, and commits
    /// (releasing the versions not revoked, to be tried again).
    pub async fn finish(mut self, revoked: &[i64], events: &[NewEvent]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE credential_versions SET status = 'revoked', revoked_at = now() WHERE id = ANY($1)",
        )
        .bind(revoked)
        .execute(&mut *self.tx)
        .await?;
        record_many(&mut *self.tx, events).await?;
        self.tx.commit().await?;
        Ok(())
    }
}
