//! `bootstrap_tokens` and `bootstrap_token_joins` (migration 0004). Each
//! live token is mirrored in `credentials` (`bootstrap-token/<id>`, kind
//! `bootstrap_token`, unmanaged) so `rekey status` shows its expiry; those
//! rows are written through `store::credentials`, in the same transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::model::{Join, Policy, TokenInfo};
use crate::store::{
    Store, StoreError,
    audit::{NewEvent, Outcome, Ticket, record_many},
    credentials::{self, Discovered, kind},
};

/// A stored token.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TokenRow {
    /// Token id.
    pub id: String,
    /// The Secret's uid.
    #[serde(skip)]
    pub secret_uid: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Created.
    pub created: Option<DateTime<Utc>>,
    /// Expiration.
    pub expiration: Option<DateTime<Utc>>,
    /// Usages.
    pub usages: Vec<String>,
    /// Extra groups.
    pub groups: Vec<String>,
    /// Policy.
    pub policy: String,
    /// State.
    pub state: String,
    /// First seen by rekey.
    pub first_seen: DateTime<Utc>,
    /// When revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why.
    pub revoked_reason: Option<String>,
    /// The node whose join triggered it.
    pub revoked_node: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// A stored join.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JoinRow {
    /// CSR name.
    pub csr_name: String,
    /// Token id.
    #[serde(skip)]
    pub token_id: String,
    /// Node.
    pub node_name: String,
    /// When rekey saw the CSR.
    pub recorded_at: DateTime<Utc>,
    /// When rekey saw it approved.
    pub approved_at: Option<DateTime<Utc>>,
    /// When rekey saw its certificate.
    pub issued_at: Option<DateTime<Utc>>,
    /// When rekey saw the Node.
    pub node_registered_at: Option<DateTime<Utc>>,
    /// When rekey saw the CSR deleted.
    pub csr_deleted_at: Option<DateTime<Utc>>,
}

const TOKEN_COLUMNS: &str =
    "id, secret_uid, description, created, expiration, usages, groups, policy, state,
    first_seen, revoked_at, revoked_reason, revoked_node, revoked_by";
const JOIN_COLUMNS: &str = "csr_name, token_id, node_name, recorded_at, approved_at, issued_at, node_registered_at, csr_deleted_at";

fn credential_name(id: &str) -> String {
    format!("bootstrap-token/{id}")
}

