//! The backup metrics: their names, their descriptions, and what a
//! successful run records.

use chrono::Utc;

use super::db::BackupRecord;

/// Metric: Unix time of the last successful backup.
pub const METRIC_LAST_SUCCESS: &str = "rekey_backup_last_success_timestamp_seconds";
/// Metric: ciphertext bytes of the last successful backup.
pub const METRIC_BYTES: &str = "rekey_backup_bytes";
/// Metric: duration of backups (histogram, by outcome).
pub const METRIC_DURATION: &str = "rekey_backup_duration_seconds";
/// Metric: failed backups.
pub const METRIC_FAILURES: &str = "rekey_backup_failures_total";

pub(super) fn record_success_metrics(record: &BackupRecord, elapsed: f64) {
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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

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
            encryption_keys: None,
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
