//! `[engine]`: how the rotation engine claims and runs work.

use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

/// `[engine]`: work claiming and concurrency.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Rotations run at once by this replica.
    pub concurrency: usize,
    /// Credentials claimed per query.
    pub batch_size: i64,
    /// How long a claim is held before another replica may take it over.
    pub lease: HumanDuration,
    /// How often to look for due work when nothing is known to be due sooner.
    pub poll_interval: HumanDuration,
    /// Upper bound of the random jitter subtracted from lifetime-based due times.
    pub max_jitter: HumanDuration,
    /// Share of the lifetime the jitter may take, whichever is smaller.
    pub jitter_fraction: f64,
    /// Identifies this replica in leases and audit records (default: hostname + pid).
    pub replica_id: Option<String>,
    /// How often every consumer probe (`probe` on a certificate) is checked.
    pub probe_interval: HumanDuration,
    /// How long one probe (connect and TLS handshake) may take.
    pub probe_timeout: HumanDuration,
    /// Probes run at once by this replica.
    pub probe_concurrency: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            batch_size: 100,
            lease: std::time::Duration::from_secs(60).into(),
            poll_interval: std::time::Duration::from_secs(1).into(),
            max_jitter: std::time::Duration::from_secs(300).into(),
            jitter_fraction: 0.05,
            replica_id: None,
            probe_interval: std::time::Duration::from_secs(60).into(),
            probe_timeout: std::time::Duration::from_secs(5).into(),
            probe_concurrency: 16,
        }
    }
}

impl EngineConfig {
    /// Checks field values; an error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.concurrency == 0 {
            return Err(("concurrency".into(), "must be at least 1".into()));
        }
        if self.batch_size < 1 {
            return Err(("batch_size".into(), "must be at least 1".into()));
        }
        if self.lease.get().as_secs() < 5 {
            return Err(("lease".into(), "must be at least 5s".into()));
        }
        if self.probe_interval.get() < std::time::Duration::from_secs(1) {
            return Err(("probe_interval".into(), "must be at least 1s".into()));
        }
        if self.probe_timeout.get() < std::time::Duration::from_millis(100)
            || self.probe_timeout.get() > std::time::Duration::from_secs(60)
        {
            return Err((
                "probe_timeout".into(),
                "must be between 100ms and 60s".into(),
            ));
        }
        if self.probe_concurrency == 0 {
            return Err(("probe_concurrency".into(), "must be at least 1".into()));
        }
        if !(0.0..=0.5).contains(&self.jitter_fraction) {
            return Err(("jitter_fraction".into(), "must be between 0 and 0.5".into()));
        }
        Ok(())
    }

    /// The jitter this configuration allows on lifetime-based due times.
    pub fn jitter(&self) -> crate::schedule::Jitter {
        crate::schedule::Jitter {
            max: self.max_jitter.chrono(),
            fraction: self.jitter_fraction,
        }
    }
}
