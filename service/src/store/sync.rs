//! Declaring credentials: the config file's `[[certificate]]` and `[[token]]`
//! become rows in `credentials`, and rows no longer declared are retired.

use chrono::{DateTime, Utc};

use super::{
    audit::{NewEvent, Outcome},
    error::StoreError,
    pool::Store,
};

/// A credential as declared in the configuration.
#[derive(Debug, Clone)]
pub struct Declared {
    /// Unique name.
    pub name: String,
    /// Kind (`certificate`, `service_account_token`).
    pub kind: &'static str,
    /// The spec as JSON.
    pub spec: serde_json::Value,
    /// The sink as JSON.
    pub sink: serde_json::Value,
    /// Cron schedule.
    pub schedule: Option<String>,
    /// Hash of everything that shapes the issued material: when it changes,
    /// the credential is re-issued at once.
    pub material_hash: String,
}

/// What a sync changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Newly tracked.
    pub added: Vec<String>,
    /// Material-shaping spec changed: re-issued now.
    pub changed: Vec<String>,
    /// No longer declared: retired (kept for history).
    pub removed: Vec<String>,
}

/// A declared credential's current validity, for recomputing due times.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Validity {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Current version.
    pub current_version: Option<i64>,
    /// Validity start.
    pub not_before: Option<DateTime<Utc>>,
    /// Validity end.
    pub not_after: Option<DateTime<Utc>>,
    /// Stored due time.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Stored reason.
    pub next_rotation_reason: Option<String>,
    /// Consecutive failures.
    pub failures: i32,
    /// The spec as stored.
    pub spec: serde_json::Value,
    /// Kind.
    pub kind: String,
    /// The sink as stored.
    pub sink: serde_json::Value,
}

impl Store {
    /// Upserts the declared credentials of `source` and retires the ones of
    /// that source that are no longer declared. Audited as `actor`.
    pub async fn sync_declared(
        &self,
        source: &str,
        declared: &[Declared],
        actor: &str,
    ) -> Result<SyncReport, StoreError> {
        let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        let kinds: Vec<&str> = declared.iter().map(|d| d.kind).collect();
        let specs: Vec<serde_json::Value> = declared.iter().map(|d| d.spec.clone()).collect();
        let sinks: Vec<serde_json::Value> = declared.iter().map(|d| d.sink.clone()).collect();
        let schedules: Vec<Option<&str>> = declared.iter().map(|d| d.schedule.as_deref()).collect();
        let hashes: Vec<&str> = declared.iter().map(|d| d.material_hash.as_str()).collect();
        let mut tx = self.pool().begin().await?;
        let rows: Vec<(String, bool, bool)> = sqlx::query_as(
            "WITH before AS (
                SELECT name, spec_hash, removed_at FROM credentials WHERE name = ANY($1)
             ), up AS (
                INSERT INTO credentials (name, kind, source, managed, spec, sink, schedule, spec_hash,
                                         next_rotation_at, next_rotation_reason)
                SELECT u.name, u.kind, $7, true, u.spec, u.sink, u.schedule, u.hash, now(), 'initial'
                FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[], $5::text[], $6::text[])
                     AS u(name, kind, spec, sink, schedule, hash)
                ON CONFLICT (name) DO UPDATE SET
                    kind = EXCLUDED.kind, source = EXCLUDED.source, managed = true, spec = EXCLUDED.spec,
                    sink = EXCLUDED.sink, schedule = EXCLUDED.schedule, spec_hash = EXCLUDED.spec_hash,
                    removed_at = NULL, updated_at = now(),
                    next_rotation_at = CASE
                        WHEN credentials.spec_hash <> EXCLUDED.spec_hash OR credentials.removed_at IS NOT NULL
                             OR NOT credentials.managed THEN now()
                        ELSE credentials.next_rotation_at END,
                    next_rotation_reason = CASE
                        WHEN credentials.current_version IS NULL THEN 'initial'
                        WHEN credentials.spec_hash <> EXCLUDED.spec_hash OR credentials.removed_at IS NOT NULL
                             OR NOT credentials.managed THEN 'spec_changed'
                        ELSE credentials.next_rotation_reason END
                RETURNING name
             )
             SELECT up.name, before.name IS NULL OR before.removed_at IS NOT NULL,
                    before.name IS NOT NULL AND before.removed_at IS NULL AND before.spec_hash <> h.hash
             FROM up
             LEFT JOIN before ON before.name = up.name
             JOIN unnest($1::text[], $6::text[]) AS h(name, hash) ON h.name = up.name",
        )
        .bind(&names)
        .bind(&kinds)
        .bind(&specs)
        .bind(&sinks)
        .bind(&schedules)
        .bind(&hashes)
        .bind(source)
        .fetch_all(&mut *tx)
        .await?;
        let removed: Vec<String> = sqlx::query_scalar(
            "UPDATE credentials SET removed_at = now(), lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE source = $1 AND removed_at IS NULL AND NOT (name = ANY($2))
             RETURNING name",
        )
        .bind(source)
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?;
        let mut report = SyncReport::default();
        for (name, added, changed) in rows {
            if added {
                report.added.push(name);
            } else if changed {
                report.changed.push(name);
            }
        }
        report.removed = removed;
        report.added.sort();
        report.changed.sort();
        report.removed.sort();
        let mut events = Vec::new();
        for (action, list) in [
            ("credential.declare", &report.added),
            ("credential.change", &report.changed),
            ("credential.retire", &report.removed),
        ] {
            for name in list {
                let mut e = NewEvent::new(actor, action, name, Outcome::Success);
                e.reason = Some(format!("{source} sync"));
                events.push(e);
            }
        }
        super::audit::record_many(&mut *tx, &events).await?;
        tx.commit().await?;
        Ok(report)
    }

    /// Validity of the named credentials (managed, not removed).
    pub async fn validities(&self, names: &[String]) -> Result<Vec<Validity>, StoreError> {
        Ok(sqlx::query_as::<_, Validity>(
            "SELECT id, name, current_version, not_before, not_after, next_rotation_at, next_rotation_reason,
                    failures, spec, kind, sink
             FROM credentials WHERE name = ANY($1) AND managed AND removed_at IS NULL",
        )
        .bind(names)
        .fetch_all(self.pool())
        .await?)
    }

    /// Sets due times (only for credentials not currently leased).
    pub async fn reschedule(
        &self,
        items: &[(i64, DateTime<Utc>, String)],
    ) -> Result<u64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = items.iter().map(|i| i.0).collect();
        let ats: Vec<DateTime<Utc>> = items.iter().map(|i| i.1).collect();
        let reasons: Vec<&str> = items.iter().map(|i| i.2.as_str()).collect();
        Ok(sqlx::query(
            "UPDATE credentials c SET next_rotation_at = u.at, next_rotation_reason = u.reason, updated_at = now()
             FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS u(id, at, reason)
             WHERE c.id = u.id AND (c.lease_expires_at IS NULL OR c.lease_expires_at <= now())",
        )
        .bind(&ids)
        .bind(&ats)
        .bind(&reasons)
        .execute(self.pool())
        .await?
        .rows_affected())
    }
}

