//! The run loop: claim due work with bounded concurrency, hand each batch
//! to the [`Rotator`](super::batch), sleep until the next due time or a
//! wake-up, ride out Postgres outages with backoff, and on shutdown stop
//! claiming and let in-flight rotations finish.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{
    batch::{EngineDeps, Rotator},
    error::EngineError,
    events::RotationEvent,
};
use crate::store::{Store, listen::listen, rotations::WAKE_CHANNEL};

/// The rotation engine. Cheap to share (`Arc`).
pub struct Engine {
    rotator: Arc<Rotator>,
    running: watch::Sender<bool>,
    slots: Arc<Semaphore>,
}

impl Engine {
    /// Builds an engine.
    pub fn new(deps: EngineDeps) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let (running, _) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(deps.config.concurrency));
        Arc::new(Self {
            rotator: Arc::new(Rotator::new(deps, events)),
            running,
            slots,
        })
    }

    /// Subscribes to finished rotations.
    pub fn subscribe(&self) -> broadcast::Receiver<RotationEvent> {
        self.rotator.events.subscribe()
    }

    /// `true` while the engine loop runs (for `/readyz`).
    pub fn running(&self) -> watch::Receiver<bool> {
        self.running.subscribe()
    }

    /// The replica id.
    pub fn replica(&self) -> &str {
        &self.rotator.deps.replica
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.rotator.deps.store
    }

    /// Runs until `shutdown`: claims due work, rotates it with bounded
    /// concurrency, sleeps until the next due time or a wake-up. On shutdown
    /// it stops claiming and lets in-flight rotations finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), EngineError> {
        let deps = &self.rotator.deps;
        // Subscribed before the first claim, so a wake-up sent meanwhile is kept.
        let mut wake = listen(&deps.store, WAKE_CHANNEL, shutdown.clone()).subscribe();
        self.running.send_replace(true);
        let mut in_flight = tokio::task::JoinSet::new();
        let mut db_failures = 0u32;
        let poll = deps.config.poll_interval.get();
        while !shutdown.is_cancelled() {
            while in_flight.try_join_next().is_some() {}
            let free = self.slots.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = in_flight.join_next() => {}
                }
                continue;
            }
            let limit = (free as i64).min(deps.config.batch_size);
            match self.rotator.claim(limit).await {
                Ok(claimed) if !claimed.is_empty() => {
                    if db_failures > 0 {
                        tracing::info!("Postgres reachable again");
                        self.running.send_replace(true);
                    }
                    db_failures = 0;
                    let permits = match self
                        .slots
                        .clone()
                        .acquire_many_owned(claimed.len() as u32)
                        .await
                    {
                        Ok(p) => p,
                        Err(_) => break,
                    };
                    let rotator = self.rotator.clone();
                    in_flight.spawn(async move {
                        rotator.process_batch(claimed).await;
                        drop(permits);
                    });
                }
                Ok(_) => {
                    if db_failures > 0 {
                        tracing::info!("Postgres reachable again");
                        self.running.send_replace(true);
                    }
                    db_failures = 0;
                    let next = deps.store.next_due_at().await.ok().flatten();
                    let wait = idle_wait(next, Utc::now(), poll);
                    idle(&shutdown, &mut wake, wait).await;
                }
                Err(e) => {
                    db_failures += 1;
                    if db_failures == 1 {
                        tracing::error!(error = %e, "cannot claim work; retrying with backoff");
                    }
                    self.running.send_replace(false);
                    let backoff = Duration::from_millis(200 * (1 << db_failures.min(5)));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
        self.running.send_replace(false);
        tracing::info!(
            in_flight = in_flight.len(),
            "engine stopping: letting in-flight rotations finish"
        );
        while in_flight.join_next().await.is_some() {}
        Ok(())
    }

    /// Claims and rotates one batch now; returns how many were claimed.
    /// (Tests and benchmarks drive the engine step by step with this.)
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, EngineError> {
        let claimed = self
            .rotator
            .claim(self.rotator.deps.config.batch_size)
            .await?;
        let n = claimed.len();
        if n > 0 {
            self.rotator.process_batch(claimed).await;
        }
        Ok(n)
    }
}

/// How long to sleep when nothing is due: until the next due time, at most
/// `poll`, at least 10 ms.
fn idle_wait(next_due: Option<DateTime<Utc>>, now: DateTime<Utc>, poll: Duration) -> Duration {
    match next_due {
        Some(t) => (t - now).to_std().unwrap_or(Duration::ZERO).min(poll),
        None => poll,
    }
    .max(Duration::from_millis(10))
}

/// Sleeps up to `wait`, or until a wake-up or shutdown.
async fn idle(
    shutdown: &CancellationToken,
    wake: &mut broadcast::Receiver<String>,
    wait: Duration,
) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
        // A payload, a lag or a reconnect all mean "look again".
        _ = wake.recv() => {}
    }
}

/// A replica id unique to this process: host name and process id.
pub fn default_replica_id() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "rekey".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn idle_waits_for_the_next_due_time_within_bounds() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let poll = Duration::from_secs(1);
        assert_eq!(idle_wait(None, now, poll), poll);
        assert_eq!(
            idle_wait(Some(now + TimeDelta::milliseconds(300)), now, poll),
            Duration::from_millis(300)
        );
        assert_eq!(idle_wait(Some(now + TimeDelta::hours(1)), now, poll), poll);
        assert_eq!(
            idle_wait(Some(now - TimeDelta::hours(1)), now, poll),
            Duration::from_millis(10)
        );
    }
}
