//! One backup, start to finish: the encryption-at-rest keys it needs
//! (recorded and escrowed, see [`super::keys`]) → etcd snapshot → encrypt →
//! upload → record, with its audit event and metrics. The scheduled job
//! ([`super::job`]), `rekey backup run` and `POST /v1/backups` all call
//! [`run_backup`]; [`list_backups`] is what `GET /v1/backups` lists.

use std::{sync::Arc, time::Instant};

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
        audit::{NewEvent, Outcome, Ticket},
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
    /// The caller's audit event (an API request): the backup's own event is
    /// written through it, in the transaction that records the outcome.
    pub audit: Option<Arc<Ticket>>,
}

impl RunOptions {
    /// Options for an unattended run by `actor`.
    pub fn quiet(actor: impl Into<String>) -> Self {
        Self {
            requested_by: actor.into(),
            progress: ProgressBar::hidden(),
            audit: None,
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
    let destination = location::Destination::parse(&backup.destination, &backup.store_settings())?;
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
    let settings = backup.store_settings();
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
            escrowed = Some(escrow::write(&target.display(), &sealed, &settings).await?);
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
            let finished = db::Finished {
                size_bytes: enc.ciphertext_bytes as i64,
                sha256: enc.sha256.clone().unwrap_or_default(),
                plaintext_bytes: enc.plaintext_bytes as i64,
                etcd_revision: revision,
            };
            let details = serde_json::json!({
                "backup_id": id, "size_bytes": finished.size_bytes, "sha256": finished.sha256,
                "kek_id": row.kek_id, "etcd_revision": revision,
                "key_escrow": escrowed,
            });
            let event = audit_event(opts, &row.location, Outcome::Success, details);
            let record =
                db::mark_completed(store, id, &finished, &event, opts.audit.as_deref()).await?;
            record_success_metrics(&record, elapsed);
            // `rekey backup run` prints the record, `serve`'s schedule logs it
            // ("scheduled backup completed"), the API answers with it.
            tracing::debug!(backup = %id, location = %record.location, bytes = enc.ciphertext_bytes, "backup completed");
            Ok(record)
        }
        Err(e) => {
            if escrowed.is_some()
                && let Err(del) = escrow::delete(&target.display(), &settings).await
            {
                tracing::warn!(backup = %id, error = %del, "deleting the failed backup's key escrow failed");
            }
            let text = e.to_string();
            metrics::counter!(METRIC_FAILURES).increment(1);
            metrics::histogram!(METRIC_DURATION, "outcome" => "failure").record(elapsed);
            let details = serde_json::json!({ "backup_id": id, "error": text });
            let event = audit_event(opts, &row.location, Outcome::Failure, details);
            if let Err(db) =
                db::mark_failed(store, row.id, &text, &event, opts.audit.as_deref()).await
            {
                tracing::warn!(backup = %id, error = %db, "recording the failure failed");
            }
            Err(e)
        }
    }
}

/// The `backup.run` event of this run: the caller's (with its request id) when
/// it has a ticket, else one by `requested_by`; its target is the object.
fn audit_event(
    opts: &RunOptions,
    location: &str,
    outcome: Outcome,
    details: serde_json::Value,
) -> NewEvent {
    let mut event = match &opts.audit {
        Some(t) => t.event(outcome, details),
        None => {
            let mut e = NewEvent::new(&opts.requested_by, "backup.run", location, outcome);
            e.details = details;
            e
        }
    };
    event.target = location.to_string();
    event
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