/// A credential rekey tracks but does not rotate (a scanned certificate, a
/// legacy token found in the cluster).
#[derive(Debug, Clone)]
pub struct Tracked {
    /// Unique name, e.g. `scan:/etc/kubernetes/pki/apiserver.crt`.
    pub name: String,
    /// Kind.
    pub kind: &'static str,
    /// What is known about it (subject, issuer, path...; nothing secret).
    pub spec: serde_json::Value,
    /// Validity start.
    pub not_before: Option<DateTime<Utc>>,
    /// Expiry (None: never expires).
    pub not_after: Option<DateTime<Utc>>,
}

impl Store {
    /// Replaces the tracked credentials of `source` with `items`: upserts
    /// them, and retires rows of that source not in the list.
    pub async fn sync_tracked(
        &self,
        source: &str,
        items: &[Tracked],
    ) -> Result<(usize, usize), StoreError> {
        let names: Vec<&str> = items.iter().map(|d| d.name.as_str()).collect();
        let kinds: Vec<&str> = items.iter().map(|d| d.kind).collect();
        let specs: Vec<serde_json::Value> = items.iter().map(|d| d.spec.clone()).collect();
        let nbs: Vec<Option<DateTime<Utc>>> = items.iter().map(|d| d.not_before).collect();
        let nas: Vec<Option<DateTime<Utc>>> = items.iter().map(|d| d.not_after).collect();
        let mut tx = self.pool().begin().await?;
        let upserted = sqlx::query(
            "INSERT INTO credentials (name, kind, source, managed, spec, not_before, not_after)
             SELECT u.name, u.kind, $6, false, u.spec, u.nb, u.na
             FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[], $5::timestamptz[])
                  AS u(name, kind, spec, nb, na)
             ON CONFLICT (name) DO UPDATE SET
                kind = EXCLUDED.kind, spec = EXCLUDED.spec, not_before = EXCLUDED.not_before,
                not_after = EXCLUDED.not_after, removed_at = NULL, updated_at = now()
             WHERE credentials.source = EXCLUDED.source",
        )
        .bind(&names)
        .bind(&kinds)
        .bind(&specs)
        .bind(&nbs)
        .bind(&nas)
        .bind(source)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let retired = sqlx::query(
            "UPDATE credentials SET removed_at = now(), updated_at = now()
             WHERE source = $1 AND removed_at IS NULL AND NOT (name = ANY($2))",
        )
        .bind(source)
        .bind(&names)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((upserted as usize, retired as usize))
    }
}
