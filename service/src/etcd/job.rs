//! The scheduled check in `rekey serve`: runs on `etcd.check_schedule`,
//! records each run in `etcd_checks`, and exports gauges:
//!
//! - `rekey_etcd_plaintext_values`
//! - `rekey_etcd_stale_values`
//! - `rekey_etcd_undecryptable_values`
//! - `rekey_etcd_last_check_timestamp_seconds` (last check that completed)
//!
//! and the counter `rekey_etcd_check_failures_total` for runs that could not
//! complete (etcd unreachable, file unreadable).

use tokio_util::sync::CancellationToken;

use super::{
    db::Trigger,
    report::Report,
    settings::EtcdConfig,
    verify::{VerifyError, VerifyOptions, verify_and_record},
};
use crate::{schedule::jobs::on_cron, store::Store};

/// Why the job cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// `etcd.check_schedule` or `etcd.encryption_config` is missing.
    #[error("etcd.{0} is not set: the scheduled encryption check needs it")]
    Missing(&'static str),
    /// The cron expression does not parse.
    #[error("etcd.check_schedule: {0}")]
    Schedule(String),
}

/// Sets the gauges from a report (no-op for invalid configurations).
pub fn export_gauges(report: &Report) {
    if let Some(s) = &report.scan {
        metrics::gauge!("rekey_etcd_plaintext_values").set(s.counts.plaintext as f64);
        metrics::gauge!("rekey_etcd_stale_values").set(s.counts.stale as f64);
        metrics::gauge!("rekey_etcd_undecryptable_values").set(s.counts.undecryptable as f64);
        metrics::gauge!("rekey_etcd_last_check_timestamp_seconds")
            .set(report.checked_at.timestamp() as f64);
    }
}

/// Runs one check now, records it and exports the gauges.
pub async fn run_once(
    store: &Store,
    opts: &VerifyOptions,
) -> Result<(Report, Option<i64>), VerifyError> {
    let result = verify_and_record(opts, Some(store), Trigger::Schedule).await;
    match &result {
        Ok((report, id)) => {
            export_gauges(report);
            let s = report.scan.as_ref();
            tracing::info!(
                check_id = ?id,
                exit_code = report.exit_code,
                total = s.map(|s| s.total),
                plaintext = s.map(|s| s.counts.plaintext),
                stale = s.map(|s| s.counts.stale),
                undecryptable = s.map(|s| s.counts.undecryptable),
                "etcd encryption check finished"
            );
        }
        Err(e) => {
            metrics::counter!("rekey_etcd_check_failures_total").increment(1);
            tracing::warn!(error = %e, "etcd encryption check could not run");
        }
    }
    result
}

/// Runs the check on `config.check_schedule` until `shutdown` is cancelled.
/// A failed run is logged and counted; the job goes on to the next fire.
pub async fn run_scheduled(
    store: Store,
    config: EtcdConfig,
    shutdown: CancellationToken,
) -> Result<(), JobError> {
    let expr = config
        .check_schedule
        .as_deref()
        .ok_or(JobError::Missing("check_schedule"))?;
    let schedule = crate::schedule::parse_cron(expr).map_err(JobError::Schedule)?;
    let opts = VerifyOptions::from_config(&config).ok_or(JobError::Missing("encryption_config"))?;
    tracing::info!(schedule = expr, prefix = %opts.prefix, "scheduled etcd encryption check");
    on_cron(&schedule, &shutdown, |shutdown| {
        let (store, opts) = (&store, &opts);
        async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = run_once(store, opts) => {}
            }
        }
    })
    .await;
    // A schedule with no further fire times: idle until shutdown, so the
    // leader does not restart the job.
    shutdown.cancelled().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn futures_can_be_spawned() {
        let store = Store::from_pool(
            sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://nobody@127.0.0.1:1/x")
                .unwrap(),
        );
        let opts = VerifyOptions::from_config(&EtcdConfig {
            encryption_config: Some("/x".into()),
            ..Default::default()
        })
        .unwrap();
        assert_send(&run_once(&store, &opts));
        assert_send(&run_scheduled(
            store.clone(),
            EtcdConfig::default(),
            CancellationToken::new(),
        ));
        assert_send(&verify_and_record(&opts, Some(&store), Trigger::Api));
    }

    #[tokio::test]
    async fn missing_fields_are_reported() {
        let store = Store::from_pool(
            sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://nobody@127.0.0.1:1/x")
                .unwrap(),
        );
        let cfg = EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ..Default::default()
        };
        let e = run_scheduled(store.clone(), cfg.clone(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("check_schedule"), "{e}");
        let cfg = EtcdConfig {
            check_schedule: Some("0 * * * * *".into()),
            ..cfg
        };
        let e = run_scheduled(store, cfg, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("encryption_config"), "{e}");
    }
}
