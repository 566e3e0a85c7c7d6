//! Reconciliation: what an interrupted attempt left `pending`. The sink is
//! asked which version it holds; a pending version found there was
//! published before the interruption and is committed (no new rotation is
//! needed), the others never reached consumers and are failed.

use chrono::{DateTime, Utc};

use super::{
    error::StepError,
    item::{Issued, Item},
};
use crate::{
    schedule::Jitter,
    store::{
        Store,
        engine::{Attempt, Success, VersionFacts},
    },
};

/// Reconciles one claimed item with pending versions; returns the success
/// to commit when its published version was one of them.
pub(super) async fn reconcile(
    store: &Store,
    item: &mut Item,
    jitter: Jitter,
    now: DateTime<Utc>,
) -> Result<Option<Success>, StepError> {
    let sink = item.sink.clone().ok_or(StepError::NoSink)?;
    let pending = store
        .pending_versions(item.claimed.id)
        .await
        .map_err(StepError::Pending)?;
    let published = sink
        .published_version()
        .await
        .map_err(|source| StepError::ReadSink {
            sink: sink.describe(),
            source,
        })?;
    let mut success = None;
    let mut abandon = Vec::new();
    for v in &pending {
        match (
            published == Some(v.id),
            v.rotation_id,
            v.not_before,
            v.not_after,
        ) {
            (true, Some(rotation_id), Some(nb), Some(na)) if success.is_none() => {
                tracing::info!(credential = %item.claimed.name, version = v.id, "recovered a version published before an interruption");
                item.attempt = Some(Attempt {
                    credential_id: item.claimed.id,
                    rotation_id,
                    version_id: v.id,
                    number: v.number,
                });
                item.issued = Some(Issued {
                    material: None,
                    facts: VersionFacts {
                        version_id: v.id,
                        credential_id: item.claimed.id,
                        fingerprint: v.fingerprint.clone().unwrap_or_default(),
                        serial: None,
                        not_before: nb,
                        not_after: na,
                        details: serde_json::json!({}),
                    },
                });
                success = item.success(jitter, now);
            }
            _ => abandon.push(v.id),
        }
    }
    if !abandon.is_empty() {
        store
            .abandon_versions(item.claimed.id, item.claimed.lease_epoch, &abandon)
            .await
            .map_err(StepError::Pending)?;
    }
    Ok(success)
}
