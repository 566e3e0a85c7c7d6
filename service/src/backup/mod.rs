//! Encrypted etcd backups: stream format, snapshot source, upload, records.
//!
//! ```text
//!  etcd Maintenance.Snapshot ──► snapshot (SHA-256 trailer checked in flight)
//!     (or a file, stdin)            │
//!                                   ▼
//!             stream::encrypt  ── AES-256-GCM STREAM chunks under a fresh data key,
//!                                   │  the data key wrapped by the KEK (format, kek)
//!                                   ▼
//!             location::Writer ── local temp file + rename, or multipart upload
//!                                   │  (file://, s3://, gs://, az:// via object_store)
//!                                   ▼
//!             records ──────────── `backups` row: size, ciphertext SHA-256, KEK id, revision
//! ```
//!
//! No plaintext touches disk on the way up. `decrypt` writes plaintext to a
//! temporary file that is renamed only after the final chunk authenticated;
//! `verify` decrypts to a temporary file and checks it is a valid etcd
//! snapshot ([`snapshot::status`]). `rewrap` rewrites only the header's key
//! envelope; bodies are copied byte for byte. The byte layout is in
//! `docs/backup-format.md`.
//!
//! For the service: [`run_backup`] runs one backup and returns its record,
//! [`list_backups`] lists them (`GET /v1/backups`, `POST /v1/backups`).

pub mod cli;
pub mod format;
pub mod kek;
pub mod list_page;
pub mod location;
pub mod prune;
pub mod records;
pub mod snapshot;
pub mod stream;

use std::{path::PathBuf, time::Instant};

use chrono::Utc;
use indicatif::ProgressBar;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    etcd::EtcdConfig,
    store::{
        Store, StoreError,
        audit::{NewEvent, Outcome},
    },
    units::ByteSize,
};

pub use records::{BackupRecord, ListFilter};

/// File-name suffix of backup objects written by `backup run`.
pub const OBJECT_SUFFIX: &str = ".rkb";

/// Metric: Unix time of the last successful backup.
pub const METRIC_LAST_SUCCESS: &str = "rekey_backup_last_success_timestamp_seconds";
/// Metric: ciphertext bytes of the last successful backup.
pub const METRIC_BYTES: &str = "rekey_backup_bytes";
/// Metric: duration of backups (histogram, by outcome).
pub const METRIC_DURATION: &str = "rekey_backup_duration_seconds";
/// Metric: failed backups.
pub const METRIC_FAILURES: &str = "rekey_backup_failures_total";

/// `[backup]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// `file:///...`, `s3://bucket/prefix/`, `gs://`, `az://`, or a local path.
    pub destination: String,
    /// Key-encryption key: 32 random bytes, raw or base64.
    pub kek_file: PathBuf,
    /// Plaintext bytes per encrypted chunk.
    #[serde(default = "default_chunk")]
    pub chunk_size: ByteSize,
    /// How many backups `prune` keeps.
    pub keep: Option<u32>,
    /// When `serve` takes a backup (cron, `sec min hour dom mon dow`); none: only on request.
    pub schedule: Option<String>,
    /// S3-compatible endpoint, e.g. `http://minio.backup:9000` (default: AWS, or `AWS_ENDPOINT_URL`).
    pub s3_endpoint: Option<String>,
    /// S3 region (default `AWS_REGION`, else `us-east-1` with a custom endpoint).
    pub s3_region: Option<String>,
    /// Path-style S3 requests (`endpoint/bucket/key`), needed by most S3-compatible services.
    #[serde(default)]
    pub s3_path_style: bool,
    /// S3 access key id (default `AWS_ACCESS_KEY_ID`).
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key (default `AWS_SECRET_ACCESS_KEY`); never printed.
    #[serde(default, serialize_with = "redact_opt")]
    pub s3_secret_access_key: Option<SecretString>,
}

fn redact_opt<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

fn default_chunk() -> ByteSize {
    ByteSize(format::DEFAULT_CHUNK.into())
}

