//! The encryption-at-rest keys a backup needs: counted in etcd just before
//! the snapshot, recorded with the backup (`backups.encryption_keys`), and
//! their material sealed into the backup's key escrow ([`super::escrow`]).
//!
//! ```text
//!  [etcd] encryption_config ──parse──► census (every covered prefix, one revision,
//!                                      │ classification only)
//!                                      ▼
//!            KeyUse per provider key (values, writing) ──► escrow: the material of
//!                                                          every keyed one, by fingerprint
//! ```
//!
//! Every rule's write key is escrowed too: values written between the count
//! and the snapshot are under it.

use uuid::Uuid;

use super::{
    BackupError,
    escrow::{EscrowDoc, EscrowedKey, FORMAT},
};
use crate::{
    etcd::{
        census::{self, KeyUse},
        encryption::{self, ProviderKind},
        settings::EtcdConfig,
    },
    secret::{ExposeSecret, SecretString},
};

fn keys_error(message: String, bad_input: bool) -> BackupError {
    BackupError::Keys { message, bad_input }
}

/// Counts the keys the stored values need and builds the escrow of backup
/// `backup_id`. `None` when `[etcd] encryption_config` is not set.
pub async fn count_and_escrow(
    etcd: &EtcdConfig,
    backup_id: Uuid,
) -> Result<Option<(Vec<KeyUse>, EscrowDoc)>, BackupError> {
    let Some(path) = &etcd.encryption_config else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| {
            keys_error(
                format!("etcd.encryption_config {}: {e}", path.display()),
                true,
            )
        })?;
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    };
    let config = encryption::parse(&text).map_err(|e| {
        keys_error(
            format!("etcd.encryption_config {}: {e}", path.display()),
            true,
        )
    })?;
    let client = crate::etcd::client::connect(etcd)
        .await
        .map_err(|e| keys_error(e.to_string(), false))?;
    let counted = census::count(&client, &config, &census::prefixes(&config), None)
        .await
        .map_err(|e| keys_error(e.to_string(), false))?;
    let mut uses = census::uses(&config, &counted.by_key);
    let mut keys: Vec<EscrowedKey> = Vec::new();
    for u in &mut uses {
        let Some((provider, name)) = u.key.split_once(':') else {
            continue;
        };
        for p in config.rules.iter().flat_map(|r| r.providers.iter()) {
            if p.kind.as_str() != provider || p.kind == ProviderKind::Kms {
                continue;
            }
            for k in p.keys.iter().filter(|k| k.name == name) {
                let fingerprint = k.fingerprint();
                if keys
                    .iter()
                    .any(|e| e.fingerprint == fingerprint && e.provider == provider)
                {
                    continue;
                }
                use base64::Engine;
                keys.push(EscrowedKey {
                    provider: provider.into(),
                    name: name.into(),
                    fingerprint,
                    secret: SecretString::from(
                        base64::engine::general_purpose::STANDARD.encode(k.secret.expose_secret()),
                    ),
                });
                u.escrowed = true;
            }
        }
    }
    let doc = EscrowDoc {
        format: FORMAT.into(),
        backup_id,
        created_at: chrono::Utc::now(),
        etcd_revision: counted.revision,
        encryption_config_sha256: Some(sha),
        keys,
    };
    Ok(Some((uses, doc)))
}