/// Records a token Secret seen in the cluster; returns true when it is new to rekey.
pub async fn upsert_token(
    store: &Store,
    t: &TokenInfo,
    policy: Policy,
) -> Result<bool, StoreError> {
    let mut tx = store.pool().begin().await?;
    let inserted: bool = sqlx::query_scalar(
        "INSERT INTO bootstrap_tokens AS b (id, secret_uid, description, created, expiration, usages, groups, policy)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET
           state = CASE WHEN b.secret_uid IS DISTINCT FROM EXCLUDED.secret_uid
                          AND b.state IN ('revoked', 'expired', 'deleted') THEN 'active' ELSE b.state END,
           revoked_at = CASE WHEN b.secret_uid IS DISTINCT FROM EXCLUDED.secret_uid
                          AND b.state IN ('revoked', 'expired', 'deleted') THEN NULL ELSE b.revoked_at END,
           revoked_reason = CASE WHEN b.secret_uid IS DISTINCT FROM EXCLUDED.secret_uid
                          AND b.state IN ('revoked', 'expired', 'deleted') THEN NULL ELSE b.revoked_reason END,
           revoked_node = CASE WHEN b.secret_uid IS DISTINCT FROM EXCLUDED.secret_uid
                          AND b.state IN ('revoked', 'expired', 'deleted') THEN NULL ELSE b.revoked_node END,
           revoked_by = CASE WHEN b.secret_uid IS DISTINCT FROM EXCLUDED.secret_uid
                          AND b.state IN ('revoked', 'expired', 'deleted') THEN NULL ELSE b.revoked_by END,
           secret_uid = CASE WHEN b.state = 'revoking' THEN b.secret_uid ELSE EXCLUDED.secret_uid END,
           description = EXCLUDED.description, created = EXCLUDED.created, expiration = EXCLUDED.expiration,
           usages = EXCLUDED.usages, groups = EXCLUDED.groups, policy = EXCLUDED.policy,
           last_seen = now(), updated_at = now()
         RETURNING (xmax = 0)",
    )
    .bind(&t.id)
    .bind(&t.secret_uid)
    .bind(&t.description)
    .bind(t.created)
    .bind(t.expiration)
    .bind(&t.usages)
    .bind(&t.groups)
    .bind(policy.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let state: String = sqlx::query_scalar("SELECT state FROM bootstrap_tokens WHERE id = $1")
        .bind(&t.id)
        .fetch_one(&mut *tx)
        .await?;
    if matches!(state.as_str(), "active" | "used") {
        credentials::upsert_discovered(
            &mut tx,
            &Discovered {
                name: credential_name(&t.id),
                kind: kind::BOOTSTRAP_TOKEN,
                spec: serde_json::json!({"bootstrap_token": t.id, "policy": policy.as_str(), "usages": t.usages, "groups": t.groups}),
                not_before: t.created,
                not_after: t.expiration,
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// Records (or updates) a join; returns true when the CSR is new to rekey.
pub async fn record_join(
    store: &Store,
    j: &Join,
    registered: bool,
    deleted: bool,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO bootstrap_token_joins AS j
           (csr_uid, csr_name, token_id, node_name, approved_at, issued_at, node_registered_at, csr_deleted_at)
         VALUES ($1, $2, $3, $4,
                 CASE WHEN $5 THEN now() END, CASE WHEN $6 THEN now() END,
                 CASE WHEN $7 THEN now() END, CASE WHEN $8 THEN now() END)
         ON CONFLICT (csr_uid) DO UPDATE SET
           approved_at = coalesce(j.approved_at, EXCLUDED.approved_at),
           issued_at = coalesce(j.issued_at, EXCLUDED.issued_at),
           node_registered_at = coalesce(j.node_registered_at, EXCLUDED.node_registered_at),
           csr_deleted_at = coalesce(j.csr_deleted_at, EXCLUDED.csr_deleted_at)
         RETURNING (xmax = 0)",
    )
    .bind(&j.csr_uid)
    .bind(&j.csr_name)
    .bind(&j.token_id)
    .bind(&j.node_name)
    .bind(j.approved)
    .bind(j.issued)
    .bind(registered)
    .bind(deleted)
    .fetch_one(store.pool())
    .await?)
}

/// Marks joins of registered nodes; returns the token ids affected.
pub async fn nodes_registered(store: &Store, nodes: &[String]) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE bootstrap_token_joins SET node_registered_at = now()
         WHERE node_name = ANY($1) AND node_registered_at IS NULL
         RETURNING token_id",
    )
    .bind(nodes)
    .fetch_all(store.pool())
    .await?)
}

/// One token.
pub async fn token(store: &Store, id: &str) -> Result<Option<TokenRow>, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens WHERE id = $1");
    Ok(sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(store.pool())
        .await?)
}

/// Every token, by id.
pub async fn tokens(store: &Store) -> Result<Vec<TokenRow>, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens ORDER BY id");
    Ok(sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await?)
}

/// Joins of one token, oldest first.
pub async fn joins(store: &Store, id: &str) -> Result<Vec<JoinRow>, StoreError> {
    let sql = format!(
        "SELECT {JOIN_COLUMNS} FROM bootstrap_token_joins WHERE token_id = $1 ORDER BY recorded_at, csr_name"
    );
    Ok(sqlx::query_as::<_, JoinRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_all(store.pool())
        .await?)
}

/// Every join.
pub async fn all_joins(store: &Store) -> Result<Vec<JoinRow>, StoreError> {
    let sql =
        format!("SELECT {JOIN_COLUMNS} FROM bootstrap_token_joins ORDER BY recorded_at, csr_name");
    Ok(sqlx::query_as::<_, JoinRow>(sqlx::AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await?)
}

/// Ids of tokens in the given states.
pub async fn ids_in(store: &Store, states: &[&str]) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM bootstrap_tokens WHERE state = ANY($1) ORDER BY id")
            .bind(states)
            .fetch_all(store.pool())
            .await?,
    )
}

/// Live tokens whose expiration or `max_age` (created at or before
/// `created_cutoff`) has come.
pub async fn time_due_ids(
    store: &Store,
    now: DateTime<Utc>,
    created_cutoff: Option<DateTime<Utc>>,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM bootstrap_tokens
         WHERE state IN ('active', 'used')
           AND ((expiration IS NOT NULL AND expiration <= $1) OR ($2::timestamptz IS NOT NULL AND created <= $2))
         ORDER BY id",
    )
    .bind(now)
    .bind(created_cutoff)
    .fetch_all(store.pool())
    .await?)
}

