//! Trust bundles in the inventory: which bundle each certificate's sink
//! holds (`credentials.bundle_fingerprint`, `bundle_published_at`), the
//! claim a bundle republish takes, and `bundle_targets` (the `[[bundle]]`
//! targets and what each holds).
//!
//! A credential's issuer is `spec.issuer` (`default` when absent).

use chrono::{DateTime, Utc};

use super::{audit::NewEvent, error::StoreError, pool::Store, rotations::WAKE_CHANNEL};

/// A managed certificate of an issuer and the bundle its sink holds.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BundleHolder {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// The current published version (none before the first issue).
    pub current_version: Option<i64>,
    /// The bundle its sink holds.
    pub bundle_fingerprint: Option<String>,
    /// When rekey wrote (or found) it there.
    pub bundle_published_at: Option<DateTime<Utc>>,
    /// Leased by a rotation or a republish right now.
    pub leased: bool,
}

/// A credential claimed for a bundle republish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BundleClaim {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Fencing token of the claim.
    pub lease_epoch: i64,
    /// The version the sink must hold.
    pub current_version: i64,
    /// The sink (JSON).
    pub sink: serde_json::Value,
    /// The bundle recorded as held.
    pub bundle_fingerprint: Option<String>,
}

/// A `[[bundle]]` target as declared.
#[derive(Debug, Clone)]
pub struct DeclaredTarget {
    /// Unique name.
    pub name: String,
    /// The issuer whose bundle it publishes.
    pub issuer: String,
    /// Where (JSON).
    pub sink: serde_json::Value,
}

/// A `[[bundle]]` target and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct BundleTargetRow {
    /// Unique name.
    pub name: String,
    /// The issuer whose bundle it publishes.
    pub issuer: String,
    /// Where (JSON).
    pub sink: serde_json::Value,
    /// The bundle it holds.
    pub bundle_fingerprint: Option<String>,
    /// When rekey wrote (or first found) it there.
    pub published_at: Option<DateTime<Utc>>,
    /// The last check.
    pub checked_at: Option<DateTime<Utc>>,
    /// Why the last write failed, while it fails.
    pub last_error: Option<String>,
}

/// SQL for "the credential's issuer is $n".
const ISSUER_IS: &str = "coalesce(spec->>'issuer', 'default')";

impl Store {
    /// The managed certificates of `issuer` (not removed), by name, with the
    /// bundle each sink holds: the CA rotation's "has every sink the new
    /// bundle?" is `bundle_fingerprint = <new>` for every row with a
    /// `current_version`.
    pub async fn bundle_holders(&self, issuer: &str) -> Result<Vec<BundleHolder>, StoreError> {
        Ok(
            sqlx::query_as::<_, BundleHolder>(sqlx::AssertSqlSafe(format!(
                "SELECT id, name, current_version, bundle_fingerprint, bundle_published_at,
                    coalesce(lease_expires_at > now(), false) AS leased
             FROM credentials
             WHERE kind = 'certificate' AND managed AND removed_at IS NULL AND {ISSUER_IS} = $1
             ORDER BY name"
            )))
            .bind(issuer)
            .fetch_all(self.pool())
            .await?,
        )
    }

