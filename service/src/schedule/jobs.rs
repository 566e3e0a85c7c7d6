//! The one loop around every periodic job: [`every`] a fixed period, or
//! [`on_cron`] a schedule, until shutdown.
//!
//! The wait between runs always ends at shutdown. A run is handed the
//! shutdown token and decides itself whether to stop early (a backup stops
//! mid-stream, a scan finishes its page); the loop never starts another run
//! once shutdown is requested.

use std::{future::Future, time::Duration};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::cron::next_fire;

/// Runs `job` now, then again `period` after each run ends, until `shutdown`.
pub async fn every<F, Fut>(period: Duration, shutdown: &CancellationToken, mut job: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    while !shutdown.is_cancelled() {
        job(shutdown.clone()).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// Runs `job` at each fire of `schedule` (UTC) until `shutdown`. A run that
/// lasts past the next fire delays it: runs never overlap, and fires missed
/// while a run was in progress are not made up. A schedule with no further
/// fire times ends the loop.
pub async fn on_cron<F, Fut>(schedule: &::cron::Schedule, shutdown: &CancellationToken, mut job: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    while !shutdown.is_cancelled() {
        let Some(next) = next_fire(schedule, Utc::now()) else {
            tracing::info!("schedule has no further fire times");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        job(shutdown.clone()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_runs_at_once_then_each_period_and_stops_on_shutdown() {
        let runs = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let task = {
            let (runs, shutdown) = (runs.clone(), shutdown.clone());
            tokio::spawn(async move {
                every(Duration::from_secs(60), &shutdown, |_| {
                    let runs = runs.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the first run is immediate");
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "then one run per period");
        shutdown.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "no run after shutdown");
    }

    #[tokio::test]
    async fn on_cron_waits_for_the_fire_and_returns_at_shutdown() {
        // Once a year: the loop is waiting, not running, when shutdown comes.
        let schedule = super::super::cron::parse_cron("0 0 0 1 1 *").unwrap();
        let shutdown = CancellationToken::new();
        let ran = Arc::new(AtomicU32::new(0));
        let task = {
            let (ran, shutdown) = (ran.clone(), shutdown.clone());
            tokio::spawn(async move {
                on_cron(&schedule, &shutdown, |_| {
                    let ran = ran.clone();
                    async move {
                        ran.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "the loop waits for the next fire");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("on_cron returns promptly at shutdown")
            .unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0, "no fire came");
    }
}
