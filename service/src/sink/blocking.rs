//! Sinks that write with blocking calls (files: fsync, rename, flock) run
//! them on tokio's blocking threads: [`run`] takes them there, and the owned
//! copies of a request ([`OwnedPublication`], [`OwnedBundleUpdate`]) are
//! what moves with them.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::model::{BundleUpdate, Material, Publication, SinkError};
use crate::issue::TrustBundle;

/// Runs `f` with `sink` on a blocking thread; a thread that panicked is an
/// I/O error at `path` (where the sink writes).
pub(crate) async fn run<S, T>(
    sink: S,
    path: &Path,
    f: impl FnOnce(S) -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError>
where
    S: Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || f(sink))
        .await
        .map_err(|e| SinkError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?
}

/// A [`Publication`] that owns what it refers to.
pub(crate) struct OwnedPublication {
    credential: String,
    version: i64,
    number: i64,
    not_after: DateTime<Utc>,
    material: Material,
    adopt: bool,
}

impl OwnedPublication {
    /// A copy of `p`.
    pub(crate) fn of(p: &Publication<'_>) -> Self {
        Self {
            credential: p.credential.to_string(),
            version: p.version,
            number: p.number,
            not_after: p.not_after,
            material: p.material.clone(),
            adopt: p.adopt,
        }
    }

    /// The publication again.
    pub(crate) fn get(&self) -> Publication<'_> {
        Publication {
            credential: &self.credential,
            version: self.version,
            number: self.number,
            not_after: self.not_after,
            material: &self.material,
            adopt: self.adopt,
        }
    }
}

/// A [`BundleUpdate`] that owns what it refers to.
pub(crate) struct OwnedBundleUpdate {
    credential: String,
    version: i64,
    bundle: TrustBundle,
}

impl OwnedBundleUpdate {
    /// A copy of `u`.
    pub(crate) fn of(u: &BundleUpdate<'_>) -> Self {
        Self {
            credential: u.credential.to_string(),
            version: u.version,
            bundle: u.bundle.clone(),
        }
    }

    /// The update again.
    pub(crate) fn get(&self) -> BundleUpdate<'_> {
        BundleUpdate {
            credential: &self.credential,
            version: self.version,
            bundle: &self.bundle,
        }
    }
}
