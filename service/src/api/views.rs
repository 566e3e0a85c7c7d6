//! What the admin API reads and writes: query parameters, request bodies and
//! response documents, with their OpenAPI schemas. Field names are the
//! contract (DESIGN.md); the CLI's client deserialises the same types.
//!
//! Every list answers `{"<items>": [...], "continue": TOKEN | null}`: pass
//! `continue` back with the same filters for the next page (see
//! [`super::paging`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::store::{
    audit::Event, credentials::Credential, inventory::Summary, rotations::Rotation,
};

/// One credential in the inventory list (the detail endpoint adds spec, sink, rotations).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialSummary {
    /// Unique name, e.g. `cert/default/web-tls`.
    pub name: String,
    /// `certificate`, `service_account_token` or `bootstrap_token`.
    pub kind: String,
    /// `valid`, `expired`, `failing`, `stale-consumer`, `pending`, `no-expiry`, `revoked` or
    /// `awaiting-approval` (its certificate request waits for approval).
    pub state: String,
    /// Start of the current version's validity.
    #[serde(serialize_with = "rfc3339::option")]
    pub not_before: Option<DateTime<Utc>>,
    /// End of the current version's validity.
    #[serde(serialize_with = "rfc3339::option")]
    pub not_after: Option<DateTime<Utc>>,
    /// When the engine will rotate it next.
    #[serde(serialize_with = "rfc3339::option")]
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Why then: `schedule`, `renew_fraction`, `renew_before`, `manual`, ...
    pub next_rotation_reason: Option<String>,
    /// `config`, `api`, `scan` or `discovered`.
    pub source: String,
    /// Rotated by rekey (false: tracked for expiry only).
    pub managed: bool,
    /// Cron schedule, if any.
    pub schedule: Option<String>,
    /// The current published version's number among the credential's
    /// versions (1, 2, 3, ...: the how-many-th issuance).
    pub current_version: Option<i64>,
    /// The current published version's id (the stable key: the file sink's
    /// `.rekey-version`, the Secret's `rekey.io/version`).
    pub current_version_id: Option<i64>,
    /// Consecutive failed rotations.
    pub failures: i32,
    /// The last rotation error, while failing.
    pub last_error: Option<String>,
    /// sha256 (hex) of the leaf the probed consumer served at the last probe.
    #[serde(default)]
    pub served_fingerprint: Option<String>,
    /// When the probe saw it.
    #[serde(default, serialize_with = "rfc3339::option")]
    pub served_checked_at: Option<DateTime<Utc>>,
    /// When the credential turns `stale-consumer` unless the consumer serves
    /// the current version first (null: it does, or no probe).
    #[serde(default, serialize_with = "rfc3339::option")]
    pub stale_consumer_at: Option<DateTime<Utc>>,
}

impl CredentialSummary {
    /// The summary of a stored row, with its state at `now`.
    pub fn from_stored(row: Summary, now: DateTime<Utc>) -> Self {
        let c = row.into_credential(now);
        Self {
            state: c.state(now).as_str().to_string(),
            name: c.name,
            kind: c.kind,
            not_before: c.not_before,
            not_after: c.not_after,
            next_rotation_at: c.next_rotation_at,
            next_rotation_reason: c.next_rotation_reason,
            source: c.source,
            managed: c.managed,
            schedule: c.schedule,
            current_version: c.current_version_number,
            current_version_id: c.current_version,
            failures: c.failures,
            last_error: c.last_error,
            served_fingerprint: c.observed.served_fingerprint,
            served_checked_at: c.observed.served_checked_at,
            stale_consumer_at: c.observed.stale_consumer_at,
        }
    }

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
            current_version: self.current_version_id,
            current_version_number: self.current_version,
            next_rotation_at: self.next_rotation_at,
            next_rotation_reason: self.next_rotation_reason.clone(),
            failures: self.failures,
            last_error: self.last_error.clone(),
            lease_owner: None,
            created_at: stamp,
            updated_at: stamp,
            observed: crate::store::credentials::Observed {
                served_fingerprint: self.served_fingerprint.clone(),
                served_checked_at: self.served_checked_at,
                stale_consumer_at: self.stale_consumer_at,
                ..Default::default()
            },
        }
    }
}

