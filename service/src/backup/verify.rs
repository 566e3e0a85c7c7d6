//! The restore drill (`rekey backup verify`): decrypt a backup to a
//! temporary file and check that it is a valid etcd snapshot; with
//! `--decrypt-secrets N`, decrypt N of its Secrets with the backup's
//! escrowed keys only ([`super::drill`]).
//!
//! ```text
//!  object ──► stream::decrypt (every chunk authenticated, SHA-256 of the ciphertext)
//!                 │  compared with the recorded hash, when there is a record
//!                 ▼
//!        temporary file (removed afterwards) ──► snapshot::status (trailer, bbolt)
//! ```
//!
//! A drill that ran reports its outcome in a [`VerifyReport`] (`ok`, or the
//! `error`); `Err` means it could not start (the object cannot be opened) or
//! the audit record could not be written.

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use super::{
    BackupError, BackupRecord, ListFilter, db,
    drill::{self, SecretsDrill},
    escrow,
    kek::Kek,
    location::{StoreSettings, Target},
    progress::Progress,
    snapshot, stream,
};
use crate::store::{
    Store,
    audit::{NewEvent, Outcome},
};

/// What to check.
#[derive(Debug)]
pub struct VerifyRequest {
    /// The backup object.
    pub from: Target,
    /// The key-encryption key.
    pub kek: Kek,
    /// Refuse the object unless it holds this backup id.
    pub expect_id: Option<Uuid>,
    /// The ciphertext SHA-256 recorded for it, if any: a different one fails.
    pub expect_sha256: Option<String>,
    /// Directory for the temporary plaintext.
    pub temp_dir: PathBuf,
    /// Where progress goes (its length is set when the object's size is known).
    pub progress: Progress,
    /// Also decrypt this many of the snapshot's Secrets (all if fewer) with
    /// the backup's escrowed keys only.
    pub decrypt_secrets: Option<u64>,
    /// How to reach S3 (for the key escrow next to the backup).
    pub settings: StoreSettings,
}

/// The outcome of a drill (the `--json` document of `rekey backup verify`).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// True when the backup decrypted and holds a valid snapshot.
    pub ok: bool,
    /// Where the backup is.
    pub location: String,
    /// Its id (once the header was read).
    pub backup_id: Option<Uuid>,
    /// The KEK that wraps its data key.
    pub kek_id: Option<String>,
    /// Ciphertext bytes.
    pub size_bytes: Option<u64>,
    /// Hex SHA-256 of the ciphertext.
    pub sha256: Option<String>,
    /// Plaintext (snapshot) bytes.
    pub plaintext_bytes: Option<u64>,
    /// What the snapshot holds.
    pub snapshot: Option<snapshot::SnapshotStatus>,
    /// With `--decrypt-secrets`: Secrets decrypted into valid Secrets with
    /// the escrowed keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_decrypted: Option<u64>,
    /// With `--decrypt-secrets`: Secrets that could not be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_failed: Option<u64>,
    /// With `--decrypt-secrets`: the details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsDrill>,
    /// Why the drill failed.
    pub error: Option<String>,
}

/// The newest completed backup recorded, if any.
pub async fn latest(store: &Store) -> Result<Option<BackupRecord>, BackupError> {
    Ok(db::list(
        store,
        ListFilter {
            completed_only: true,
            limit: 1,
            ..Default::default()
        },
    )
    .await?
    .into_iter()
    .next())
}

/// Runs the drill on `req.from`. With `audit`, the outcome is recorded as
/// a `backup.verify` event by that actor.
pub async fn verify(
    req: &VerifyRequest,
    audit: Option<(&Store, &str)>,
) -> Result<VerifyReport, BackupError> {
    let (source, size) = req.from.open().await?;
    if let Some(n) = size {
        req.progress.set_length(n);
    }
    let mut report = VerifyReport {
        ok: false,
        location: req.from.display(),
        backup_id: None,
        kek_id: None,
        size_bytes: None,
        sha256: None,
        plaintext_bytes: None,
        snapshot: None,
        secrets_decrypted: None,
        secrets_failed: None,
        secrets: None,
        error: None,
    };
    let temp_dir = &req.temp_dir;
    let checked = async {
        let temp = tempfile::Builder::new()
            .prefix("rekey-verify-")
            .tempfile_in(temp_dir)
            .map_err(|e| {
                BackupError::Io(format!("temporary file in {}: {e}", temp_dir.display()))
            })?;
        let mut file = tokio::fs::File::from_std(
            temp.reopen()
                .map_err(|e| BackupError::Io(format!("temporary file: {e}")))?,
        );
        let opts = stream::DecryptOptions {
            expect_id: req.expect_id,
            hash: true,
        };
        let dec = stream::decrypt(source, &mut file, &req.kek, &opts, &req.progress).await?;
        report.backup_id = Some(dec.backup_id);
        report.kek_id = Some(dec.kek_id.to_string());
        report.size_bytes = Some(dec.ciphertext_bytes);
        report.sha256 = dec.sha256.clone();
        report.plaintext_bytes = Some(dec.plaintext_bytes);
        if let (Some(want), Some(got)) = (&req.expect_sha256, &dec.sha256)
            && want != got
        {
            return Err(BackupError::Io(format!(
                "the object's SHA-256 is {got}, but {want} was recorded"
            )));
        }
        drop(file);
        let path = temp.path().to_path_buf();
        let st = tokio::task::spawn_blocking(move || snapshot::status(&path))
            .await
            .map_err(|e| BackupError::Io(e.to_string()))??;
        if let Some(n) = req.decrypt_secrets {
            // The escrow must be there, authenticate and be this backup's.
            let doc =
                escrow::read(&report.location, dec.backup_id, &req.kek, &req.settings).await?;
            let path = temp.path().to_path_buf();
            let drill = tokio::task::spawn_blocking(move || drill::decrypt_secrets(&path, &doc, n))
                .await
                .map_err(|e| BackupError::Io(e.to_string()))??;
            report.secrets_decrypted = Some(drill.decrypted);
            report.secrets_failed = Some(drill.failed);
            let failed = drill.failed;
            let reasons: Vec<String> = drill
                .failures
                .iter()
                .map(|p| format!("{}: {}", p.key, p.reason))
                .collect();
            report.secrets = Some(drill);
            if failed > 0 {
                return Err(BackupError::Io(format!(
                    "{failed} Secret(s) could not be decrypted with the escrowed keys: {}",
                    reasons.join("; ")
                )));
            }
        }
        drop(temp);
        Ok::<_, BackupError>(st)
    }
    .await;
    let outcome = match checked {
        Ok(st) => {
            report.ok = true;
            report.snapshot = Some(st);
            Outcome::Success
        }
        Err(e) => {
            report.error = Some(e.to_string());
            Outcome::Failure
        }
    };
    if let Some((store, actor)) = audit {
        let mut event = NewEvent::new(actor, "backup.verify", &report.location, outcome);
        event.details = serde_json::json!({ "backup_id": report.backup_id, "error": report.error });
        store.audit(event).await?;
    }
    Ok(report)
}
