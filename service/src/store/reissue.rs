//! The inventory as a CA rotation sees it: how many leaves of an issuer the
//! new CA signed (by `credential_versions.details.ca_fingerprint` of each
//! current version), marking the others due, and which sinks and
//! `[[bundle]]` targets do not hold a bundle yet.

use super::{error::StoreError, pool::Store};

/// SQL: the managed certificates of issuer `$1` with a current version.
const LEAVES: &str = "FROM credentials c JOIN credential_versions v ON v.id = c.current_version
     WHERE c.kind = 'certificate' AND c.managed AND c.removed_at IS NULL
       AND coalesce(c.spec->>'issuer', 'default') = $1";

/// Leaves of an issuer by the CA that signed their current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct LeafCounts {
    /// Signed by the CA asked about.
    pub on_ca: i64,
    /// Signed by another CA.
    pub other: i64,
    /// Of `other`: neither due already, leased, nor failing (failing leaves
    /// retry on their own backoff).
    pub other_unmarked: i64,
}

/// Why the bundle of an issuer is not everywhere yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleGaps {
    /// A few of the sinks and targets that do not hold it (names).
    pub names: Vec<String>,
    /// How many there are.
    pub count: usize,
}

impl Store {
    /// Counts the leaves of `issuer` by whether CA `ca_fingerprint` signed
    /// their current version.
    pub async fn leaf_counts(
        &self,
        issuer: &str,
        ca_fingerprint: &str,
    ) -> Result<LeafCounts, StoreError> {
        Ok(sqlx::query_as::<_, LeafCounts>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE v.details->>'ca_fingerprint' = $2) AS on_ca,
                    count(*) FILTER (WHERE v.details->>'ca_fingerprint' IS DISTINCT FROM $2) AS other,
                    count(*) FILTER (WHERE v.details->>'ca_fingerprint' IS DISTINCT FROM $2
                                       AND c.next_rotation_at > now() AND c.failures = 0
                                       AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now()))
                        AS other_unmarked
             {LEAVES}"
        )))
        .bind(issuer)
        .bind(ca_fingerprint)
        .fetch_one(self.pool())
        .await?)
    }

    /// Marks up to `limit` (all with `None`) leaves of `issuer` not signed by
    /// `ca_fingerprint` due now (reason `ca-rotation`), and wakes the
    /// engines; returns how many.
    pub async fn mark_reissue_due(
        &self,
        issuer: &str,
        ca_fingerprint: &str,
        limit: Option<i64>,
    ) -> Result<u64, StoreError> {
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE credentials SET next_rotation_at = now(), next_rotation_reason = 'ca-rotation',
                                    updated_at = now()
             WHERE id IN (
                SELECT c.id {LEAVES}
                  AND v.details->>'ca_fingerprint' IS DISTINCT FROM $2
                  AND c.next_rotation_at > now() AND c.failures = 0
                  AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())
                ORDER BY c.not_after NULLS FIRST
                LIMIT $3)"
        )))
        .bind(issuer)
        .bind(ca_fingerprint)
        .bind(limit.unwrap_or(i64::MAX))
        .execute(self.pool())
        .await?
        .rows_affected();
        if n > 0 {
            self.wake_engines().await?;
        }
        Ok(n)
    }

    /// The sinks of `issuer`'s published certificates and its `[[bundle]]`
    /// targets that do not hold bundle `fingerprint` (by the record).
    pub async fn bundle_gaps(
        &self,
        issuer: &str,
        fingerprint: &str,
    ) -> Result<BundleGaps, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "WITH gaps AS (
                SELECT name FROM credentials
                WHERE kind = 'certificate' AND managed AND removed_at IS NULL
                  AND current_version IS NOT NULL
                  AND coalesce(spec->>'issuer', 'default') = $1
                  AND bundle_fingerprint IS DISTINCT FROM $2
                UNION ALL
                SELECT 'bundle/' || name FROM bundle_targets
                WHERE removed_at IS NULL AND issuer = $1 AND bundle_fingerprint IS DISTINCT FROM $2
             )
             SELECT name, count(*) OVER () FROM gaps ORDER BY name LIMIT 3",
        )
        .bind(issuer)
        .bind(fingerprint)
        .fetch_all(self.pool())
        .await?;
        Ok(BundleGaps {
            count: rows.first().map_or(0, |r| r.1 as usize),
            names: rows.into_iter().map(|r| r.0).collect(),
        })
    }
}
