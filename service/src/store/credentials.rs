//! `credentials`: one row per tracked credential, and what makes a
//! credential name. Rows of credentials rekey found but does not manage
//! (source `discovered`: legacy tokens, bootstrap tokens) are written here
//! too, inside their finders' transactions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::{error::StoreError, pool::Store};

/// Kinds of credential (the `kind` column).
pub mod kind {
    /// An X.509 certificate.
    pub const CERTIFICATE: &str = "certificate";
    /// A service-account token.
    pub const SERVICE_ACCOUNT_TOKEN: &str = "service_account_token";
    /// A bootstrap token.
    pub const BOOTSTRAP_TOKEN: &str = "bootstrap_token";
}

/// How `last_error` begins while a certificate's request awaits approval
/// (a `kubernetes-csr` issuer whose CertificateSigningRequest nobody has
/// approved yet): the state is then `awaiting-approval`, not `failing`.
pub const AWAITING_APPROVAL: &str = "awaiting approval: ";

/// A credential as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Credential {
    /// Row id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// `certificate`, `service_account_token` or `bootstrap_token`.
    pub kind: String,
    /// `config`, `api`, `scan` or `discovered`.
    pub source: String,
    /// Rotated by rekey (false: tracked for expiry only).
    pub managed: bool,
    /// The spec (kind-specific JSON).
    pub spec: serde_json::Value,
    /// The sink (JSON).
    pub sink: serde_json::Value,
    /// Cron schedule.
    pub schedule: Option<String>,
    /// Start of the current version's validity.
    pub not_before: Option<DateTime<Utc>>,
    /// End of the current version's validity (None: never expires).
    pub not_after: Option<DateTime<Utc>>,
    /// The current published version (id).
    pub current_version: Option<i64>,
    /// Its number among the credential's versions (1, 2, 3, ...).
    #[sqlx(default)]
    pub current_version_number: Option<i64>,
    /// When the engine will rotate it next.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Why then (`schedule`, `renew_fraction`, `renew_before`, `manual`, ...).
    pub next_rotation_reason: Option<String>,
    /// Consecutive failed rotations.
    pub failures: i32,
    /// The last rotation error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Replica holding the lease, if claimed.
    pub lease_owner: Option<String>,
    /// When first tracked.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// What rekey observed at the consumer's end: the bundle its sink holds
    /// and what a probe saw the consumer serve.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub observed: Observed,
}

/// What rekey observed about a credential's sink and consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Observed {
    /// Fingerprint of the trust bundle the sink holds (`issue::bundle`).
    pub bundle_fingerprint: Option<String>,
    /// When rekey wrote (or found) that bundle there.
    pub bundle_published_at: Option<DateTime<Utc>>,
    /// sha256 (hex) of the leaf the probed consumer served at the last successful probe.
    pub served_fingerprint: Option<String>,
    /// When that was.
    pub served_checked_at: Option<DateTime<Utc>>,
    /// Authority Key Identifier (hex) of that leaf: the CA that signed it.
    pub served_issuer_key_id: Option<String>,
    /// The last probe attempt.
    pub probed_at: Option<DateTime<Utc>>,
    /// Why the last probe failed, while probes fail.
    pub probe_error: Option<String>,
    /// When the credential turns `stale-consumer` unless the consumer is
    /// seen serving the current version first.
    pub stale_consumer_at: Option<DateTime<Utc>>,
}

/// The one-word state shown by `rekey status` and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Valid, and rotation is on schedule.
    Valid,
    /// Past `not_after`.
    Expired,
    /// Valid but the last rotation attempt failed.
    Failing,
    /// Declared but no version has been issued yet.
    Pending,
    /// Never expires (a legacy long-lived token): a warning.
    NoExpiry,
    /// Revoked (bootstrap tokens).
    Revoked,
    /// Its certificate request waits for someone to approve it
    /// (`last_error` names the CertificateSigningRequest).
    AwaitingApproval,
    /// Valid, but the probed consumer still serves an older version
    /// `probe_grace` after the current one was published.
    StaleConsumer,
}

