//! Trust bundles published without re-issuing.
//!
//! - [`republish_issuer`]: every certificate of an issuer whose sink does
//!   not hold a bundle gets it through [`Sink::publish_bundle`] (same
//!   certificate and key, new `ca.crt`), each under a short lease on its
//!   credential so a rotation and a republish never write one sink at once;
//!   what each sink holds is recorded (`credentials.bundle_fingerprint`,
//!   `bundle_published_at`) and audited (`credential.publish_bundle`). The
//!   CA rotation calls it until every holder has the new bundle.
//! - [`BundleTargets`]: the `[[bundle]]` targets, published at start-up,
//!   whenever an issuer's bundle changes, and checked every minute (a target
//!   someone changed is put back); what each holds is in `bundle_targets`.
//!   Every replica runs it: writes are idempotent (a target already holding
//!   the bundle is not written) and atomic.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;

use crate::{
    issue::{TrustBundle, TrustBundles},
    sink::{
        self, BundleOutcome, BundleUpdate, SinkContext, SinkSpec,
        trust::{self, BundleTargetSpec},
    },
    store::{
        Store, StoreError,
        audit::{NewEvent, Outcome},
        bundles::{BundleClaim, DeclaredTarget},
    },
};

/// How many sinks a republish writes at once.
const REPUBLISH_CONCURRENCY: usize = 16;

/// How long a republish holds a credential's lease.
const REPUBLISH_LEASE: Duration = Duration::from_secs(30);

/// What [`republish_issuer`] did, by credential name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepublishReport {
    /// The new bundle was written.
    pub published: Vec<String>,
    /// The sink already held it (now recorded).
    pub unchanged: Vec<String>,
    /// Leased by a rotation or another republish: try again later (a
    /// rotation records the bundle it publishes).
    pub busy: Vec<String>,
    /// The sink no longer holds the current version: marked due, the
    /// re-issue publishes the bundle.
    pub drifted: Vec<String>,
    /// Writing failed (the error text): try again later.
    pub failed: Vec<(String, String)>,
}

impl RepublishReport {
    /// Whether every holder now has the bundle.
    pub fn complete(&self) -> bool {
        self.busy.is_empty() && self.drifted.is_empty() && self.failed.is_empty()
    }
}

/// Publishes `bundle` to every certificate sink of `issuer` that does not
/// hold it yet (by the record), as `replica`. Credentials never issued are
/// left alone: their first version carries the issuer's bundle of its day.
pub async fn republish_issuer(
    store: &Store,
    sinks: &SinkContext,
    replica: &str,
    issuer: &str,
    bundle: &TrustBundle,
) -> Result<RepublishReport, StoreError> {
    let holders = store.bundle_holders(issuer).await?;
    let todo: Vec<_> = holders
        .into_iter()
        .filter(|h| {
            h.current_version.is_some()
                && h.bundle_fingerprint.as_deref() != Some(bundle.fingerprint())
        })
        .collect();
    let results: Vec<(String, Result<Step, String>)> = futures::stream::iter(todo)
        .map(|h| async move {
            let r = republish_one(store, sinks, replica, h.id, bundle).await;
            (h.name, r)
        })
        .buffer_unordered(REPUBLISH_CONCURRENCY)
        .collect()
        .await;
    let mut report = RepublishReport::default();
    for (name, r) in results {
        match r {
            Ok(Step::Published) => report.published.push(name),
            Ok(Step::Unchanged) => report.unchanged.push(name),
            Ok(Step::Busy) => report.busy.push(name),
            Ok(Step::Drifted) => report.drifted.push(name),
            Err(e) => report.failed.push((name, e)),
        }
    }
    for v in [
        &mut report.published,
        &mut report.unchanged,
        &mut report.busy,
        &mut report.drifted,
    ] {
        v.sort();
    }
    report.failed.sort();
    Ok(report)
}

enum Step {
    Published,
    Unchanged,
    Busy,
    Drifted,
}

/// One credential: claim, publish the bundle, record, release.
async fn republish_one(
    store: &Store,
    sinks: &SinkContext,
    replica: &str,
    id: i64,
    bundle: &TrustBundle,
) -> Result<Step, String> {
    let Some(claim) = store
        .claim_for_bundle(id, replica, REPUBLISH_LEASE.as_secs_f64())
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(Step::Busy);
    };
    let result = publish_claimed(sinks, &claim, bundle).await;
    let actor = format!("rekey/{replica}");
    let event = |outcome: Outcome, detail: serde_json::Value| {
        let mut e = NewEvent::new(&actor, "credential.publish_bundle", &claim.name, outcome);
        e.details = detail;
        e
    };
    let (held, written, drifted, audit, step) = match &result {
        Ok(BundleOutcome::Published) => (
            Some(bundle.fingerprint()),
            true,
            false,
            Some(event(
                Outcome::Success,
                serde_json::json!({"version": claim.current_version, "bundle_fingerprint": bundle.fingerprint(), "previous_bundle_fingerprint": claim.bundle_fingerprint}),
            )),
            Ok(Step::Published),
        ),
        Ok(BundleOutcome::Unchanged) => (
            Some(bundle.fingerprint()),
            false,
            false,
            None,
            Ok(Step::Unchanged),
        ),
        Ok(BundleOutcome::NotApplicable) => (None, false, false, None, Ok(Step::Unchanged)),
        Ok(BundleOutcome::NotCurrent { found }) => {
            // A newer version than recorded is a rotation's pending publish
            // (its reconciliation records its bundle); anything else is drift.
            let newer = found.is_some_and(|f| f > claim.current_version);
            tracing::warn!(credential = %claim.name, current = claim.current_version, found = ?found, "the sink does not hold the current version; not republishing its bundle");
            (
                None,
                false,
                !newer,
                None,
                Ok(if newer { Step::Busy } else { Step::Drifted }),
            )
        }
        Err(e) => (
            None,
            false,
            false,
            Some(event(
                Outcome::Failure,
                serde_json::json!({"version": claim.current_version, "bundle_fingerprint": bundle.fingerprint(), "error": e}),
            )),
            Err(e.clone()),
        ),
    };
    store
        .finish_bundle_claim(&claim, held, written, drifted, audit.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    step
}

