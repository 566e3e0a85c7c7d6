//! The Secrets part of the restore drill (`rekey backup verify
//! --decrypt-secrets N`): read the Secrets of a restored snapshot and
//! decrypt N of them with the backup's escrowed keys only (no
//! EncryptionConfiguration), checking each is a Kubernetes Secret.
//!
//! ```text
//!  restored snapshot ──► `key` bucket, pass 1: the newest revision of every
//!                        /registry/secrets/ key (tombstones drop it)
//!                     ──► pass 2: the first N live Secrets (key order),
//!                        opened with Keyring::from_keys(escrowed keys)
//! ```
//!
//! Memory holds one entry per Secret key (not the values). KMS values are
//! counted as not verifiable here, never as failures.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
};

use serde::Serialize;

use super::{escrow::EscrowDoc, snapshot::SnapshotError};
use crate::etcd::{
    encryption::ProviderKind,
    report::Problem,
    values::{Keyring, Opened},
};

/// Where Secrets live in etcd.
pub const SECRETS_PREFIX: &[u8] = b"/registry/secrets/";
/// Failures listed (counts are exact).
const LISTED: usize = 10;

/// What the drill found (the `secrets` object of `backup verify --json`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SecretsDrill {
    /// Secrets in the snapshot.
    pub found: u64,
    /// Asked for (`--decrypt-secrets N`).
    pub requested: u64,
    /// Decrypted with an escrowed key into a valid Secret.
    pub decrypted: u64,
    /// Could not be decrypted into a Secret.
    pub failed: u64,
    /// Encrypted by a KMS plugin (only the plugin opens them).
    pub not_verifiable: u64,
    /// Stored in plaintext (read, not decrypted).
    pub plaintext: u64,
    /// Values opened per key.
    pub by_key: BTreeMap<String, u64>,
    /// Some failures, with the reason.
    pub failures: Vec<Problem>,
    /// Keys in the escrow.
    pub escrowed_keys: Vec<String>,
}

/// `mvccpb.KeyValue`: the key (1) and the value (5).
#[derive(Clone, PartialEq, prost::Message)]
struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    value: Vec<u8>,
}

/// A revision key of the `key` bucket: (main, sub, tombstone).
fn revision(k: &[u8]) -> Option<(u64, u64, bool)> {
    if k.len() < 17 || k[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub, k.len() > 17 && k[17] == b't'))
}

fn bad(m: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(m.into())
}

/// The escrowed keys as a keyring (and their labels).
pub fn keyring(doc: &EscrowDoc) -> (Keyring, Vec<String>) {
    let bytes = doc.key_bytes();
    let keys: Vec<(ProviderKind, &str, &[u8])> = bytes
        .iter()
        .filter_map(|(p, n, b)| {
            let kind = match p.as_str() {
                "aescbc" => ProviderKind::Aescbc,
                "aesgcm" => ProviderKind::Aesgcm,
                "secretbox" => ProviderKind::Secretbox,
                _ => return None,
            };
            Some((kind, n.as_str(), b.as_slice()))
        })
        .collect();
    let labels = keys.iter().map(|(k, n, _)| format!("{k}:{n}")).collect();
    (Keyring::from_keys(keys), labels)
}

/// Decrypts up to `n` Secrets of the snapshot at `path` with `doc`'s keys.
pub fn decrypt_secrets(
    path: &Path,
    doc: &EscrowDoc,
    n: u64,
) -> Result<SecretsDrill, SnapshotError> {
    // Pass 1: the newest revision of every Secret key.
    let mut newest: HashMap<Vec<u8>, (u64, u64, bool)> = HashMap::new();
    super::snapshot::for_each_revision(path, &mut |k, v| {
        let Some(rev) = revision(k) else {
            return Err(bad("a key of the `key` bucket is not a revision"));
        };
        let kv = <KeyValue as prost::Message>::decode(v)
            .map_err(|_| bad("a value of the `key` bucket is not an mvccpb.KeyValue"))?;
        if kv.key.starts_with(SECRETS_PREFIX) {
            let e = newest.entry(kv.key).or_insert(rev);
            if (rev.0, rev.1) >= (e.0, e.1) {
                *e = rev;
            }
        }
        Ok(())
    })?;
    let mut live: Vec<(Vec<u8>, (u64, u64))> = newest
        .into_iter()
        .filter(|(_, (_, _, dead))| !dead)
        .map(|(k, (m, s, _))| (k, (m, s)))
        .collect();
    live.sort();
    let (ring, labels) = keyring(doc);
    let mut out = SecretsDrill {
        found: live.len() as u64,
        requested: n,
        escrowed_keys: labels,
        ..Default::default()
    };
    let chosen: HashSet<(u64, u64)> = live
        .iter()
        .take(usize::try_from(n).unwrap_or(usize::MAX))
        .map(|(_, r)| *r)
        .collect();
    drop(live);
    // Pass 2: open the chosen ones.
    super::snapshot::for_each_revision(path, &mut |k, v| {
        let Some((main, sub, _)) = revision(k) else {
            return Ok(());
        };
        if !chosen.contains(&(main, sub)) {
            return Ok(());
        }
        let kv = <KeyValue as prost::Message>::decode(v)
            .map_err(|_| bad("a value of the `key` bucket is not an mvccpb.KeyValue"))?;
        let name = String::from_utf8_lossy(&kv.key).into_owned();
        let fail = |reason: String, out: &mut SecretsDrill| {
            out.failed += 1;
            if out.failures.len() < LISTED {
                out.failures.push(Problem {
                    key: name.clone(),
                    reason,
                });
            }
        };
        match ring.open_kind(&kv.key, &kv.value) {
            Opened::Object { kind, key } if kind == "Secret" => {
                if key == "identity" {
                    out.plaintext += 1;
                } else {
                    out.decrypted += 1;
                }
                *out.by_key.entry(key).or_default() += 1;
            }
            Opened::Object { kind, key } => {
                fail(
                    format!("opened with {key}, but it is a {kind}, not a Secret"),
                    &mut out,
                );
            }
            Opened::NotVerifiable(_) => out.not_verifiable += 1,
            Opened::Failed(reason) => fail(reason, &mut out),
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys() {
        let mut k = Vec::new();
        k.extend_from_slice(&7u64.to_be_bytes());
        k.push(b'_');
        k.extend_from_slice(&2u64.to_be_bytes());
        assert_eq!(revision(&k), Some((7, 2, false)));
        k.push(b't');
        assert_eq!(revision(&k), Some((7, 2, true)));
        assert_eq!(revision(b"short"), None);
    }
}