/// A page of the inventory, by name (the shape of `rekey status --json`, with more fields).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialList {
    /// By name.
    pub credentials: Vec<CredentialSummary>,
    /// Pass as `continue` for the next page; null on the last page.
    #[serde(rename = "continue", default)]
    pub continue_token: Option<String>,
}

/// Query of `GET /v1/credentials` and `GET /v1/bootstrap-tokens`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 1000 (default 500).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The `continue` of the previous page (opaque; only valid for the same list and filters).
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// A tracked credential.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    /// Unique name, e.g. `cert/default/web-tls`.
    pub name: String,
    /// `certificate`, `service_account_token` or `bootstrap_token`.
    pub kind: String,
    /// `valid`, `expired`, `failing`, `stale-consumer`, `pending`, `no-expiry`, `revoked` or
    /// `awaiting-approval` (its certificate request waits for approval).
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
    /// The current published version's number among the credential's
    /// versions (1, 2, 3, ...: the how-many-th issuance).
    pub current_version: Option<i64>,
    /// The current published version's id (the stable key: the file sink's
    /// `.rekey-version`, the Secret's `rekey.io/version`).
    pub current_version_id: Option<i64>,
    /// Consecutive failed rotations.
    pub failures: i32,
    /// The last rotation error, while failing.
    pub last_error: Option<String>,
    /// The declared spec.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// Where it is published.
    #[schema(value_type = Object)]
    pub sink: serde_json::Value,
    /// When first tracked.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Fingerprint of the trust bundle the sink holds (sha256 of the sorted
    /// sha256 digests of its CA certificates).
    #[serde(default)]
    pub bundle_fingerprint: Option<String>,
    /// When rekey wrote (or found) that bundle in the sink.
    #[serde(default)]
    pub bundle_published_at: Option<DateTime<Utc>>,
    /// sha256 (hex) of the leaf the probed consumer served at the last successful probe.
    #[serde(default)]
    pub served_fingerprint: Option<String>,
    /// When the probe saw it.
    #[serde(default)]
    pub served_checked_at: Option<DateTime<Utc>>,
    /// Authority Key Identifier (hex) of that leaf: the CA that signed it.
    #[serde(default)]
    pub served_issuer_key_id: Option<String>,
    /// The last probe attempt.
    #[serde(default)]
    pub probed_at: Option<DateTime<Utc>>,
    /// Why the last probe failed, while probes fail.
    #[serde(default)]
    pub probe_error: Option<String>,
    /// When the credential turns `stale-consumer` unless the consumer serves
    /// the current version first.
    #[serde(default)]
    pub stale_consumer_at: Option<DateTime<Utc>>,
}

impl CredentialView {
    /// The view of a stored credential, with its state at `now`.
    pub fn from_stored(c: Credential, now: DateTime<Utc>) -> Self {
        Self {
            state: c.state(now).as_str().to_string(),
            name: c.name,
            kind: c.kind,
            not_before: c.not_before,
            not_after: c.not_after,
            next_rotation_at: c.next_rotation_at,
            next_rotation_reason: c.next_rotation_reason,
            source: c.source,
            managed: c.managed,
            schedule: c.schedule,
            current_version: c.current_version_number,
            current_version_id: c.current_version,
            failures: c.failures,
            last_error: c.last_error,
            spec: c.spec,
            sink: c.sink,
            created_at: c.created_at,
            updated_at: c.updated_at,
            bundle_fingerprint: c.observed.bundle_fingerprint,
            bundle_published_at: c.observed.bundle_published_at,
            served_fingerprint: c.observed.served_fingerprint,
            served_checked_at: c.observed.served_checked_at,
            served_issuer_key_id: c.observed.served_issuer_key_id,
            probed_at: c.observed.probed_at,
            probe_error: c.observed.probe_error,
            stale_consumer_at: c.observed.stale_consumer_at,
        }
    }
}