async fn publish_claimed(
    sinks: &SinkContext,
    claim: &BundleClaim,
    bundle: &TrustBundle,
) -> Result<BundleOutcome, String> {
    let spec: SinkSpec = serde_json::from_value(claim.sink.clone())
        .map_err(|e| format!("the stored sink does not parse: {e}"))?;
    let sink = sink::build(&spec, sinks).map_err(|e| e.to_string())?;
    let update = BundleUpdate {
        credential: &claim.name,
        version: claim.current_version,
        bundle,
    };
    match tokio::time::timeout(REPUBLISH_LEASE / 2, sink.publish_bundle(&update)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "{}: no answer within {}s",
            sink.describe(),
            (REPUBLISH_LEASE / 2).as_secs()
        )),
    }
}

/// The `[[bundle]]` targets of a configuration and what publishes them.
pub struct BundleTargets {
    store: Store,
    sinks: SinkContext,
    bundles: Arc<dyn TrustBundles>,
    targets: Vec<BundleTargetSpec>,
    running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for BundleTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleTargets")
            .field("targets", &self.targets.len())
            .finish()
    }
}

/// What happened to one target in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetOutcome {
    /// Written now.
    Written,
    /// Already held the bundle.
    Unchanged,
    /// Failed (why).
    Failed(String),
}

impl BundleTargets {
    /// Records the declared targets (the others are marked removed).
    pub async fn declare(
        store: Store,
        sinks: SinkContext,
        bundles: Arc<dyn TrustBundles>,
        targets: Vec<BundleTargetSpec>,
    ) -> Result<Arc<Self>, StoreError> {
        let declared: Vec<DeclaredTarget> = targets
            .iter()
            .map(|t| DeclaredTarget {
                name: t.name.clone(),
                issuer: t.issuer.clone(),
                sink: serde_json::to_value(&t.sink).unwrap_or_default(),
            })
            .collect();
        store.sync_bundle_targets(&declared).await?;
        Ok(Arc::new(Self {
            store,
            sinks,
            bundles,
            targets,
            running: tokio::sync::Mutex::new(()),
        }))
    }

    /// Publishes every target's issuer bundle where it is not held yet, and
    /// records what each holds. One round at a time.
    pub async fn publish_all(&self) -> Vec<(String, TargetOutcome)> {
        let _one = self.running.lock().await;
        let mut out = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            let outcome = self.publish_one(t).await;
            if let TargetOutcome::Failed(e) = &outcome {
                tracing::warn!(bundle = %t.name, target = %t.describe(), error = %e, "publishing a trust bundle failed; retrying at the next check");
            }
            out.push((t.name.clone(), outcome));
        }
        out
    }

    async fn publish_one(&self, t: &BundleTargetSpec) -> TargetOutcome {
        let Some(bundle) = self.bundles.bundle(&t.issuer) else {
            let e = format!("no issuer named `{}` has a trust bundle", t.issuer);
            let _ = self
                .store
                .record_bundle_target(&t.name, None, false, Some(&e))
                .await;
            return TargetOutcome::Failed(e);
        };
        let result = match trust::held(t, &self.sinks).await {
            Ok(Some(fp)) if fp == bundle.fingerprint() => Ok(false),
            Ok(_) => trust::write(t, &bundle, &self.sinks).await.map(|()| true),
            Err(e) => Err(e),
        };
        let (held, written, error) = match &result {
            Ok(w) => (Some(bundle.fingerprint()), *w, None),
            Err(e) => (None, false, Some(e.to_string())),
        };
        if let Err(e) = self
            .store
            .record_bundle_target(&t.name, held, written, error.as_deref())
            .await
        {
            tracing::warn!(bundle = %t.name, error = %e, "cannot record what a bundle target holds");
        }
        match result {
            Ok(true) => {
                tracing::info!(bundle = %t.name, target = %t.describe(), fingerprint = %bundle.fingerprint(), "trust bundle published");
                TargetOutcome::Written
            }
            Ok(false) => TargetOutcome::Unchanged,
            Err(e) => TargetOutcome::Failed(e.to_string()),
        }
    }

    /// Publishes at once, then whenever a bundle changes and every
    /// `interval`, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        if let Some(mut changes) = self.bundles.changes() {
            let me = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = changes.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            me.publish_all().await;
                        }
                    }
                }
            });
        }
        crate::schedule::jobs::every(interval, &shutdown, |_| {
            let me = self.clone();
            async move {
                me.publish_all().await;
            }
        })
        .await;
    }
}
