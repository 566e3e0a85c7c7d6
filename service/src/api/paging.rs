//! Paged lists, like a Kubernetes list: `?limit=N&continue=TOKEN` in,
//! `"continue": TOKEN` (null on the last page) out.
//!
//! ```text
//!  ?limit ───► 1..=1000 (default 500), else 400 naming `limit`
//!  ?continue ─► base64url ─► version ─► HMAC-SHA256 (key, list, filters, position) ─► position
//!                                       (no match: 400 naming `continue`)
//!  store ─────► rows after the position in the list's total order, limit + 1
//!  response ◄── the first `limit` rows; `continue` = seal(last row's sort key) if one was left over
//! ```
//!
//! **Keyset, never OFFSET.** A token holds the sort key of the last row sent,
//! and the next page is "the rows after that key". Every list's order is
//! total (it ends on a unique column: `name`, `id`), so rows inserted or
//! removed between two requests never shift the pages: each row that existed
//! at the first request and still exists is sent exactly once, in order, and
//! a new row appears only if it sorts after the position.
//!
//! **Opaque and tamper-evident.** The token is authenticated with HMAC-SHA256
//! under the key in `api_paging_key` ([`crate::store::paging`]), which every
//! replica shares, so a list begun on one replica continues on any other. The
//! MAC also covers the list and its filters: a token altered, truncated,
//! forged, or used on another list or with other filters is refused. Tokens
//! do not expire; the position they hold stays meaningful.

use aws_lc_rs::hmac;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::OnceCell;

use super::problem::HttpError;
use crate::store::{Store, StoreError};

/// Rows per page when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 500;

/// The largest `limit`: a page of 1,000 credential summaries is ~320 KiB.
pub const MAX_LIMIT: i64 = 1000;

/// Longest `continue` accepted (a token for a 253-byte name is ~400).
const MAX_TOKEN: usize = 2048;

/// The token layout's version (first byte).
const VERSION: u8 = 1;

/// Bytes of the HMAC-SHA256 tag at the end of a token.
const TAG_LEN: usize = 32;

/// The lists that page, each bound into its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// `GET /v1/credentials`, by name.
    Credentials,
    /// `GET /v1/bootstrap-tokens`, by id.
    BootstrapTokens,
    /// `GET /v1/backups`, newest first (`started_at DESC, id`).
    Backups,
    /// `GET /v1/audit`, oldest first (by id).
    Audit,
}

impl List {
    /// The path, which is what a token is bound to.
    pub fn path(self) -> &'static str {
        match self {
            Self::Credentials => "/v1/credentials",
            Self::BootstrapTokens => "/v1/bootstrap-tokens",
            Self::Backups => "/v1/backups",
            Self::Audit => "/v1/audit",
        }
    }
}

/// Reads `?limit=`: absent is [`DEFAULT_LIMIT`]; 1 to [`MAX_LIMIT`] else 400.
pub fn limit(raw: Option<&str>) -> Result<i64, HttpError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    let n: i64 = raw.trim().parse().map_err(|_| {
        HttpError::BadRequest(format!(
            "limit `{}` is not a number: give 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
            raw.chars().take(40).collect::<String>()
        ))
    })?;
    if !(1..=MAX_LIMIT).contains(&n) {
        return Err(HttpError::BadRequest(format!(
            "limit {n} is outside 1..={MAX_LIMIT}"
        )));
    }
    Ok(n)
}

/// The key tokens are authenticated with.
pub struct PagingKey(hmac::Key);

impl std::fmt::Debug for PagingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PagingKey(..)")
    }
}

impl PagingKey {
    /// A key from its bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// Binds tokens to `list` with `filters` (the query parameters that
    /// choose the rows, defaults applied; `null` when none).
    pub fn pager(&self, list: List, filters: serde_json::Value) -> Pager<'_> {
        Pager {
            key: self,
            list,
            filters: serde_json::to_vec(&filters).unwrap_or_default(),
        }
    }
}

/// The shared key, read from (or created in) Postgres on first use.
#[derive(Debug, Default)]
pub struct PagingKeys {
    key: OnceCell<PagingKey>,
}