/// One credential and its latest rotations.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialDetail {
    /// The credential.
    #[serde(flatten)]
    pub credential: CredentialView,
    /// Its latest rotations, newest first.
    pub recent_rotations: Vec<RotationView>,
}

/// A rotation attempt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotationView {
    /// Rotation id.
    pub id: Uuid,
    /// The credential's name.
    pub credential: String,
    /// `schedule`, `expiry`, `manual`, `join` or `startup`.
    pub trigger: String,
    /// Who asked.
    pub requested_by: String,
    /// Why.
    pub reason: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `abandoned`.
    pub status: String,
    /// True once it has succeeded, failed or been abandoned.
    pub finished: bool,
    /// The version it produced.
    pub version_id: Option<i64>,
    /// The replica that ran it.
    pub replica: Option<String>,
    /// The due time it served.
    pub due_at: Option<DateTime<Utc>>,
    /// When requested.
    pub requested_at: DateTime<Utc>,
    /// When the engine started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<Rotation> for RotationView {
    fn from(r: Rotation) -> Self {
        Self {
            finished: r.is_finished(),
            id: r.id,
            credential: r.credential,
            trigger: r.trigger,
            requested_by: r.requested_by,
            reason: r.reason,
            status: r.status,
            version_id: r.version_id,
            replica: r.replica,
            due_at: r.due_at,
            requested_at: r.requested_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            error: r.error,
        }
    }
}

/// Body of `POST /v1/credentials/{name}/rotate` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Why, for the audit record (at most 1024 bytes).
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
}

/// Query of `POST /v1/credentials/{name}/rotate`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RotateQuery {
    /// Answer only when the rotation has finished (or `[api].wait_timeout` passed: then 202).
    pub wait: Option<bool>,
}

/// A tracked bootstrap token with the nodes that joined with it (as `rekey token list --json`).
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapTokenView {
    /// The token's row.
    #[serde(flatten)]
    pub token: crate::k8s::bootstrap::db::TokenRow,
    /// Its joins, oldest first.
    pub joins: Vec<crate::k8s::bootstrap::db::JoinRow>,
}

/// A page of tracked bootstrap tokens, by id.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BootstrapTokenList {
    /// The tokens, each with its `joins` (as `rekey token list --json`).
    #[schema(value_type = Vec<Object>)]
    pub tokens: Vec<BootstrapTokenView>,
    /// Pass as `continue` for the next page; null on the last page.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// Query of `GET /v1/backups`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BackupsQuery {
    /// Include backups whose objects were pruned.
    pub include_pruned: Option<bool>,
    /// Only completed backups.
    pub completed_only: Option<bool>,
    /// Page size, newest first, 1 to 1000 (default 500).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The `continue` of the previous page (opaque; only valid with the same filters).
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// A page of recorded backups, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackupList {
    /// The backups (as `rekey backup list --json`).
    #[schema(value_type = Vec<Object>)]
    pub backups: Vec<crate::backup::BackupRecord>,
    /// Pass as `continue` for the next page; null on the last page.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this actor (certificate subject or Kubernetes user).
    pub actor: Option<String>,
    /// Only this action, e.g. `credential.rotate`.
    pub action: Option<String>,
    /// Only this target, e.g. a credential name.
    pub target: Option<String>,
    /// Only events after this id (the `next_after` of the previous page).
    /// Kept for existing clients; `continue` is the same position, sealed.
    /// Not together with `continue`.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 500).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The `continue` of the previous page (opaque; only valid with the same filters).
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

/// An audit event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEventView {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who: certificate subject, Kubernetes user, or `rekey/<replica>`.
    pub actor: String,
    /// What, e.g. `credential.rotate`.
    pub action: String,
    /// On what.
    pub target: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Why (from the caller).
    pub reason: Option<String>,
    /// The API request id.
    pub request_id: Option<String>,
    /// More facts (never secrets).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<Event> for AuditEventView {
    fn from(e: Event) -> Self {
        Self {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            reason: e.reason,
            request_id: e.request_id,
            details: e.details,
        }
    }
}

