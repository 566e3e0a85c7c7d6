//! Consumer probes in the inventory: the credentials with a `probe`, what
//! each probe saw (`credentials.served_*`, `probe_error`,
//! `stale_consumer_at`), and the query a CA rotation asks ("which CA signed
//! what every probed consumer of this issuer serves?").

use chrono::{DateTime, Utc};

use super::{error::StoreError, pool::Store};

/// A credential with a probe, and what is needed to judge what it serves.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProbeTarget {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// The spec (JSON: `probe`, `probe_grace`, `dns_names`).
    pub spec: serde_json::Value,
    /// The current version.
    pub current_version: Option<i64>,
    /// Its fingerprint (sha256 of the leaf DER).
    pub current_fingerprint: Option<String>,
    /// When it was published.
    pub published_at: Option<DateTime<Utc>>,
    /// What the last successful probe saw.
    pub served_fingerprint: Option<String>,
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The consumer served a leaf.
    Served {
        /// sha256 (hex) of its DER.
        fingerprint: String,
        /// Its Authority Key Identifier (hex), if it has one.
        issuer_key_id: Option<String>,
    },
    /// No leaf: connection or handshake failed (the text says why).
    Failed(String),
}

/// A probe's result to record.
#[derive(Debug, Clone)]
pub struct ProbeRecord {
    /// The credential.
    pub id: i64,
    /// The version that was current when the probe was decided on: the
    /// record is dropped if another version has been committed since.
    pub current_version: Option<i64>,
    /// What the probe found.
    pub outcome: ProbeOutcome,
    /// The decision: when the credential turns `stale-consumer` (None: the
    /// consumer serves the current version).
    pub stale_consumer_at: Option<DateTime<Utc>>,
}

/// A probed consumer of an issuer, for a CA rotation's `retiring` phase.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct ProbedConsumer {
    /// The credential.
    pub name: String,
    /// Its current version.
    pub current_version: Option<i64>,
    /// The version whose leaf the consumer served at the last successful
    /// probe (None: a leaf rekey did not issue, or no answer yet).
    pub served_version: Option<i64>,
    /// sha256 of that leaf.
    pub served_fingerprint: Option<String>,
    /// Its Authority Key Identifier (hex): compare with the new CA's
    /// Subject Key Identifier.
    pub served_issuer_key_id: Option<String>,
    /// When the probe saw it.
    pub served_checked_at: Option<DateTime<Utc>>,
    /// Why the last probe failed, while probes fail.
    pub probe_error: Option<String>,
}

impl Store {
    /// The credentials with a probe (of `names`, or all), by name.
    pub async fn probe_targets(
        &self,
        names: Option<&[String]>,
    ) -> Result<Vec<ProbeTarget>, StoreError> {
        Ok(sqlx::query_as::<_, ProbeTarget>(
            "SELECT c.id, c.name, c.spec, c.current_version, v.fingerprint AS current_fingerprint,
                    v.published_at, c.served_fingerprint
             FROM credentials c
             LEFT JOIN credential_versions v ON v.id = c.current_version
             WHERE c.spec ? 'probe' AND c.removed_at IS NULL AND c.managed
               AND ($1::text[] IS NULL OR c.name = ANY($1))
             ORDER BY c.name",
        )
        .bind(names)
        .fetch_all(self.pool())
        .await?)
    }

    /// Records probe results, each only while its credential's current
    /// version is still the one judged. Returns how many were recorded.
    pub async fn record_probes(&self, records: &[ProbeRecord]) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        let versions: Vec<Option<i64>> = records.iter().map(|r| r.current_version).collect();
        let (mut fps, mut akis, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for r in records {
            match &r.outcome {
                ProbeOutcome::Served {
                    fingerprint,
                    issuer_key_id,
                } => {
                    fps.push(Some(fingerprint.as_str()));
                    akis.push(issuer_key_id.as_deref());
                    errors.push(None);
                }
                ProbeOutcome::Failed(e) => {
                    fps.push(None);
                    akis.push(None);
                    errors.push(Some(e.as_str()));
                }
            }
        }
        let stale: Vec<Option<DateTime<Utc>>> =
            records.iter().map(|r| r.stale_consumer_at).collect();
        let done = sqlx::query(
            "UPDATE credentials c SET
                 probed_at = now(),
                 probe_error = u.err,
                 served_fingerprint = coalesce(u.fp, c.served_fingerprint),
                 served_issuer_key_id = CASE WHEN u.fp IS NULL THEN c.served_issuer_key_id ELSE u.aki END,
                 served_checked_at = CASE WHEN u.fp IS NULL THEN c.served_checked_at ELSE now() END,
                 stale_consumer_at = u.stale
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
                  AS u(id, version, fp, aki, err, stale)
             WHERE c.id = u.id AND c.current_version IS NOT DISTINCT FROM u.version",
        )
        .bind(&ids)
        .bind(&versions)
        .bind(&fps)
        .bind(&akis)
        .bind(&errors)
        .bind(&stale)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Forgets the probe verdict of credentials that no longer have a probe.
    pub async fn clear_unprobed(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE credentials SET stale_consumer_at = NULL, probe_error = NULL
             WHERE stale_consumer_at IS NOT NULL AND NOT (spec ? 'probe')",
        )
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// The probed consumers of `issuer` (`spec.issuer`, `default` when
    /// absent) and what each served at its last successful probe.
    pub async fn probed_consumers(&self, issuer: &str) -> Result<Vec<ProbedConsumer>, StoreError> {
        Ok(sqlx::query_as::<_, ProbedConsumer>(
            "SELECT c.name, c.current_version,
                    (SELECT v.id FROM credential_versions v
                     WHERE v.credential_id = c.id AND v.fingerprint = c.served_fingerprint
                     ORDER BY v.id DESC LIMIT 1) AS served_version,
                    c.served_fingerprint, c.served_issuer_key_id, c.served_checked_at, c.probe_error
             FROM credentials c
             WHERE c.spec ? 'probe' AND c.removed_at IS NULL AND c.managed
               AND coalesce(c.spec->>'issuer', 'default') = $1
             ORDER BY c.name",
        )
        .bind(issuer)
        .fetch_all(self.pool())
        .await?)
    }
}
