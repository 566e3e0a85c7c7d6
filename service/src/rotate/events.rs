//! What the engine announces: one [`RotationEvent`] per finished rotation,
//! for `rekey dev` output, metrics and waiters.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// How a rotation ended, as announced to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventOutcome {
    /// A new version was published and committed.
    Succeeded,
    /// An interrupted attempt's version was found published and committed.
    Recovered,
    /// The attempt failed; it will be retried.
    Failed,
}

/// One finished rotation, for `rekey dev` output, metrics and waiters.
#[derive(Debug, Clone, Serialize)]
pub struct RotationEvent {
    /// The credential.
    pub credential: String,
    /// Its kind.
    pub kind: String,
    /// `schedule`, `expiry`, `manual`, `join`, `startup`.
    pub trigger: String,
    /// The rotation id.
    pub rotation_id: Option<Uuid>,
    /// How it ended.
    pub outcome: EventOutcome,
    /// The published version (id).
    pub version: Option<i64>,
    /// Its number among the credential's versions (1, 2, 3, ...).
    pub number: Option<i64>,
    /// Expiry of the published version.
    pub not_after: Option<DateTime<Utc>>,
    /// When it will rotate next (or be retried).
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
    /// Wall time of the attempt.
    pub duration_ms: u64,
}
