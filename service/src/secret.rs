//! Types for secret material: private keys, tokens, data keys, KEKs.
//!
//! They never print their contents (Debug and Display redact) and zeroize
//! their memory on drop. Getting at the bytes takes an explicit
//! `expose_secret()`, which is easy to grep for.

pub use secrecy::{ExposeSecret, SecretBox, SecretSlice, SecretString};

/// Secret bytes (a private key in PEM or DER, a token, a data key).
pub type SecretBytes = SecretSlice<u8>;

/// Builds [`SecretBytes`] from a vector, taking ownership so no copy is left.
pub fn secret_bytes(bytes: Vec<u8>) -> SecretBytes {
    SecretSlice::from(bytes)
}

/// Serializes an optional secret as `"[redacted]"` (or `null`), for
/// configuration sections that are printed or sent as JSON.
pub fn serialize_redacted<S: serde::Serializer>(
    value: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let s = secret_bytes(b"-----BEGIN PRIVATE KEY-----".to_vec());
        let shown = format!("{s:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        let t = SecretString::from("eyJhbGciOi.token");
        assert!(!format!("{t:?}").contains("eyJ"));
    }
}
