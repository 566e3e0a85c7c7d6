//! The scheduled storage migration in `rekey serve` (`etcd.migrate_schedule`),
//! run by the leader only. Each run rewrites what is not under the current
//! write key (usually nothing: the pre-flight scan finds no stale value and
//! the run ends there) and exports:
//!
//! - `rekey_etcd_migration_rewritten_total` (counter)
//! - `rekey_etcd_migration_stale_values` (the last re-scan's count)
//! - `rekey_etcd_migration_last_success_timestamp_seconds`
//! - `rekey_etcd_migration_failures_total` (counter)

use tokio_util::sync::CancellationToken;

use super::{MigrateOptions, migrate};
use crate::{etcd::db::Trigger, etcd::settings::EtcdConfig, schedule::jobs::on_cron, store::Store};

/// Why the job cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// `etcd.migrate_schedule` or `etcd.encryption_config` is missing.
    #[error("etcd.{0} is not set: the scheduled storage migration needs it")]
    Missing(&'static str),
    /// The cron expression does not parse.
    #[error("etcd.migrate_schedule: {0}")]
    Schedule(String),
}

/// One scheduled run: migrates, logs and exports the metrics.
pub async fn run_once(store: &Store, kube: &kube::Client, opts: &MigrateOptions) {
    match migrate(opts, Some(store), kube).await {
        Ok(report) => {
            metrics::counter!("rekey_etcd_migration_rewritten_total").increment(report.rewritten);
            if let Some(n) = report.stale_after {
                metrics::gauge!("rekey_etcd_migration_stale_values").set(n as f64);
            }
            if report.exit_code == 0 {
                metrics::gauge!("rekey_etcd_migration_last_success_timestamp_seconds")
                    .set(chrono::Utc::now().timestamp() as f64);
                tracing::info!(
                    planned = report.planned,
                    rewritten = report.rewritten,
                    "scheduled storage migration finished"
                );
            } else {
                metrics::counter!("rekey_etcd_migration_failures_total").increment(1);
                tracing::warn!(error = ?report.error, "scheduled storage migration failed");
            }
        }
        Err(e) => {
            metrics::counter!("rekey_etcd_migration_failures_total").increment(1);
            tracing::warn!(error = %e, "scheduled storage migration could not run");
        }
    }
}

/// Runs the migration on `config.migrate_schedule` until `shutdown`.
pub async fn run_scheduled(
    store: Store,
    config: EtcdConfig,
    kube: kube::Client,
    actor: String,
    shutdown: CancellationToken,
) -> Result<(), JobError> {
    let expr = config
        .migrate_schedule
        .as_deref()
        .ok_or(JobError::Missing("migrate_schedule"))?;
    let schedule = crate::schedule::parse_cron(expr).map_err(JobError::Schedule)?;
    let opts = MigrateOptions::from_config(&config, Trigger::Schedule, &actor)
        .ok_or(JobError::Missing("encryption_config"))?;
    tracing::info!(schedule = expr, "scheduled etcd storage migration");
    // Exported from the start, so that the first failure is an increase.
    metrics::counter!("rekey_etcd_migration_failures_total").increment(0);
    on_cron(&schedule, &shutdown, |shutdown| {
        let (store, kube, opts) = (&store, &kube, &opts);
        async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = run_once(store, kube, opts) => {}
            }
        }
    })
    .await;
    shutdown.cancelled().await;
    Ok(())
}
