//! One replica at a time: jobs that are not transactional with Postgres
//! (the bootstrap-token watcher, scheduled etcd checks, scheduled backups)
//! run only while this replica holds a Postgres advisory lock for them.
//!
//! The lock lives on a dedicated connection: if this replica dies or loses
//! its connection, Postgres releases the lock and another replica takes over
//! within [`RETRY`]. The leader checks its connection every [`HEARTBEAT`]
//! (each check bounded by a heartbeat) and cancels its job the moment the
//! check fails; a new leader waits [`TAKEOVER_DELAY`] before starting, so
//! the two never overlap. Each leadership bumps an
//! epoch in `leadership` (a fencing token, logged and passed to the job).
//! The lock and the table are `store::leadership`; this file is the loop.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the leader checks that its lock connection is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How often a follower tries to take the lock.
pub const RETRY: Duration = Duration::from_secs(2);

/// How long a new leader waits before starting its job: by then a deposed
/// leader has failed a heartbeat (each is bounded by [`HEARTBEAT`]) and
/// stopped, so two leaders never run at once.
pub const TAKEOVER_DELAY: Duration = Duration::from_secs(5);

/// Runs `job` whenever this replica leads `name`, until `shutdown`.
///
/// `job` gets a token cancelled when leadership is lost (or on shutdown) and
/// the leadership epoch. If the job fails it is restarted after a pause,
/// still under the lock.
pub async fn lead<F, Fut>(
    store: Store,
    name: &'static str,
    replica: String,
    shutdown: CancellationToken,
    job: F,
) where
    F: Fn(CancellationToken, i64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    while !shutdown.is_cancelled() {
        let mut lock = match store.try_lead(name, &replica).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
            Err(e) => {
                tracing::warn!(job = name, error = %e, "cannot take part in leader election; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY * 2) => continue,
                }
            }
        };
        let epoch = lock.epoch;
        if epoch > 1 {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TAKEOVER_DELAY) => {}
            }
        }
        tracing::info!(job = name, epoch, replica = %replica, "leading");
        metrics::gauge!("rekey_leader", "job" => name).set(1.0);
        let led = shutdown.child_token();
        let run = job(led.clone(), epoch);
        tokio::pin!(run);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                result = &mut run => {
                    if let Err(e) = result {
                        tracing::error!(job = name, error = %crate::error::report(&e), "led job failed; restarting it");
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(RETRY * 5) => {}
                        }
                    }
                    break;
                }
                _ = heartbeat.tick() => {
                    let alive = tokio::time::timeout(HEARTBEAT, lock.check()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        tracing::warn!(job = name, epoch, "lost the leader lock's connection: stopping the job");
                        led.cancel();
                    }
                }
            }
        }
        metrics::gauge!("rekey_leader", "job" => name).set(0.0);
        // Closing the connection releases the advisory lock.
        lock.release().await;
    }
}