impl State {
    /// The spelling in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Expired => "expired",
            Self::Failing => "failing",
            Self::Pending => "pending",
            Self::NoExpiry => "no-expiry",
            Self::Revoked => "revoked",
            Self::AwaitingApproval => "awaiting-approval",
            Self::StaleConsumer => "stale-consumer",
        }
    }
}

impl Credential {
    /// The state at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> State {
        let awaiting = self.failures > 0
            && self
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with(AWAITING_APPROVAL));
        match self.not_after {
            Some(t) if t <= now => State::Expired,
            _ if awaiting => State::AwaitingApproval,
            Some(_) if self.failures > 0 => State::Failing,
            Some(_) if self.observed.stale_consumer_at.is_some_and(|at| at <= now) => {
                State::StaleConsumer
            }
            Some(_) => State::Valid,
            None if self.managed => State::Pending,
            None => State::NoExpiry,
        }
    }
}

const COLUMNS: &str = "id, name, kind, source, managed, spec, sink, schedule, not_before, not_after, current_version,
    next_rotation_at, next_rotation_reason, failures, last_error, lease_owner, created_at, updated_at,
    bundle_fingerprint, bundle_published_at, served_fingerprint, served_checked_at, served_issuer_key_id,
    probed_at, probe_error, stale_consumer_at,
    (SELECT v.number FROM credential_versions v WHERE v.id = current_version) AS current_version_number";

impl Store {
    /// Every credential not removed, by name.
    pub async fn list_credentials(&self) -> Result<Vec<Credential>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM credentials WHERE removed_at IS NULL ORDER BY name");
        Ok(sqlx::query_as::<_, Credential>(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await?)
    }

    /// One credential by name.
    pub async fn credential(&self, name: &str) -> Result<Option<Credential>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM credentials WHERE name = $1 AND removed_at IS NULL");
        Ok(sqlx::query_as::<_, Credential>(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }
}

/// Credential names: printable, no whitespace, at most 253 bytes.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{name}` contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// A credential rekey found in the cluster and tracks for expiry only
/// (source `discovered`, unmanaged).
#[derive(Debug, Clone)]
pub struct Discovered {
    /// Unique name, e.g. `legacy-sa-token/<namespace>/<secret>`.
    pub name: String,
    /// Kind (see [`kind`]).
    pub kind: &'static str,
    /// Non-secret facts (JSON).
    pub spec: serde_json::Value,
    /// Start of validity, when known.
    pub not_before: Option<DateTime<Utc>>,
    /// Expiry (None: never expires).
    pub not_after: Option<DateTime<Utc>>,
}

/// Records a discovered credential (or brings a removed one back). A row
/// of the same name that rekey declares or issues is left alone.
pub async fn upsert_discovered(conn: &mut PgConnection, d: &Discovered) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO credentials (name, kind, source, managed, spec, not_before, not_after)
         VALUES ($1, $2, 'discovered', false, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, not_before = EXCLUDED.not_before,
           not_after = EXCLUDED.not_after, removed_at = NULL, updated_at = now()
         WHERE credentials.source = 'discovered'",
    )
    .bind(&d.name)
    .bind(d.kind)
    .bind(&d.spec)
    .bind(d.not_before)
    .bind(d.not_after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a discovered credential removed (it is gone from the cluster).
pub async fn remove_discovered(conn: &mut PgConnection, name: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE credentials SET removed_at = now(), updated_at = now()
         WHERE name = $1 AND source = 'discovered' AND removed_at IS NULL",
    )
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// Replaces the discovered credentials of `kind` whose names start with
    /// `prefix` by `found`, in one transaction: each is upserted, and those
    /// not found any more are marked removed.
    pub async fn sync_discovered(
        &self,
        kind: &str,
        prefix: &str,
        found: &[Discovered],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for d in found {
            upsert_discovered(&mut tx, d).await?;
        }
        let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
        sqlx::query(
            "UPDATE credentials SET removed_at = now(), updated_at = now()
             WHERE source = 'discovered' AND kind = $1 AND removed_at IS NULL
               AND starts_with(name, $2) AND NOT (name = ANY($3))",
        )
        .bind(kind)
        .bind(prefix)
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