    /// Claims one credential for a bundle republish (a lease, as the engine
    /// takes, so a rotation and a republish never write one sink at once).
    /// `None` while it is leased, removed, or has no published version.
    pub async fn claim_for_bundle(
        &self,
        id: i64,
        replica: &str,
        lease_secs: f64,
    ) -> Result<Option<BundleClaim>, StoreError> {
        Ok(sqlx::query_as::<_, BundleClaim>(
            "UPDATE credentials
             SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
                 lease_epoch = lease_epoch + 1
             WHERE id = $1 AND removed_at IS NULL AND current_version IS NOT NULL
               AND (lease_expires_at IS NULL OR lease_expires_at <= now())
             RETURNING id, name, lease_epoch, current_version, sink, bundle_fingerprint",
        )
        .bind(id)
        .bind(replica)
        .bind(lease_secs)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Ends a bundle claim (fenced by its epoch): records the bundle the
    /// sink holds (`held`, when known; `written`: rekey wrote it just now)
    /// with `audit`, or, when `drifted`, marks the credential due at once
    /// (its sink lost the current version: re-issue) and wakes the engines.
    /// Returns whether the claim was still held.
    pub async fn finish_bundle_claim(
        &self,
        claim: &BundleClaim,
        held: Option<&str>,
        written: bool,
        drifted: bool,
        audit: Option<&NewEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let owned: Option<i64> = sqlx::query_scalar(
            "UPDATE credentials SET lease_owner = NULL, lease_expires_at = NULL,
                 bundle_published_at = CASE
                     WHEN $3::text IS NULL THEN bundle_published_at
                     WHEN $4 OR bundle_fingerprint IS DISTINCT FROM $3 THEN now()
                     ELSE bundle_published_at END,
                 bundle_fingerprint = coalesce($3, bundle_fingerprint),
                 next_rotation_at = CASE WHEN $5 THEN now() ELSE next_rotation_at END,
                 next_rotation_reason = CASE WHEN $5 THEN 'sink_drift' ELSE next_rotation_reason END,
                 updated_at = now()
             WHERE id = $1 AND lease_epoch = $2
             RETURNING id",
        )
        .bind(claim.id)
        .bind(claim.lease_epoch)
        .bind(held)
        .bind(written)
        .bind(drifted)
        .fetch_optional(&mut *tx)
        .await?;
        if owned.is_some() {
            if let Some(e) = audit {
                super::audit::record_many(&mut *tx, std::slice::from_ref(e)).await?;
            }
            if drifted {
                sqlx::query("SELECT pg_notify($1, 'wake')")
                    .bind(WAKE_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(owned.is_some())
    }

    /// Upserts the declared `[[bundle]]` targets and marks the others removed.
    pub async fn sync_bundle_targets(&self, targets: &[DeclaredTarget]) -> Result<(), StoreError> {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        let issuers: Vec<&str> = targets.iter().map(|t| t.issuer.as_str()).collect();
        let sinks: Vec<serde_json::Value> = targets.iter().map(|t| t.sink.clone()).collect();
        let mut tx = self.pool().begin().await?;
        // A target whose issuer or place changed holds nothing known yet.
        sqlx::query(
            "INSERT INTO bundle_targets (name, issuer, sink)
             SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])
             ON CONFLICT (name) DO UPDATE SET issuer = EXCLUDED.issuer, sink = EXCLUDED.sink,
                 removed_at = NULL, updated_at = now(),
                 bundle_fingerprint = CASE
                     WHEN bundle_targets.issuer = EXCLUDED.issuer AND bundle_targets.sink = EXCLUDED.sink
                     THEN bundle_targets.bundle_fingerprint END,
                 published_at = CASE
                     WHEN bundle_targets.issuer = EXCLUDED.issuer AND bundle_targets.sink = EXCLUDED.sink
                     THEN bundle_targets.published_at END",
        )
        .bind(&names)
        .bind(&issuers)
        .bind(&sinks)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE bundle_targets SET removed_at = now(), updated_at = now()
             WHERE removed_at IS NULL AND NOT (name = ANY($1))",
        )
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The `[[bundle]]` targets (of `issuer`, or all), by name.
    pub async fn bundle_targets(
        &self,
        issuer: Option<&str>,
    ) -> Result<Vec<BundleTargetRow>, StoreError> {
        Ok(sqlx::query_as::<_, BundleTargetRow>(
            "SELECT name, issuer, sink, bundle_fingerprint, published_at, checked_at, last_error
             FROM bundle_targets
             WHERE removed_at IS NULL AND ($1::text IS NULL OR issuer = $1)
             ORDER BY name",
        )
        .bind(issuer)
        .fetch_all(self.pool())
        .await?)
    }

    /// Records a check of a `[[bundle]]` target: the bundle it holds
    /// (`written`: rekey wrote it just now) or why writing failed.
    pub async fn record_bundle_target(
        &self,
        name: &str,
        held: Option<&str>,
        written: bool,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE bundle_targets SET checked_at = now(), last_error = $4, updated_at = now(),
                 published_at = CASE
                     WHEN $2::text IS NULL THEN published_at
                     WHEN $3 OR bundle_fingerprint IS DISTINCT FROM $2 THEN now()
                     ELSE published_at END,
                 bundle_fingerprint = coalesce($2, bundle_fingerprint)
             WHERE name = $1",
        )
        .bind(name)
        .bind(held)
        .bind(written)
        .bind(error)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
