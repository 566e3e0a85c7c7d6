//! `GET /v1/credentials`: the inventory summary, served from a rendered copy
//! while the table is unchanged.
//!
//! Listing 1,000 credentials means decoding 1,000 rows and writing ~250 KiB of
//! JSON; under many clients that work dominates. The rendered body is kept
//! and reused while (a) the `credentials` table is unchanged — checked on
//! every request with one cheap aggregate: the row count and the sum of the
//! rows' `xmin` (every insert or update writes a tuple with a new, larger
//! transaction id, so any change moves the pair) — and (b) no credential's
//! `not_after` has passed since it was rendered (`state` depends on the
//! clock). So a cached answer is always exactly what a fresh one would be.

use std::sync::Mutex;

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::{Store, StoreError, credentials::Credential};

/// One credential in the inventory list (the detail endpoint adds spec, sink, rotations).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct CredentialSummary {
    /// Unique name, e.g. `cert/default/web-tls`.
    pub name: String,
    /// `certificate`, `service_account_token` or `bootstrap_token`.
    pub kind: String,
    /// `valid`, `expired`, `failing`, `pending`, `no-expiry` or `revoked`.
    #[sqlx(skip)]
    pub state: String,
    /// Start of the current version's validity.
    pub not_before: Option<DateTime<Utc>>,
    /// End of the current version's validity.
    pub not_after: Option<DateTime<Utc>>,
    /// When the engine will rotate it next.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Why then: `schedule`, `renew_fraction`, `renew_before`, `manual`, ...
    pub next_rotation_reason: Option<String>,
    /// `config`, `api`, `scan` or `discovered`.
    pub source: String,
    /// Rotated by rekey (false: tracked for expiry only).
    pub managed: bool,
    /// Cron schedule, if any.
    pub schedule: Option<String>,
    /// Id of the current published version.
    pub current_version: Option<i64>,
    /// Consecutive failed rotations.
    pub failures: i32,
    /// The last rotation error, while failing.
    pub last_error: Option<String>,
}

impl CredentialSummary {
    /// The store's shape, for the state rules and the shared status renderers
    /// (spec and sink are not in a summary: empty objects).
    pub fn to_stored(&self, stamp: DateTime<Utc>) -> Credential {
        Credential {
            id: 0,
            name: self.name.clone(),
            kind: self.kind.clone(),
            source: self.source.clone(),
            managed: self.managed,
            spec: serde_json::json!({}),
            sink: serde_json::json!({}),
            schedule: self.schedule.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            current_version: self.current_version,
            next_rotation_at: self.next_rotation_at,
            next_rotation_reason: self.next_rotation_reason.clone(),
            failures: self.failures,
            last_error: self.last_error.clone(),
            lease_owner: None,
            created_at: stamp,
            updated_at: stamp,
        }
    }
}

/// Every tracked credential (the shape of `rekey status --json`, with more fields).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialList {
    /// By name.
    pub credentials: Vec<CredentialSummary>,
}

/// The change detector of the `credentials` table: (rows, sum of xmin).
type Version = (i64, i64);

struct Rendered {
    version: Version,
    /// The earliest `not_after` still in the future when rendered: a state flips there.
    valid_until: Option<DateTime<Utc>>,
    body: Bytes,
}

/// The rendered inventory, shared by all requests.
#[derive(Default)]
pub struct InventoryCache {
    rendered: Mutex<Option<Rendered>>,
}

async fn version(store: &Store) -> Result<Version, StoreError> {
    Ok(sqlx::query_as(
        "SELECT count(*), coalesce(sum(xmin::text::bigint), 0)::bigint FROM credentials",
    )
    .fetch_one(store.pool())
    .await?)
}

impl InventoryCache {
    /// The JSON body of `GET /v1/credentials` at `now`.
    pub async fn body(&self, store: &Store, now: DateTime<Utc>) -> Result<Bytes, StoreError> {
        let v = version(store).await?;
        if let Ok(guard) = self.rendered.lock()
            && let Some(r) = guard.as_ref()
            && r.version == v
            && r.valid_until.is_none_or(|t| now < t)
        {
            return Ok(r.body.clone());
        }
        // Rendered from rows read after the version: at least as new as `v`.
        let mut rows: Vec<CredentialSummary> = sqlx::query_as(
            "SELECT name, kind, not_before, not_after, next_rotation_at, next_rotation_reason, source,
                    managed, schedule, current_version, failures, last_error
             FROM credentials WHERE removed_at IS NULL ORDER BY name",
        )
        .fetch_all(store.pool())
        .await?;
        for r in &mut rows {
            r.state = r.to_stored(now).state(now).as_str().to_string();
        }
        let valid_until = rows
            .iter()
            .filter_map(|r| r.not_after)
            .filter(|t| *t > now)
            .min();
        let body = Bytes::from(
            serde_json::to_vec(&CredentialList { credentials: rows })
                .map_err(|e| StoreError::Query(sqlx::Error::Decode(Box::new(e))))?,
        );
        if let Ok(mut guard) = self.rendered.lock() {
            *guard = Some(Rendered {
                version: v,
                valid_until,
                body: body.clone(),
            });
        }
        Ok(body)
    }
}