impl BackupConfig {
    /// A config for `destination` and `kek_file` with every other field at its default.
    pub fn new(destination: impl Into<String>, kek_file: impl Into<PathBuf>) -> Self {
        Self {
            destination: destination.into(),
            kek_file: kek_file.into(),
            chunk_size: default_chunk(),
            keep: None,
            schedule: None,
            s3_endpoint: None,
            s3_region: None,
            s3_path_style: false,
            s3_access_key_id: None,
            s3_secret_access_key: None,
        }
    }

    /// Checks field values; errors are `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.destination.is_empty() {
            return Err(("destination".into(), "must not be empty".into()));
        }
        location::Destination::parse(&self.destination, &location::S3Settings::default())
            .map_err(|e| ("destination".into(), e.to_string()))?;
        if self.kek_file.as_os_str().is_empty() {
            return Err(("kek_file".into(), "must not be empty".into()));
        }
        let range = u64::from(format::MIN_CHUNK)..=u64::from(format::MAX_CHUNK);
        if !range.contains(&self.chunk_size.0) {
            return Err((
                "chunk_size".into(),
                format!("{} is outside 1KiB..64MiB", self.chunk_size),
            ));
        }
        if self.keep == Some(0) {
            return Err((
                "keep".into(),
                "must be at least 1 (prune never deletes the newest backup)".into(),
            ));
        }
        if let Some(s) = &self.schedule {
            crate::schedule::parse_cron(s).map_err(|m| ("schedule".into(), m))?;
        }
        if let Some(e) = &self.s3_endpoint {
            let ok = url::Url::parse(e)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .unwrap_or(false);
            if !ok {
                return Err((
                    "s3_endpoint".into(),
                    format!("`{e}` is not an http:// or https:// URL"),
                ));
            }
        }
        if self.s3_access_key_id.is_some() != self.s3_secret_access_key.is_some() {
            return Err((
                "s3_secret_access_key".into(),
                "s3_access_key_id and s3_secret_access_key go together".into(),
            ));
        }
        Ok(())
    }

    /// The S3 settings of this section.
    pub fn s3(&self) -> location::S3Settings {
        location::S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
        }
    }

    /// The chunk size as the format stores it.
    pub fn chunk_size_u32(&self) -> u32 {
        u32::try_from(self.chunk_size.0).unwrap_or(format::DEFAULT_CHUNK)
    }
}

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The KEK could not be loaded.
    #[error(transparent)]
    Kek(#[from] kek::KekError),
    /// A location is unusable, or an object-store request failed.
    #[error(transparent)]
    Location(#[from] location::LocationError),
    /// Encrypting or decrypting failed (the text says whether the input was bad).
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    /// The object is not an authentic backup.
    #[error(transparent)]
    Format(#[from] format::FormatError),
    /// The etcd snapshot could not be taken or is invalid.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file operation failed.
    #[error("{0}")]
    Io(String),
}

impl BackupError {
    /// True when the user's input is at fault (key file, location, ciphertext): exit 2.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Kek(_) | Self::Format(_) => true,
            Self::Location(e) => e.is_bad_input(),
            Self::Stream(e) => e.is_bad_input(),
            _ => false,
        }
    }
}

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
    let row = records::insert_running(
        store,
        &records::NewBackup {
            id,
            location: target.display(),
            requested_by: opts.requested_by.clone(),
            kek_id: kek.id().to_string(),
            chunk_size: backup.chunk_size_u32() as i32,
        },
    )
    .await?;
    let result = async {
        destination.prepare().await?;
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
            let record = records::mark_completed(
                store,
                id,
                &records::Finished {
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
            });
            store.audit(event).await?;
            tracing::info!(backup = %id, location = %record.location, bytes = enc.ciphertext_bytes, "backup completed");
            Ok(record)
        }
        Err(e) => {
            let text = e.to_string();
            metrics::counter!(METRIC_FAILURES).increment(1);
            metrics::histogram!(METRIC_DURATION, "outcome" => "failure").record(elapsed);
            if let Err(db) = records::mark_failed(store, row.id, &text).await {
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

fn record_success_metrics(record: &BackupRecord, elapsed: f64) {
    let at = record.finished_at.unwrap_or_else(Utc::now);
    metrics::gauge!(METRIC_LAST_SUCCESS).set(at.timestamp() as f64);
    metrics::gauge!(METRIC_BYTES).set(record.size_bytes.unwrap_or(0) as f64);
    metrics::histogram!(METRIC_DURATION, "outcome" => "success").record(elapsed);
}

/// Registers descriptions of the backup metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        METRIC_LAST_SUCCESS,
        metrics::Unit::Seconds,
        "Unix time of the last successful encrypted etcd backup."
    );
    metrics::describe_gauge!(
        METRIC_BYTES,
        metrics::Unit::Bytes,
        "Size of the last successful backup as stored (ciphertext)."
    );
    metrics::describe_histogram!(
        METRIC_DURATION,
        metrics::Unit::Seconds,
        "Duration of backup runs, by outcome."
    );
    metrics::describe_counter!(METRIC_FAILURES, "Backup runs that failed.");
}

