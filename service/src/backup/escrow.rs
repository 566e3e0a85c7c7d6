//! A backup's key escrow: the encryption-at-rest keys its snapshot's values
//! are stored under, sealed under the backup KEK next to the backup
//! (`<backup>.keys`), so a restore can read Secrets without the control
//! plane's EncryptionConfiguration.
//!
//! The object is the backup format (`docs/backup-format.md`) with the magic
//! `REKEYESC`: the same 107-byte header (the backup's id, a fresh data key
//! wrapped under the KEK with the header as associated data) and exactly
//! one final STREAM chunk holding a JSON document:
//!
//! ```json
//! { "format": "rekey-key-escrow/v1", "backup_id": "…", "created_at": "…",
//!   "etcd_revision": 42, "encryption_config_sha256": "…",
//!   "keys": [ { "provider": "aescbc", "name": "old", "fingerprint": "…", "secret": "<base64>" } ] }
//! ```
//!
//! The magic is authenticated (it is in every chunk's associated data and
//! in the key wrap's), so an escrow cannot pass for a backup or the reverse;
//! the backup id is checked against the backup's, so one backup's escrow
//! cannot stand in for another's; `rewrap` re-wraps it like a backup. The
//! key material only ever exists in [`EscrowedKey`] (wiped on drop) and in
//! zeroized buffers.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{
    format::{
        After, CHUNK_OVERHEAD, ChunkCipher, FormatError, HEADER_LEN, Header, LEN_FIELD, MAX_CHUNK,
        MIN_CHUNK, ObjectKind, PREAMBLE_LEN, parse_preamble_of,
    },
    kek::Kek,
    location::{LocationError, StoreSettings, Target},
};
use crate::secret::{ExposeSecret, SecretString};

/// Appended to a backup's location to name its escrow.
pub const ESCROW_SUFFIX: &str = ".keys";
/// The document's `format`.
pub const FORMAT: &str = "rekey-key-escrow/v1";
/// The largest escrow read (a few keys take a few hundred bytes).
const MAX_ESCROW: u64 = 1 << 20;

/// Where a backup's escrow is.
pub fn location_of(backup_location: &str) -> String {
    format!("{backup_location}{ESCROW_SUFFIX}")
}

/// Why an escrow could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum EscrowError {
    /// There is no escrow object.
    #[error(
        "key escrow {0} is missing: the backup's keys cannot be read (was it taken without [etcd] encryption_config, or deleted?)"
    )]
    Missing(String),
    /// The object did not authenticate, is the wrong kind, or belongs to another backup.
    #[error("key escrow {location}: {source}")]
    Format {
        /// Where.
        location: String,
        /// What.
        source: FormatError,
    },
    /// It authenticated but its document is not one rekey writes.
    #[error("key escrow {location}: {message}")]
    Invalid {
        /// Where.
        location: String,
        /// What.
        message: String,
    },
    /// Reading or writing the object failed.
    #[error(transparent)]
    Location(#[from] LocationError),
    /// Writing failed.
    #[error("key escrow {location}: {source}")]
    Io {
        /// Where.
        location: String,
        /// Why.
        source: std::io::Error,
    },
}

/// One escrowed key (its material never printed, wiped on drop).
#[derive(Serialize, Deserialize)]
pub struct EscrowedKey {
    /// `aescbc`, `aesgcm` or `secretbox`.
    pub provider: String,
    /// The key's name (in the stored prefix).
    pub name: String,
    /// First 16 hex digits of SHA-256 of the key.
    pub fingerprint: String,
    /// The key, base64.
    #[serde(serialize_with = "expose")]
    pub secret: SecretString,
}

fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose_secret())
}

impl std::fmt::Debug for EscrowedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EscrowedKey")
            .field("provider", &self.provider)
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The sealed document.
#[derive(Debug, Serialize, Deserialize)]
pub struct EscrowDoc {
    /// [`FORMAT`].
    pub format: String,
    /// The backup it belongs to.
    pub backup_id: Uuid,
    /// When it was written.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The revision the keys were counted at.
    pub etcd_revision: i64,
    /// The EncryptionConfiguration the keys came from (its SHA-256).
    pub encryption_config_sha256: Option<String>,
    /// The keys.
    pub keys: Vec<EscrowedKey>,
}

