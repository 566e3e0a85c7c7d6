//! Carrying out retention (`rekey backup prune`): deletes the objects
//! [`prune::plan`] chose, marks their records `pruned` and audits each.
//!
//! The decision is [`prune::plan`] (pure, the clock passed in); this file
//! only acts on it, one backup at a time, so a failure leaves every backup
//! either whole or deleted and recorded as such.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{
    BackupError, BackupRecord, ListFilter, db,
    location::{StoreSettings, Target},
    prune::{self, Retention},
};
use crate::store::{
    Store,
    audit::{NewEvent, Outcome},
};

/// Why pruning stopped.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// A backup's object could not be deleted (it and its record are intact).
    #[error("deleting backup {id}")]
    Delete {
        /// The backup.
        id: Uuid,
        /// Why.
        #[source]
        source: BackupError,
    },
    /// Listing, parsing a location or recording failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
}

impl PruneError {
    /// True when the user's input is at fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Delete { source: e, .. } | Self::Backup(e) => e.is_bad_input(),
        }
    }
}

/// What a prune did (the `--json` document of `rekey backup prune`).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Nothing was deleted: `pruned` is what would have been.
    pub dry_run: bool,
    /// The backups deleted (or to delete), oldest last.
    pub pruned: Vec<BackupRecord>,
    /// Completed backups kept.
    pub kept: usize,
}

/// Deletes the completed backups `retention` lets go at `now` (with
/// `dry_run`, only says which); each deletion is audited as `actor`.
pub async fn prune(
    store: &Store,
    retention: Retention,
    settings: &StoreSettings,
    dry_run: bool,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<PruneReport, PruneError> {
    let all = db::list(store, ListFilter::default())
        .await
        .map_err(BackupError::from)?;
    let doomed = prune::plan(&all, retention, now);
    let completed = all.iter().filter(|r| r.status == "completed").count();
    let mut pruned = Vec::new();
    for id in doomed {
        let Some(rec) = all.iter().find(|r| r.id == id) else {
            continue;
        };
        if !dry_run {
            let target = Target::parse(&rec.location, settings).map_err(BackupError::from)?;
            target.delete().await.map_err(|e| PruneError::Delete {
                id,
                source: e.into(),
            })?;
            // Its key escrow goes with it (a missing one is fine).
            super::escrow::delete(&rec.location, settings)
                .await
                .map_err(|e| PruneError::Delete {
                    id,
                    source: e.into(),
                })?;
            db::mark_pruned(store, id)
                .await
                .map_err(BackupError::from)?;
            let mut event = NewEvent::new(actor, "backup.prune", &rec.location, Outcome::Success);
            event.details = serde_json::json!({ "backup_id": id });
            store.audit(event).await.map_err(BackupError::from)?;
        }
        pruned.push(rec.clone());
    }
    Ok(PruneReport {
        dry_run,
        kept: completed - pruned.len(),
        pruned,
    })
}
