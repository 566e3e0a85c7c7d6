//! Checks of what a caller sends, made before anything touches the database:
//! names in paths, query strings, reasons, idempotency keys; and the bounded,
//! sanitised copy of a refused value that the audit log keeps. Pure
//! functions (the `api_request` fuzz target drives them).
//!
//! ```text
//!  path segment ─► percent-decode (bytes) ─► UTF-8? 1..=253 bytes? no control character? ─► name
//!  query string ─► each name and value: `+` → space, percent-decode ─► UTF-8? no control
//!                  character? value ≤ 4 KiB? ─► then the typed parameters (serde)
//!  anything refused ─► shown(): lossy UTF-8, control characters escaped, cut (the audit copy)
//! ```

use sha2::{Digest, Sha256};

use crate::store::audit::{self, MAX_TARGET};

/// Longest name in a path (`{name}` of a credential; the OpenAPI document says so).
pub const MAX_NAME: usize = 253;

/// Longest query value after decoding (a `continue` token is at most 2 KiB).
pub const MAX_QUERY_VALUE: usize = 4096;

/// Longest accepted `reason`, in bytes.
pub const MAX_REASON: usize = 1024;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Percent-decodes `raw` to bytes; a `%` not followed by two hex digits stays
/// literal (as axum's path and query extractors read it). With `plus`, `+`
/// is a space (query strings, `application/x-www-form-urlencoded`).
pub fn decode(raw: &str, plus: bool) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if plus && b == b'+' { b' ' } else { b });
        i += 1;
    }
    out
}

/// A bounded, sanitised copy of what a caller sent (lossy UTF-8, control
/// characters escaped, at most [`MAX_TARGET`] bytes): safe in the audit log,
/// in logs and in problem documents.
pub fn shown(bytes: &[u8]) -> String {
    audit::bounded(&String::from_utf8_lossy(bytes), MAX_TARGET)
}

/// Checks a name taken from a path (decoded bytes): UTF-8, 1 to
/// [`MAX_NAME`] bytes, no control character. The error says which rule.
pub fn check_name(bytes: &[u8]) -> Result<&str, String> {
    let Ok(name) = std::str::from_utf8(bytes) else {
        return Err("is not UTF-8".into());
    };
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "is {} bytes long; names are at most {MAX_NAME}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    Ok(name)
}

/// One decoded text of a query string (a name or a value).
fn check_query_text(bytes: &[u8], max: usize) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8".to_string())?;
    if text.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if text.len() > max {
        return Err(format!("is longer than {max} bytes"));
    }
    Ok(())
}

/// Checks a raw query string: every parameter's name and value decodes to
/// UTF-8 without control characters, and no value is longer than
/// [`MAX_QUERY_VALUE`]. The error names the parameter (sanitised).
pub fn check_query(raw: &str) -> Result<(), String> {
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name, true);
        let shown_name = shown(&name);
        check_query_text(&name, 256)
            .map_err(|why| format!("query parameter name `{shown_name}` {why}"))?;
        check_query_text(&decode(value, true), MAX_QUERY_VALUE)
            .map_err(|why| format!("query parameter `{shown_name}` {why}"))?;
    }
    Ok(())
}

/// Checks a caller's `reason`: at most [`MAX_REASON`] bytes, no control character.
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_REASON {
        return Err(format!(
            "reason is {} bytes long; at most {MAX_REASON}",
            reason.len()
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err("reason contains a control character".into());
    }
    Ok(())
}

/// Checks an `Idempotency-Key` header value: 1 to [`MAX_IDEMPOTENCY_KEY`]
/// visible ASCII characters.
pub fn idempotency_key(value: &[u8]) -> Result<&str, String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY
        && value.iter().all(u8::is_ascii_graphic);
    match std::str::from_utf8(value) {
        Ok(k) if ok => Ok(k),
        _ => Err(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )),
    }
}

/// Hex SHA-256 of a request's canonical JSON (the parsed body, re-serialised:
/// spacing and key order do not change it; any value does). What an
/// idempotency key remembers of its request.
pub fn request_digest<T: serde::Serialize>(request: &T) -> String {
    let canonical = serde_json::to_value(request)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_default();
    hex::encode(Sha256::digest(canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_after_decoding() {
        let ok = decode("cert%2Fdefault%2Fweb-tls", false);
        assert_eq!(check_name(&ok), Ok("cert/default/web-tls"));
        assert_eq!(decode("a+b%2", false), b"a+b%2");
        assert_eq!(decode("a+b%41", true), b"a bA");
        assert!(
            check_name(&decode("%00", false))
                .unwrap_err()
                .contains("control")
        );
        assert!(
            check_name(&decode("%FF", false))
                .unwrap_err()
                .contains("UTF-8")
        );
        assert!(check_name(b"").unwrap_err().contains("empty"));
        assert!(check_name(&[b'x'; 254]).unwrap_err().contains("253"));
        assert!(check_name(&[b'x'; 253]).is_ok());
        assert_eq!(shown(&decode("a%00b%FF", false)), "a\\0b\u{fffd}");
        assert!(shown(&[b'y'; 100_000]).len() <= MAX_TARGET);
    }

    #[test]
    fn query_strings_are_checked_before_parsing() {
        assert!(check_query("").is_ok());
        assert!(check_query("actor=CN%3Dops&limit=5&&x").is_ok());
        let e = check_query("actor=%00").unwrap_err();
        assert!(e.contains("`actor`") && e.contains("control"), "{e}");
        let e = check_query("target=%FF%FE").unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
        assert!(check_query("%00=1").unwrap_err().contains("name"));
        assert!(check_query(&format!("continue={}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn reasons_keys_and_digests() {
        assert!(check_reason("key compromise drill").is_ok());
        assert!(check_reason(&"r".repeat(1025)).is_err());
        assert!(check_reason("a\0b").is_err());
        assert_eq!(idempotency_key(b"k-1"), Ok("k-1"));
        assert!(idempotency_key(b"").is_err());
        assert!(idempotency_key(b"a b").is_err());
        assert!(idempotency_key(&[b'k'; 256]).is_err());
        let a = request_digest(&serde_json::json!({"reason": "x"}));
        assert_eq!(a, request_digest(&serde_json::json!({ "reason" : "x" })));
        assert_ne!(a, request_digest(&serde_json::json!({"reason": "y"})));
    }
}
