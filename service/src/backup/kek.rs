//! Key-encryption keys: loading (raw or base64), and their public ids.
//!
//! A KEK is 32 random bytes. It wraps each backup's data key and never
//! touches a backup's body. Its id — the first 8 bytes of a domain-separated
//! SHA-256 of the key, printed as 16 hex digits — names it in backup headers,
//! in the `backups` table and in messages, so the key itself is never shown.

use std::{fmt, path::Path, str::FromStr};

use base64::Engine;
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Bytes in a KEK (AES-256).
pub const KEK_LEN: usize = 32;

/// Bytes of a [`KekId`].
pub const KEK_ID_LEN: usize = 8;

/// Domain separation for the id hash, so the id is useless for anything else.
const ID_CONTEXT: &[u8] = b"rekey backup KEK id v1\0";

/// Why a KEK could not be loaded. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The file could not be read.
    #[error("KEK file {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The content is neither 32 raw bytes nor base64 of 32 bytes.
    #[error(
        "KEK file {path}: expected 32 random bytes, raw or base64-encoded; found {found} \
         (create one with `head -c 32 /dev/urandom > FILE` or `openssl rand -base64 32 > FILE`)"
    )]
    Malformed {
        /// The file.
        path: String,
        /// What was found instead (a length, never content).
        found: String,
    },
}

/// The public name of a KEK: 8 bytes of a hash of it, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekId(pub [u8; KEK_ID_LEN]);

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({self})")
    }
}

impl FromStr for KekId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; KEK_ID_LEN];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|_| format!("`{s}` is not a KEK id (16 hex digits)"))?;
        Ok(Self(out))
    }
}

/// A key-encryption key. Debug redacts it; its memory is zeroized on drop.
pub struct Kek {
    key: SecretBox<[u8; KEK_LEN]>,
    id: KekId,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Kek {
    /// Reads a KEK file: exactly 32 bytes are taken raw; anything else must be
    /// base64 (standard or URL-safe, padding optional, surrounding whitespace
    /// ignored) of 32 bytes.
    pub fn load(path: &Path) -> Result<Self, KekError> {
        let shown = path.display().to_string();
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KekError::Read {
            path: shown.clone(),
            source,
        })?);
        warn_if_readable_by_others(path);
        Self::parse(&bytes).map_err(|found| KekError::Malformed { path: shown, found })
    }

    /// Parses KEK file content; the error says what was found (never the content).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() == KEK_LEN {
            let mut key = [0u8; KEK_LEN];
            key.copy_from_slice(bytes);
            return Ok(Self::from_array(key));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| format!("{} bytes that are not base64 text", bytes.len()))?
            .trim();
        if text.is_empty() {
            return Err("an empty file".into());
        }
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        for engine in engines {
            if let Ok(decoded) = engine.decode(text).map(Zeroizing::new) {
                if decoded.len() == KEK_LEN {
                    let mut key = [0u8; KEK_LEN];
                    key.copy_from_slice(&decoded);
                    return Ok(Self::from_array(key));
                }
                return Err(format!(
                    "base64 of {} bytes ({} characters)",
                    decoded.len(),
                    text.len()
                ));
            }
        }
        Err(format!(
            "{} bytes that are neither a raw key nor base64",
            bytes.len()
        ))
    }

    /// A fresh random KEK (tests, `ca init`-style tooling).
    pub fn generate() -> Self {
        let mut key = [0u8; KEK_LEN];
        rand::fill(&mut key);
        Self::from_array(key)
    }

    fn from_array(mut key: [u8; KEK_LEN]) -> Self {
        let id = kek_id(&key);
        let boxed = SecretBox::new(Box::new(key));
        zeroize::Zeroize::zeroize(&mut key);
        Self { key: boxed, id }
    }

    /// The key's public id.
    pub fn id(&self) -> KekId {
        self.id
    }

    /// The key bytes (for wrapping and unwrapping only).
    pub(crate) fn expose(&self) -> &[u8; KEK_LEN] {
        self.key.expose_secret()
    }
}

/// The id of a key: SHA-256 over a context string and the key, first 8 bytes.
fn kek_id(key: &[u8; KEK_LEN]) -> KekId {
    let digest = Sha256::new()
        .chain_update(ID_CONTEXT)
        .chain_update(key)
        .finalize();
    let mut id = [0u8; KEK_ID_LEN];
    id.copy_from_slice(&digest[..KEK_ID_LEN]);
    KekId(id)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o007 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "the KEK file is accessible to every user; restrict it (chmod 600, or 440 for a group)"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_base64_give_the_same_key() {
        let raw: Vec<u8> = (0u8..32).collect();
        let a = Kek::parse(&raw).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        let b = Kek::parse(format!("{b64}\n").as_bytes()).unwrap();
        let c = Kek::parse(b64.trim_end_matches('=').as_bytes()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id(), c.id());
        assert_eq!(a.expose(), b.expose());
    }

    #[test]
    fn wrong_lengths_are_named_without_content() {
        let e = Kek::parse(b"short").unwrap_err();
        assert!(e.contains("bytes"), "{e}");
        assert!(!e.contains("short"), "{e}");
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let e = Kek::parse(b64.as_bytes()).unwrap_err();
        assert!(e.contains("base64 of 16 bytes"), "{e}");
        assert!(Kek::parse(b"").is_err());
        assert!(Kek::parse(&[0xffu8; 40]).is_err());
    }

    #[test]
    fn id_is_not_the_key_and_debug_redacts() {
        let raw = [0x41u8; 32];
        let k = Kek::parse(&raw).unwrap();
        let id = k.id().to_string();
        assert_eq!(id.len(), 16);
        assert!(!id.contains("4141"), "{id}");
        let shown = format!("{k:?}");
        assert!(shown.contains(&id) && !shown.contains("65, 65"), "{shown}");
        assert_eq!(id.parse::<KekId>().unwrap(), k.id());
        assert_ne!(Kek::generate().id(), Kek::generate().id());
    }
}
