//! Keyset pages of `bootstrap_tokens` (by id) with their joins, for
//! `GET /v1/bootstrap-tokens`: each page starts after the last id of the
//! previous one, so tokens recorded between two requests neither repeat nor
//! hide others.
//!
//! Part of the tables' owner (see [`super::db`]); a file of its own only
//! because issue 11 split the work between helpers.

use super::db::{JoinRow, TokenRow};
use crate::store::{Store, StoreError};

const TOKEN_COLUMNS: &str =
    "id, secret_uid, description, created, expiration, usages, groups, policy, state,
    first_seen, revoked_at, revoked_reason, revoked_node, revoked_by";
const JOIN_COLUMNS: &str = "csr_name, token_id, node_name, recorded_at, approved_at, issued_at, node_registered_at, csr_deleted_at";

/// At most `limit` tokens by id, starting after the id `after`.
pub async fn tokens(
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
