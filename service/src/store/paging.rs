//! `api_paging_key` (migration 0007): the HMAC-SHA256 key of the admin API's
//! `continue` tokens, made once and shared by every replica so that a list
//! begun on one replica can be continued on any other.
//!
//! This key is **not a secret in the sense of DESIGN.md** ("private keys and
//! token values are never stored in Postgres in plaintext"). It guards no
//! credential and grants no access: a `continue` token only says where the
//! next page of a list starts, it is checked after the caller has been
//! authenticated and authorized for that list, and it can only select rows
//! that caller may read anyway. Anyone who can read this row can already read
//! every table the tokens point into. The MAC exists so that tokens stay
//! opaque (clients cannot come to depend on their layout) and an altered,
//! truncated or misapplied token is refused with a clear 400 instead of
//! silently starting somewhere else. So it is kept in plain text beside the
//! data it pages; deleting the row makes a new key (tokens in flight then fail
//! with 400 and the client starts the list again).

use zeroize::Zeroizing;

use super::{Store, StoreError};

/// Bytes of key: 256 bits, the strength of HMAC-SHA256.
pub const KEY_LEN: usize = 32;

/// The shared paging key, created on first use.
pub async fn paging_key(store: &Store) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let mut fresh = Zeroizing::new(vec![0u8; KEY_LEN]);
    aws_lc_rs::rand::fill(&mut fresh).map_err(|_| {
        StoreError::Query(sqlx::Error::Protocol(
            "the system random number generator failed".into(),
        ))
    })?;
    // Two statements: when another replica inserts at the same moment, ours
    // waits for it and does nothing, and the SELECT (a new snapshot) sees its row.
    sqlx::query(
        "INSERT INTO api_paging_key (id, key) VALUES (true, $1) ON CONFLICT (id) DO NOTHING",
    )
    .bind(fresh.as_slice())
    .execute(store.pool())
    .await?;
    let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM api_paging_key WHERE id")
        .fetch_one(store.pool())
        .await?;
    Ok(Zeroizing::new(key))
}