/// `active` → `used`.
pub async fn mark_used(store: &Store, id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE bootstrap_tokens SET state = 'used', updated_at = now() WHERE id = $1 AND state = 'active'")
        .bind(id)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// The Secret went away without rekey: `expired` or `deleted` (only for that Secret's uid).
pub async fn mark_gone(
    store: &Store,
    id: &str,
    uid: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let mut tx = store.pool().begin().await?;
    let done = sqlx::query(
        "UPDATE bootstrap_tokens
         SET state = CASE WHEN expiration IS NOT NULL AND expiration <= $3 THEN 'expired' ELSE 'deleted' END,
             updated_at = now()
         WHERE id = $1 AND state IN ('active', 'used') AND ($2::text IS NULL OR secret_uid IS NULL OR secret_uid = $2)",
    )
    .bind(id)
    .bind(uid)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if done {
        credentials::remove_discovered(&mut tx, &credential_name(id)).await?;
    }
    tx.commit().await?;
    Ok(done)
}

/// Claims a live token for revocation (`active`/`used` → `revoking`):
/// `Some(secret_uid)` for the one caller that wins, `None` otherwise.
pub async fn claim_revocation(
    store: &Store,
    id: &str,
    reason: &str,
    node: Option<&str>,
) -> Result<Option<Option<String>>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE bootstrap_tokens SET state = 'revoking', revoked_reason = $2, revoked_node = $3, updated_at = now()
         WHERE id = $1 AND state IN ('active', 'used')
         RETURNING secret_uid",
    )
    .bind(id)
    .bind(reason)
    .bind(node)
    .fetch_optional(store.pool())
    .await?)
}

/// `revoking` → `revoked`, with the audit event, in one transaction; false
/// if another caller finished it first. With `audit` (an API request), the
/// event is the request's (its request id; its reason, if it gave one).
pub async fn finish_revocation(
    store: &Store,
    id: &str,
    actor: &str,
    audit: Option<&Ticket>,
) -> Result<bool, StoreError> {
    let mut tx = store.pool().begin().await?;
    let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "UPDATE bootstrap_tokens SET state = 'revoked', revoked_at = now(), revoked_by = $2, updated_at = now()
         WHERE id = $1 AND state = 'revoking'
         RETURNING revoked_reason, revoked_node",
    )
    .bind(id)
    .bind(actor)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((reason, node)) = row else {
        return Ok(false);
    };
    let csrs: Vec<String> = sqlx::query_scalar(
        "SELECT csr_name FROM bootstrap_token_joins WHERE token_id = $1 ORDER BY recorded_at",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let details = serde_json::json!({"node": node, "csrs": csrs, "secret": format!("kube-system/bootstrap-token-{id}"), "trigger": reason});
    let mut ev = match audit {
        Some(t) => t.event(Outcome::Success, details),
        None => {
            let mut ev = NewEvent::new(actor, "bootstrap_token.revoke", "", Outcome::Success);
            ev.details = details;
            ev
        }
    };
    ev.target = format!("bootstrap-token/{id}");
    ev.reason = ev.reason.or(reason);
    credentials::remove_discovered(&mut tx, &credential_name(id)).await?;
    match audit {
        Some(t) => t.commit_with(tx, &ev).await?,
        None => {
            record_many(&mut *tx, std::slice::from_ref(&ev)).await?;
            tx.commit().await?;
        }
    }
    Ok(true)
}

// Keyset pages of `bootstrap_tokens` (by id) with their joins, for
// `GET /v1/bootstrap-tokens`: each page starts after the last id of the
// previous one, so tokens recorded between two requests neither repeat nor
// hide others.

/// At most `limit` tokens by id, starting after the id `after`.
pub async fn tokens_page(
    store: &Store,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TokenRow>, StoreError> {
    let sql = format!(
        "SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens
         WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2"
    );
    Ok(sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(limit.max(1))
        .fetch_all(store.pool())
        .await?)
}

/// The joins of the tokens `ids`, oldest first.
pub async fn joins_of(store: &Store, ids: &[String]) -> Result<Vec<JoinRow>, StoreError> {
    let sql = format!(
        "SELECT {JOIN_COLUMNS} FROM bootstrap_token_joins WHERE token_id = ANY($1)
         ORDER BY recorded_at, csr_name"
    );
    Ok(sqlx::query_as::<_, JoinRow>(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(store.pool())
        .await?)
}