/// Backups from the store, newest first (`GET /v1/backups`).
pub async fn list_backups(
    store: &Store,
    filter: ListFilter,
) -> Result<Vec<BackupRecord>, BackupError> {
    Ok(records::list(store, filter).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_fields() {
        let good = BackupConfig::new("s3://bucket/etcd/", "/etc/rekey/kek");
        assert!(good.validate().is_ok());
        let mut c = good.clone();
        c.destination = "ftp://x/y".into();
        assert_eq!(c.validate().unwrap_err().0, "destination");
        let mut c = good.clone();
        c.chunk_size = ByteSize(100);
        assert_eq!(c.validate().unwrap_err().0, "chunk_size");
        let mut c = good.clone();
        c.schedule = Some("every day".into());
        assert_eq!(c.validate().unwrap_err().0, "schedule");
        let mut c = good.clone();
        c.s3_endpoint = Some("localhost:9000".into());
        assert_eq!(c.validate().unwrap_err().0, "s3_endpoint");
        let mut c = good.clone();
        c.keep = Some(0);
        assert_eq!(c.validate().unwrap_err().0, "keep");
        let mut c = good;
        c.s3_access_key_id = Some("AKIA".into());
        assert_eq!(c.validate().unwrap_err().0, "s3_secret_access_key");
    }

    #[test]
    fn secret_key_never_prints() {
        let mut c = BackupConfig::new("s3://b/p/", "/k");
        c.s3_access_key_id = Some("AKIA".into());
        c.s3_secret_access_key = Some(SecretString::from("very-secret"));
        assert!(!format!("{c:?}").contains("very-secret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("very-secret"));
    }

    #[test]
    fn object_names_sort_by_time() {
        let id = Uuid::nil();
        let a = object_name("2026-01-02T03:04:05Z".parse().unwrap(), id);
        assert_eq!(
            a,
            "etcd-20260102T030405Z-00000000-0000-0000-0000-000000000000.rkb"
        );
    }

    #[test]
    fn metrics_are_exported_under_their_names() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let record = BackupRecord {
            id: Uuid::new_v4(),
            location: "file:///b/x.rkb".into(),
            status: "completed".into(),
            source: "etcd".into(),
            requested_by: "t".into(),
            started_at: Utc::now(),
            finished_at: Some(Utc::now()),
            size_bytes: Some(1234),
            sha256: None,
            plaintext_bytes: Some(1000),
            kek_id: "0011223344556677".into(),
            chunk_size: 1024,
            etcd_revision: Some(5),
            error: None,
            pruned_at: None,
        };
        metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            record_success_metrics(&record, 1.5);
        });
        let text = handle.render();
        for name in [METRIC_LAST_SUCCESS, METRIC_BYTES, METRIC_DURATION] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.contains("rekey_backup_bytes 1234"), "{text}");
    }
}