/// A page of audit events, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The events.
    pub events: Vec<AuditEventView>,
    /// Pass as `after` for the next page: the last event's id whenever the
    /// page is full (so the page after a full last page is empty); null
    /// otherwise. Kept for existing clients; prefer `continue`.
    pub next_after: Option<i64>,
    /// Pass as `continue` for the next page; null on the last page.
    #[serde(rename = "continue", default)]
    pub continue_token: Option<String>,
}

/// `/healthz`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
}

/// `/readyz`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// All of the below.
    pub ready: bool,
    /// Postgres answers and every migration is applied.
    pub database: bool,
    /// The rotation engine is running.
    pub engine: bool,
}

/// Times in the inventory list, written exactly as chrono's `Serialize`
/// writes them (RFC 3339, `Z`, 0/3/6/9 fraction digits) without going
/// through `fmt`: three per summary, they were an eighth of the server's
/// work per page.
mod rfc3339 {
    use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
    use serde::Serializer;

    /// Serialises an optional time (`null` when absent).
    pub fn option<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format(t)),
            None => s.serialize_none(),
        }
    }

    fn push_digits(out: &mut String, mut v: u32, width: usize) {
        let mut buf = [b'0'; 10];
        for i in (0..width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        for &b in &buf[..width] {
            out.push(char::from(b));
        }
    }

    /// `t` as chrono's `to_rfc3339_opts(SecondsFormat::AutoSi, true)`.
    pub fn format(t: &DateTime<Utc>) -> String {
        // Each accessor of a DateTime converts to local time first: once here.
        let n = t.naive_utc();
        let nanos = n.nanosecond();
        let Ok(year) = u32::try_from(n.year()) else {
            return t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        };
        if year > 9999 || nanos >= 1_000_000_000 {
            // Far years and leap seconds: the rare cases, chrono's own way.
            return t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        }
        let mut out = String::with_capacity(30);
        push_digits(&mut out, year, 4);
        out.push('-');
        push_digits(&mut out, n.month(), 2);
        out.push('-');
        push_digits(&mut out, n.day(), 2);
        out.push('T');
        push_digits(&mut out, n.hour(), 2);
        out.push(':');
        push_digits(&mut out, n.minute(), 2);
        out.push(':');
        push_digits(&mut out, n.second(), 2);
        if nanos != 0 {
            out.push('.');
            if nanos.is_multiple_of(1_000_000) {
                push_digits(&mut out, nanos / 1_000_000, 3);
            } else if nanos.is_multiple_of(1_000) {
                push_digits(&mut out, nanos / 1_000, 6);
            } else {
                push_digits(&mut out, nanos, 9);
            }
        }
        out.push('Z');
        out
    }

    #[cfg(test)]
    mod tests {
        use chrono::TimeZone;

        use super::*;

        #[test]
        fn written_as_chrono_writes_them() {
            let base = Utc.with_ymd_and_hms(2026, 11, 25, 9, 8, 7).unwrap();
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            let mut times = vec![
                base,
                DateTime::<Utc>::UNIX_EPOCH,
                Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
                Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(-1, 6, 1, 0, 0, 0).unwrap(),
                base + chrono::TimeDelta::milliseconds(120),
                base + chrono::TimeDelta::microseconds(123_450),
                base + chrono::TimeDelta::nanoseconds(5),
                base + chrono::TimeDelta::nanoseconds(1_000_001),
            ];
            for _ in 0..10_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let secs = (seed % 8_000_000_000) as i64 - 1_000_000_000;
                let nanos = match seed % 4 {
                    0 => 0,
                    1 => (seed >> 20) as u32 % 1000 * 1_000_000,
                    2 => (seed >> 20) as u32 % 1_000_000 * 1000,
                    _ => (seed >> 20) as u32 % 1_000_000_000,
                };
                times.push(DateTime::from_timestamp(secs, nanos).unwrap());
            }
            for t in times {
                let chrono = serde_json::to_value(t).unwrap();
                assert_eq!(serde_json::Value::String(format(&t)), chrono, "{t:?}");
            }
        }
    }
}
