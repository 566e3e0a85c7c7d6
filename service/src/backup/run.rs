//! One backup, start to finish: the encryption-at-rest keys it needs
//! (recorded and escrowed, see [`super::keys`]) → etcd snapshot → encrypt →
//! upload → record, with its audit event and metrics. The scheduled job
//! ([`super::job`]), `rekey backup run` and `POST /v1/backups` all call
//! [`run_backup`]; [`list_backups`] is what `GET /v1/backups` lists.

use std::time::Instant;

use super::progress::Progress as ProgressBar;
use chrono::Utc;
use uuid::Uuid;

use super::{
    db::{self, BackupRecord, ListFilter},
    error::BackupError,
    escrow, kek, keys, location,
    metrics::{METRIC_DURATION, METRIC_FAILURES, record_success_metrics},
    settings::BackupConfig,
    snapshot, stream,
};
use crate::{
    etcd::EtcdConfig,
    store::{
        Store,
        audit::{NewEvent, Outcome},
    },
};

/// File-name suffix of backup objects written by `backup run`.
pub const OBJECT_SUFFIX: &str = ".rkb";

/// How one `run_backup` is done.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Recorded as `requested_by` and as the audit actor.
    pub requested_by: String,
    /// Progress display (use `ProgressBar::hidden()` in the service).
    pub progress: ProgressBar,
}

impl RunOptions {
    /// Options for an unattended run by `actor`.
    pub fn quiet(actor: impl Into<String>) -> Self {
        Self {
            requested_by: actor.into(),
            progress: ProgressBar::hidden(),
        }
    }
}

/// The object name of a backup: sortable by time, unique by id.
pub fn object_name(at: chrono::DateTime<Utc>, id: Uuid) -> String {
    format!("etcd-{}-{id}{OBJECT_SUFFIX}", at.format("%Y%m%dT%H%M%SZ"))
}

/// Runs one backup: etcd snapshot → encrypt → upload → record. Returns the
/// completed record; on failure the row is marked `failed` (with the reason),
/// the upload aborted, and the error returned.
pub async fn run_backup(
    store: &Store,
    backup: &BackupConfig,
    etcd: &EtcdConfig,
    opts: &RunOptions,
) -> Result<BackupRecord, BackupError> {
    let started = Instant::now();
    let kek = kek::Kek::load(&backup.kek_file)?;
    let destination = location::Destination::parse(&backup.destination, &backup.s3())?;
    let id = Uuid::new_v4();
    let target = destination.object(&object_name(Utc::now(), id));
    let row = db::insert_running(
        store,
        &db::NewBackup {
            id,
            location: target.display(),
            requested_by: opts.requested_by.clone(),
            kek_id: kek.id().to_string(),
            chunk_size: backup.chunk_size_u32() as i32,
        },
    )
    .await?;
    let s3 = backup.s3();
    let mut escrowed: Option<String> = None;
    let result = async {
        destination.prepare().await?;
        // The keys the snapshot's values need: recorded before the snapshot
        // (a running backup already counts as needing them) and escrowed
        // next to it, under the KEK, bound to this backup's id.
        if let Some((uses, doc)) = keys::count_and_escrow(etcd, id).await? {
            db::set_encryption_keys(store, id, &uses).await?;
            let sealed =
                zeroize::Zeroizing::new(escrow::seal(&doc, &kek).map_err(BackupError::Io)?);
            escrowed = Some(escrow::write(&target.display(), &sealed, &s3).await?);
        }
        let snap = snapshot::open_etcd(etcd).await?;
        if let Some(n) = snap.size_hint {
            opts.progress.set_length(n);
        }
        let enc = upload(snap.reader, &target, &kek, backup, id, &opts.progress).await?;
        Ok::<_, BackupError>((enc, snap.revision))
    }
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    if result.is_ok() {
        crate::crash::point("backup-before-record");
    }
    match result {
        Ok((enc, revision)) => {
            let record = db::mark_completed(
                store,
                id,
                &db::Finished {
                    size_bytes: enc.ciphertext_bytes as i64,
                    sha256: enc.sha256.clone().unwrap_or_default(),
                    plaintext_bytes: enc.plaintext_bytes as i64,
                    etcd_revision: revision,
                },
            )
            .await?;
            record_success_metrics(&record, elapsed);
            let mut event = NewEvent::new(
                &opts.requested_by,
                "backup.run",
                &record.location,
                Outcome::Success,
            );
            event.details = serde_json::json!({
                "backup_id": id, "size_bytes": record.size_bytes, "sha256": record.sha256,
                "kek_id": record.kek_id, "etcd_revision": record.etcd_revision,
                "key_escrow": escrowed,
            });
            store.audit(event).await?;
            tracing::info!(backup = %id, location = %record.location, bytes = enc.ciphertext_bytes, "backup completed");
            Ok(record)
        }
        Err(e) => {
            if escrowed.is_some()
                && let Err(del) = escrow::delete(&target.display(), &s3).await
            {
                tracing::warn!(backup = %id, error = %del, "deleting the failed backup's key escrow failed");
            }
            let text = e.to_string();
            metrics::counter!(METRIC_FAILURES).increment(1);
            metrics::histogram!(METRIC_DURATION, "outcome" => "failure").record(elapsed);
            if let Err(db) = db::mark_failed(store, row.id, &text).await {
                tracing::warn!(backup = %id, error = %db, "recording the failure failed");
            }
            let mut event = NewEvent::new(
                &opts.requested_by,
                "backup.run",
                &row.location,
                Outcome::Failure,
            );
            event.details = serde_json::json!({ "backup_id": id, "error": text });
            if let Err(db) = store.audit(event).await {
                tracing::warn!(backup = %id, error = %db, "auditing the failure failed");
            }
            Err(e)
        }
    }
}

/// Encrypts `source` into a new object at `target`; completes the upload only
/// if everything (including the source's own integrity check) succeeded.
async fn upload(
    source: stream::Source,
    target: &location::Target,
    kek: &kek::Kek,
    backup: &BackupConfig,
    id: Uuid,
    progress: &ProgressBar,
) -> Result<stream::Encrypted, BackupError> {
    let mut writer = target.create().await?;
    let opts = stream::EncryptOptions {
        chunk_size: backup.chunk_size_u32(),
        backup_id: id,
        hash: true,
    };
    match stream::encrypt(source, writer.sink(), kek, &opts, progress).await {
        Ok(enc) => {
            writer.commit().await?;
            Ok(enc)
        }
        Err(e) => {
            writer.abort().await;
            Err(e.into())
        }
    }
}

/// Backups from the store, newest first (`GET /v1/backups`).
pub async fn list_backups(
    store: &Store,
    filter: ListFilter,
) -> Result<Vec<BackupRecord>, BackupError> {
    Ok(db::list(store, filter).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_sort_by_time() {
        let id = Uuid::nil();
        let a = object_name("2026-01-02T03:04:05Z".parse().unwrap(), id);
        assert_eq!(
            a,
            "etcd-20260102T030405Z-00000000-0000-0000-0000-000000000000.rkb"
        );
    }
}