impl EscrowDoc {
    /// The keys as `(provider, name, bytes)`; keys that do not decode are
    /// skipped (the bytes are wiped on drop).
    pub fn key_bytes(&self) -> Vec<(String, String, Zeroizing<Vec<u8>>)> {
        use base64::Engine;
        self.keys
            .iter()
            .filter_map(|k| {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(k.secret.expose_secret())
                    .ok()?;
                Some((k.provider.clone(), k.name.clone(), Zeroizing::new(b)))
            })
            .collect()
    }
}

/// Seals `doc` under `kek` as an escrow object of `doc.backup_id`.
pub fn seal(doc: &EscrowDoc, kek: &Kek) -> Result<Vec<u8>, String> {
    let json = Zeroizing::new(serde_json::to_vec(doc).map_err(|e| e.to_string())?);
    let len = u32::try_from(json.len())
        .ok()
        .filter(|l| *l <= MAX_CHUNK)
        .ok_or("the key escrow is too large")?;
    let chunk = len.next_power_of_two().clamp(MIN_CHUNK, MAX_CHUNK);
    let (header, key) = Header::new_of(ObjectKind::KeyEscrow, kek, chunk, doc.backup_id);
    let cipher = ChunkCipher::new(&header, &key);
    let mut record = Zeroizing::new(vec![0u8; json.len() + CHUNK_OVERHEAD]);
    record[LEN_FIELD..LEN_FIELD + json.len()].copy_from_slice(&json);
    cipher.seal(0, true, &mut record);
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&record);
    Ok(out)
}

/// Opens an escrow object: it must be an escrow, authenticate under `kek`
/// and belong to backup `expect`.
pub fn open(bytes: &[u8], kek: &Kek, expect: Uuid) -> Result<EscrowDoc, FormatError> {
    if bytes.len() < PREAMBLE_LEN {
        return Err(FormatError::Truncated(format!(
            "the object ends inside the header ({} of {HEADER_LEN} bytes)",
            bytes.len()
        )));
    }
    let pre: [u8; PREAMBLE_LEN] = bytes[..PREAMBLE_LEN].try_into().expect("preamble");
    if parse_preamble_of(&pre)?.1 != ObjectKind::KeyEscrow {
        return Err(FormatError::WrongKind {
            expected: "key escrow",
            found: "backup",
        });
    }
    let head: [u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| {
            FormatError::Truncated(format!(
                "the object ends inside the header ({} of {HEADER_LEN} bytes)",
                bytes.len()
            ))
        })?;
    let header = Header::parse(&head)?;
    let key = header.unwrap(kek)?;
    header.check_chunk_size()?;
    if header.backup_id != expect {
        return Err(FormatError::UnexpectedId {
            expected: expect,
            found: header.backup_id,
        });
    }
    let record = &bytes[HEADER_LEN..];
    if record.len() < CHUNK_OVERHEAD {
        return Err(FormatError::Truncated("the key document is missing".into()));
    }
    let declared = u32::from_be_bytes(record[..LEN_FIELD].try_into().expect("4 bytes")) as usize;
    let want = declared + CHUNK_OVERHEAD;
    let cipher = ChunkCipher::new(&header, &key);
    if declared > header.chunk_size as usize {
        return Err(FormatError::Tampered(format!(
            "the key document claims {declared} bytes, more than the chunk size"
        )));
    }
    if record.len() < want {
        return Err(cipher.classify_short_record(0, declared as u32, record));
    }
    let after = match record.len() - want {
        0 => After::End,
        n if n < LEN_FIELD => After::Stray(n),
        _ => After::More,
    };
    let mut plain = Zeroizing::new(vec![0u8; declared]);
    cipher.open(0, &record[..want], after, &mut plain)?;
    let doc: EscrowDoc = serde_json::from_slice(&plain)
        .map_err(|e| FormatError::Tampered(format!("the key document is not valid: {e}")))?;
    if doc.format != FORMAT || doc.backup_id != expect {
        return Err(FormatError::Tampered(format!(
            "the key document is `{}` for backup {}",
            doc.format, doc.backup_id
        )));
    }
    Ok(doc)
}

