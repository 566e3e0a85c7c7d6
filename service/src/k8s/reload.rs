//! Consumer reload: after publishing, roll the workloads that read a Secret.
//!
//! A restart is a strategic-merge patch of the pod template's annotation
//! `rekey.io/restarted-at` (what `kubectl rollout restart` does with its own
//! annotation). Restarts across the fleet go through one token bucket so a
//! mass rotation does not restart everything at once: build one
//! [`Reloader`] per process and clone it (clones share the bucket).

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;

use super::error::{K8sError, call};

/// The pod-template annotation rekey sets to roll a workload.
pub const RESTARTED_AT: &str = "rekey.io/restarted-at";
/// Default restarts per minute across the fleet.
pub const DEFAULT_PER_MINUTE: u32 = 60;
/// Default burst of restarts allowed at once.
pub const DEFAULT_BURST: u32 = 10;

/// A token bucket: `burst` tokens, refilled at `per_minute`. Pure: the clock is passed in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (at least one token, at least one per minute).
    pub fn new(per_minute: u32, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_sec: f64::from(per_minute.max(1)) / 60.0,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

/// A workload to roll: `deployment|statefulset|daemonset/<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `deployment`, `statefulset` or `daemonset`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Workload {
    /// Parses `kind/namespace/name`.
    pub fn parse(s: &str) -> Result<Self, K8sError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [
                kind @ ("deployment" | "statefulset" | "daemonset"),
                ns,
                name,
            ] if !ns.is_empty() && !name.is_empty() => Ok(Self {
                kind: kind.to_string(),
                namespace: ns.to_string(),
                name: name.to_string(),
            }),
            _ => Err(K8sError::Invalid(format!(
                "`{s}` is not `deployment|statefulset|daemonset/<namespace>/<name>`"
            ))),
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// The patch that rolls a workload (pure).
pub fn restart_patch(at: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    json!({"spec": {"template": {"metadata": {"annotations": {
        // Sub-second precision: two restarts in one second must still differ.
        RESTARTED_AT: at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }}}}})
}

/// Rolls workloads, rate-limited by a bucket shared by all clones.
#[derive(Clone)]
pub struct Reloader {
    client: kube::Client,
    bucket: Arc<tokio::sync::Mutex<TokenBucket>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader allowing `per_minute` restarts a minute with bursts of `burst`.
    pub fn new(client: kube::Client, per_minute: u32, burst: u32) -> Self {
        Self {
            client,
            bucket: Arc::new(tokio::sync::Mutex::new(TokenBucket::new(
                per_minute,
                burst,
                Instant::now(),
            ))),
        }
    }

    async fn take(&self) {
        loop {
            let wait = {
                let mut b = self.bucket.lock().await;
                match b.try_take(Instant::now()) {
                    Ok(()) => return,
                    Err(wait) => wait,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Restarts each target (waiting for the bucket); tries all of them and
    /// returns the first error.
    pub async fn restart(&self, targets: &[String]) -> Result<(), K8sError> {
        let mut first_err = None;
        for t in targets {
            let result = match Workload::parse(t) {
                Ok(w) => {
                    self.take().await;
                    self.restart_one(&w).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(target = %t, error = %e, "restarting a consumer failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn restart_one(&self, w: &Workload) -> Result<(), K8sError> {
        let patch = Patch::Strategic(restart_patch(chrono::Utc::now()));
        let pp = PatchParams::default();
        let what = format!("patch {w}");
        let c = self.client.clone();
        let ns = w.namespace.as_str();
        match w.kind.as_str() {
            "deployment" => call(
                &what,
                Api::<Deployment>::namespaced(c, ns).patch(&w.name, &pp, &patch),
            )
            .await
            .map(drop),
            "statefulset" => call(
                &what,
                Api::<StatefulSet>::namespaced(c, ns).patch(&w.name, &pp, &patch),
            )
            .await
            .map(drop),
            _ => call(
                &what,
                Api::<DaemonSet>::namespaced(c, ns).patch(&w.name, &pp, &patch),
            )
            .await
            .map(drop),
        }?;
        tracing::info!(workload = %w, "restarted consumer");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(60, 3, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_err());
        assert!(b.try_take(t0 + Duration::from_millis(1001)).is_ok());
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.try_take(later).is_ok());
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn workload_parsing() {
        let w = Workload::parse("statefulset/db/pg").unwrap();
        assert_eq!(
            (w.kind.as_str(), w.namespace.as_str(), w.name.as_str()),
            ("statefulset", "db", "pg")
        );
        assert!(Workload::parse("pod/db/pg").is_err());
        assert!(Workload::parse("deployment/db").is_err());
        let p = restart_patch(chrono::DateTime::from_timestamp(0, 0).unwrap());
        assert_eq!(
            p["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT],
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