impl PagingKeys {
    /// The key; the first call reads it from Postgres.
    pub async fn get(&self, store: &Store) -> Result<&PagingKey, StoreError> {
        self.key
            .get_or_try_init(|| async {
                let bytes = crate::store::paging::paging_key(store).await?;
                Ok(PagingKey::new(&bytes))
            })
            .await
    }
}

/// Seals and opens the tokens of one list with one set of filters.
#[derive(Debug)]
pub struct Pager<'k> {
    key: &'k PagingKey,
    list: List,
    filters: Vec<u8>,
}

impl Pager<'_> {
    fn tag(&self, payload: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key.0);
        ctx.update(b"rekey continue\0");
        ctx.update(&[VERSION]);
        ctx.update(self.list.path().as_bytes());
        ctx.update(b"\0");
        ctx.update(&self.filters);
        ctx.update(b"\0");
        ctx.update(payload);
        ctx.sign()
    }

    /// The token for the position after the row whose sort key is `position`.
    pub fn seal<K: Serialize>(&self, position: &K) -> String {
        let payload = serde_json::to_vec(position).unwrap_or_default();
        let mut token = Vec::with_capacity(1 + payload.len() + TAG_LEN);
        token.push(VERSION);
        token.extend_from_slice(&payload);
        token.extend_from_slice(self.tag(&payload).as_ref());
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The position in `?continue=`, if given; a bad token is a 400 naming `continue`.
    pub fn open<K: DeserializeOwned>(&self, token: Option<&str>) -> Result<Option<K>, HttpError> {
        let Some(token) = token else {
            return Ok(None);
        };
        let bad = || {
            HttpError::BadRequest(format!(
                "continue: the token is not valid for this request (altered, truncated, made \
                 for another list or other filters, or by another installation); send the \
                 `continue` value of the previous page of {} with the same filters, or start \
                 again without it",
                self.list.path()
            ))
        };
        if token.is_empty() || token.len() > MAX_TOKEN {
            return Err(bad());
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        if raw.len() < 1 + TAG_LEN || raw[0] != VERSION {
            return Err(bad());
        }
        let (payload, tag) = raw[1..].split_at(raw.len() - 1 - TAG_LEN);
        // Constant time: a forger learns nothing from how long the check took.
        aws_lc_rs::constant_time::verify_slices_are_equal(self.tag(payload).as_ref(), tag)
            .map_err(|_| bad())?;
        serde_json::from_slice(payload).map(Some).map_err(|_| bad())
    }

    /// Cuts `rows` (fetched with `limit + 1`) to `limit` and makes the token
    /// for the page after them, or `None` when nothing is left.
    pub fn page<T, K: Serialize>(
        &self,
        mut rows: Vec<T>,
        limit: i64,
        sort_key: impl Fn(&T) -> K,
    ) -> (Vec<T>, Option<String>) {
        let limit = usize::try_from(limit).unwrap_or(0);
        if rows.len() <= limit {
            return (rows, None);
        }
        rows.truncate(limit);
        let next = rows.last().map(|r| self.seal(&sort_key(r)));
        (rows, next)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::*;

    fn key() -> PagingKey {
        PagingKey::new(&[7u8; 32])
    }

    fn no_filters() -> serde_json::Value {
        serde_json::Value::Null
    }

    fn is_bad_continue(r: Result<Option<String>, HttpError>) -> bool {
        matches!(r, Err(HttpError::BadRequest(m)) if m.starts_with("continue:"))
    }

    #[test]
    fn tokens_round_trip_every_position_type() {
        let k = key();
        let p = k.pager(List::Credentials, no_filters());
        let name = "cert/default/web-tls \u{e9}\"\\".to_string();
        let t = p.seal(&name);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{t}"
        );
        assert!(
            !t.contains("web-tls"),
            "the token must not show its position: {t}"
        );
        assert_eq!(p.open::<String>(Some(&t)).unwrap(), Some(name));
        assert_eq!(p.open::<String>(None).unwrap(), None);

        let a = k.pager(List::Audit, serde_json::json!({"actor": null}));
        assert_eq!(a.open::<i64>(Some(&a.seal(&42i64))).unwrap(), Some(42));

        let b = k.pager(List::Backups, serde_json::json!({"include_pruned": false}));
        let at: DateTime<Utc> = "2026-11-25T10:11:12.123456Z".parse().unwrap();
        let pos = (at, Uuid::new_v4());
        assert_eq!(
            b.open::<(DateTime<Utc>, Uuid)>(Some(&b.seal(&pos)))
                .unwrap(),
            Some(pos),
            "microseconds survive"
        );
    }

    #[test]
    fn altered_or_truncated_tokens_are_refused() {
        let k = key();
        let p = k.pager(List::Credentials, no_filters());
        let t = p.seal(&"cert/a".to_string());
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            let mut flipped = raw.clone();
            flipped[i] ^= 0x01;
            let forged = URL_SAFE_NO_PAD.encode(&flipped);
            assert!(is_bad_continue(p.open(Some(&forged))), "byte {i} flipped");
        }
        for n in [0, 1, t.len() / 2, t.len() - 1] {
            assert!(is_bad_continue(p.open(Some(&t[..n]))), "cut to {n}");
        }
        // A position of the client's choosing, with a tag it cannot compute.
        let mut made = vec![VERSION];
        made.extend_from_slice(b"\"cert/z\"");
        made.extend_from_slice(&[0u8; TAG_LEN]);
        assert!(is_bad_continue(
            p.open(Some(&URL_SAFE_NO_PAD.encode(&made)))
        ));
        for junk in [
            "not base64!",
            "%%%",
            &"A".repeat(MAX_TOKEN + 1),
            "\"cert/a\"",
        ] {
            assert!(is_bad_continue(p.open(Some(junk))), "{junk}");
        }
        // Another installation's key.
        let other = PagingKey::new(&[8u8; 32]);
        let foreign = other
            .pager(List::Credentials, no_filters())
            .seal(&"cert/a".to_string());
        assert!(is_bad_continue(p.open(Some(&foreign))));
    }

    #[test]
    fn tokens_are_bound_to_their_list_and_filters() {
        let k = key();
        let audit = |actor: Option<&str>| {
            k.pager(
                List::Audit,
                serde_json::json!({"actor": actor, "action": null, "target": null}),
            )
        };
        let t = audit(Some("CN=ops")).seal(&10i64);
        assert!(audit(Some("CN=ops")).open::<i64>(Some(&t)).is_ok());
        assert!(audit(Some("CN=other")).open::<i64>(Some(&t)).is_err());
        assert!(audit(None).open::<i64>(Some(&t)).is_err());

        let creds = k.pager(List::Credentials, no_filters());
        let tokens = k.pager(List::BootstrapTokens, no_filters());
        let t = creds.seal(&"abcdef".to_string());
        assert!(is_bad_continue(tokens.open(Some(&t))));
        let err = tokens.open::<String>(Some(&t)).unwrap_err().to_string();
        assert!(err.contains("/v1/bootstrap-tokens"), "{err}");
    }

    #[test]
    fn limits_default_and_refuse_what_is_out_of_range() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some("1")).unwrap(), 1);
        assert_eq!(limit(Some("1000")).unwrap(), MAX_LIMIT);
        for bad in [
            "0",
            "-1",
            "1001",
            "abc",
            "",
            "1.5",
            "99999999999999999999",
            "1e3",
        ] {
            match limit(Some(bad)) {
                Err(HttpError::BadRequest(m)) => assert!(m.starts_with("limit"), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn pages_cut_at_the_limit_and_end_without_a_token() {
        let k = key();
        let p = k.pager(List::Audit, no_filters());
        let (rows, next) = p.page(vec![1i64, 2, 3], 2, |r| *r);
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(p.open::<i64>(next.as_deref()).unwrap(), Some(2));
        let (rows, next) = p.page(vec![1i64, 2], 2, |r| *r);
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(next, None, "nothing left: the last page");
        let (rows, next) = p.page(Vec::<i64>::new(), 2, |r| *r);
        assert!(rows.is_empty() && next.is_none());
    }

    #[test]
    fn the_key_is_not_shown() {
        assert_eq!(format!("{:?}", key()), "PagingKey(..)");
    }
}