/// Writes a sealed escrow next to the backup at `backup_location`; returns
/// where it went.
pub async fn write(
    backup_location: &str,
    sealed: &[u8],
    settings: &StoreSettings,
) -> Result<String, EscrowError> {
    let location = location_of(backup_location);
    let target = Target::parse(&location, settings)?;
    let mut w = target.create().await?;
    let written = async {
        w.sink().write_all(sealed).await?;
        w.sink().flush().await
    }
    .await;
    match written {
        Ok(()) => {
            w.commit().await?;
            Ok(location)
        }
        Err(source) => {
            w.abort().await;
            Err(EscrowError::Io { location, source })
        }
    }
}

/// Reads and opens the escrow of backup `backup_id` at `backup_location`.
pub async fn read(
    backup_location: &str,
    backup_id: Uuid,
    kek: &Kek,
    settings: &StoreSettings,
) -> Result<EscrowDoc, EscrowError> {
    let location = location_of(backup_location);
    let target = Target::parse(&location, settings)?;
    let (source, _) = match target.open().await {
        Ok(s) => s,
        Err(LocationError::NotFound(_)) => return Err(EscrowError::Missing(location)),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    source
        .take(MAX_ESCROW + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| EscrowError::Io {
            location: location.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_ESCROW {
        return Err(EscrowError::Invalid {
            location,
            message: format!("larger than {MAX_ESCROW} bytes: not a key escrow"),
        });
    }
    open(&bytes, kek, backup_id).map_err(|source| EscrowError::Format { location, source })
}

/// Deletes the escrow of the backup at `backup_location` (a missing one is fine).
pub async fn delete(backup_location: &str, settings: &StoreSettings) -> Result<(), LocationError> {
    Target::parse(&location_of(backup_location), settings)?
        .delete()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: Uuid) -> EscrowDoc {
        EscrowDoc {
            format: FORMAT.into(),
            backup_id: id,
            created_at: chrono::Utc::now(),
            etcd_revision: 7,
            encryption_config_sha256: None,
            keys: vec![EscrowedKey {
                provider: "aescbc".into(),
                name: "old".into(),
                fingerprint: "00".into(),
                secret: SecretString::from("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="),
            }],
        }
    }

    #[test]
    fn seals_opens_and_detects_every_change() {
        let kek = Kek::parse(&[7u8; 32]).unwrap();
        let other = Kek::parse(&[8u8; 32]).unwrap();
        let id = Uuid::new_v4();
        let sealed = seal(&doc(id), &kek).unwrap();
        assert!(
            !sealed.windows(8).any(|w| w == b"AQEBAQEB"),
            "the key is encrypted"
        );
        let opened = open(&sealed, &kek, id).unwrap();
        assert_eq!(opened.key_bytes()[0].2.as_slice(), &[1u8; 32]);
        assert!(!format!("{opened:?}").contains("AQEB"), "Debug redacts");
        assert!(matches!(
            open(&sealed, &other, id),
            Err(FormatError::WrongKey { .. })
        ));
        assert!(matches!(
            open(&sealed, &kek, Uuid::new_v4()),
            Err(FormatError::UnexpectedId { .. })
        ));
        for at in [20, 60, HEADER_LEN + 2, HEADER_LEN + 10, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(open(&bad, &kek, id).is_err(), "flip at {at}");
        }
        assert!(matches!(
            open(&sealed[..sealed.len() - 3], &kek, id),
            Err(FormatError::Truncated(_) | FormatError::Tampered(_))
        ));
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0u8; 30]);
        assert!(matches!(
            open(&longer, &kek, id),
            Err(FormatError::Tampered(_))
        ));
        // A backup object cannot pass for an escrow: the magic is authenticated.
        let mut as_backup = sealed.clone();
        as_backup[..8].copy_from_slice(b"REKEYBAK");
        assert!(open(&as_backup, &kek, id).is_err());
    }
}
