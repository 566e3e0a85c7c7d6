//! Scheduled backups in `rekey serve`: one [`run_backup`] at each fire of
//! `[backup].schedule`, on the lead replica.

use tokio_util::sync::CancellationToken;

use super::{
    run::{RunOptions, run_backup},
    settings::BackupConfig,
};
use crate::{
    etcd::EtcdConfig,
    schedule::{jobs::on_cron, parse_cron},
    store::Store,
};

/// Why scheduled backups cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// `backup.schedule` does not parse.
    #[error("backup.schedule: {0}")]
    Schedule(String),
}

/// Runs a backup at each fire of `backup.schedule` until `shutdown`
/// (a backup in progress stops at shutdown). A failed run is logged; the
/// job goes on to the next fire.
pub async fn run_scheduled(
    store: Store,
    backup: BackupConfig,
    etcd: EtcdConfig,
    actor: String,
    shutdown: CancellationToken,
) -> Result<(), JobError> {
    let expr = backup.schedule.clone().unwrap_or_default();
    let schedule = parse_cron(&expr).map_err(JobError::Schedule)?;
    tracing::info!(schedule = %expr, destination = %backup.destination, "scheduled backups");
    on_cron(&schedule, &shutdown, |shutdown| {
        let (store, backup, etcd, actor) = (&store, &backup, &etcd, &actor);
        async move {
            let opts = RunOptions::quiet(actor.clone());
            tokio::select! {
                () = shutdown.cancelled() => {}
                result = run_backup(store, backup, etcd, &opts) => match result {
                    Ok(r) => tracing::info!(backup = %r.id, location = %r.location, "scheduled backup completed"),
                    Err(e) => tracing::error!(error = %e, "scheduled backup failed"),
                },
            }
        }
    })
    .await;
    // A schedule with no further fire times: idle until shutdown, so the
    // leader does not restart the job.
    shutdown.cancelled().await;
    Ok(())
}
