//! One claimed batch, step by step: prepare (spec, sink), reconcile what an
//! interruption left pending, issue in memory, open the attempts, publish
//! (the commit point), commit, record failures. Each step is batched: one
//! transaction to open, one to commit, for the whole batch. The clock is
//! read here, at each step, and passed to the decisions in `item`.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use super::{
    error::StepError,
    events::{EventOutcome, RotationEvent},
    issuing::issue_certificate,
    item::{Issued, Item, Spec},
    probe::Prober,
    reconcile::reconcile,
    settings::EngineConfig,
    tokens::{Reload, TokenIssuer},
};
use crate::{
    issue::Issuers,
    schedule::Jitter,
    sink::{self, Material, Publication, Sink, SinkContext},
    store::{
        Store,
        audit::{NewEvent, Outcome},
        credentials::kind,
        engine::{Attempt, Claimed, Failure, Opening, Success, VersionFacts},
    },
};

/// What the engine needs to run.
pub struct EngineDeps {
    /// The inventory.
    pub store: Store,
    /// Replica identity for leases and audit.
    pub replica: String,
    /// Tuning.
    pub config: EngineConfig,
    /// The issuers: who signs each certificate, what its sinks trust.
    pub issuers: Arc<Issuers>,
    /// What sinks need (a Kubernetes client).
    pub sinks: SinkContext,
    /// Service-account token issuance (TokenRequest).
    pub tokens: Option<Arc<dyn TokenIssuer>>,
    /// Consumer workload restarts after publishing.
    pub reload: Option<Arc<dyn Reload>>,
    /// Consumer probes after publishing (certificates with `probe`).
    pub probes: Option<Arc<Prober>>,
}

/// Rotates claimed batches; shared by the engine's in-flight tasks.
pub(super) struct Rotator {
    pub(super) deps: EngineDeps,
    pub(super) events: broadcast::Sender<RotationEvent>,
    jitter: Jitter,
}

impl Rotator {
    pub(super) fn new(deps: EngineDeps, events: broadcast::Sender<RotationEvent>) -> Self {
        let jitter = deps.config.jitter();
        Self {
            deps,
            events,
            jitter,
        }
    }

    /// The claim lease, in seconds.
    pub(super) fn lease_secs(&self) -> f64 {
        self.deps.config.lease.get().as_secs_f64()
    }

    /// Claims up to `limit` due credentials for this replica.
    pub(super) async fn claim(&self, limit: i64) -> Result<Vec<Claimed>, crate::store::StoreError> {
        self.deps
            .store
            .claim_due(&self.deps.replica, limit, self.lease_secs())
            .await
    }

    /// Rotates one claimed batch to the end: committed, failed (to be
    /// retried), or handed over to a replica that took the lease.
    pub(super) async fn process_batch(&self, claimed: Vec<Claimed>) {
        crate::crash::point("engine-after-claim");
        let mut items: Vec<Item> = claimed.into_iter().map(Item::new).collect();
        for item in &mut items {
            match self.prepare(&item.claimed) {
                Ok((spec, sink)) => {
                    item.spec = Some(spec);
                    item.sink = Some(sink);
                }
                Err(e) => item.failure = Some((e, false)),
            }
        }
        // Reconcile versions an interrupted attempt left pending.
        let mut recovered = Vec::new();
        for item in items
            .iter_mut()
            .filter(|i| i.claimed.has_pending && i.failure.is_none())
        {
            match reconcile(&self.deps.store, item, self.jitter, Utc::now()).await {
                Ok(Some(success)) => recovered.push(success),
                Ok(None) => {}
                Err(e) => item.failure = Some((e, true)),
            }
        }
        self.commit(&mut items, recovered, EventOutcome::Recovered)
            .await;

        // Issue material in memory, labelled with the version id reserved at claim time.
        let now = Utc::now();
        let issued =
            futures::future::join_all(items.iter().map(|item| self.issue(item, now))).await;
        for (item, result) in items.iter_mut().zip(issued) {
            match result {
                Some(Ok(i)) => item.issued = Some(i),
                Some(Err(e)) => item.failure = Some((e, false)),
                None => {}
            }
        }

        crate::crash::point("engine-after-issue");

        // Open attempts with the versions' facts; only credentials still owned go on.
        let openings: Vec<Opening> = items
            .iter()
            .filter(|i| !i.done && i.failure.is_none())
            .filter_map(|i| {
                Some(Opening {
                    lease_epoch: i.claimed.lease_epoch,
                    due_at: i.claimed.next_rotation_at,
                    trigger: i.trigger,
                    facts: i.issued.as_ref()?.facts.clone(),
                })
            })
            .collect();
        if !openings.is_empty() {
            match self
                .deps
                .store
                .open_attempts(&self.deps.replica, self.lease_secs(), &openings)
                .await
            {
                Ok(attempts) => {
                    let by_id: HashMap<i64, Attempt> =
                        attempts.into_iter().map(|a| (a.credential_id, a)).collect();
                    for item in items.iter_mut().filter(|i| i.issued.is_some() && !i.done) {
                        item.attempt = by_id.get(&item.claimed.id).copied();
                        if item.attempt.is_none() {
                            tracing::warn!(credential = %item.claimed.name, "lease lost before publishing; leaving it to its new owner");
                            item.issued = None;
                            item.done = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "opening rotation attempts failed; nothing was published");
                    let e = Arc::new(e);
                    for item in items.iter_mut().filter(|i| i.issued.is_some() && !i.done) {
                        item.issued = None;
                        item.failure = Some((StepError::Database(e.clone()), false));
                    }
                }
            }
        }

        crate::crash::point("engine-after-open");

        // Publish: the commit point.
        let timeout = self.deps.config.lease.get() / 2;
        let published = futures::future::join_all(items.iter().map(|item| async move {
            if item.done {
                return None;
            }
            let (issued, sink, spec, attempt) = (
                item.issued.as_ref()?,
                item.sink.as_ref()?,
                item.spec.as_ref()?,
                item.attempt?,
            );
            let p = Publication {
                credential: &item.claimed.name,
                version: attempt.version_id,
                number: attempt.number,
                not_after: issued.facts.not_after,
                material: issued.material.as_ref()?,
                adopt: spec.adopt(),
            };
            Some(
                match tokio::time::timeout(timeout, sink.publish(&p)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(source)) => Err(StepError::Publish {
                        sink: sink.describe(),
                        source,
                    }),
                    Err(_) => Err(StepError::PublishTimeout {
                        sink: sink.describe(),
                        after: timeout,
                    }),
                },
            )
        }))
        .await;
        let now = Utc::now();
        let mut successes = Vec::new();
        for (item, result) in items.iter_mut().zip(published) {
            match result {
                Some(Ok(())) => {
                    if let Some(s) = item.success(self.jitter, now) {
                        successes.push(s);
                    }
                }
                // The write may or may not have landed: leave the version pending for reconciliation.
                Some(Err(e)) => item.failure = Some((e, true)),
                None => {}
            }
        }
        if !successes.is_empty() {
            crate::crash::point("engine-after-publish");
        }
        self.commit(&mut items, successes, EventOutcome::Succeeded)
            .await;
        self.record_failures(&items, Utc::now()).await;
    }

    /// Parses the stored spec and builds its sink.
    fn prepare(&self, c: &Claimed) -> Result<(Spec, Arc<dyn Sink>), StepError> {
        let spec = match c.kind.as_str() {
            kind::CERTIFICATE => serde_json::from_value(c.spec.clone()).map(Spec::Certificate),
            kind::SERVICE_ACCOUNT_TOKEN => serde_json::from_value(c.spec.clone()).map(Spec::Token),
            other => return Err(StepError::UnknownKind(other.to_string())),
        }
        .map_err(StepError::BadSpec)?;
        let sink = sink::build(spec.sink(), &self.deps.sinks).map_err(StepError::Sink)?;
        Ok((spec, sink))
    }

    /// Issues new material for an item with an open attempt.
    async fn issue(&self, item: &Item, now: DateTime<Utc>) -> Option<Result<Issued, StepError>> {
        if item.failure.is_some() || item.issued.is_some() || item.done {
            return None;
        }
        let (version_id, credential_id) = (item.claimed.reserved_version, item.claimed.id);
        let spec = item.spec.as_ref()?;
        Some(match spec {
            Spec::Certificate(c) => {
                issue_certificate(
                    &self.deps.issuers,
                    c,
                    (credential_id, version_id),
                    now,
                    self.deps.config.lease.get(),
                )
                .await
            }
            Spec::Token(t) => match &self.deps.tokens {
                None => Err(StepError::NoTokenIssuer),
                Some(tokens) => match tokens.issue(t, version_id, now).await {
                    Ok(tok) => Ok(Issued {
                        facts: VersionFacts {
                            version_id,
                            credential_id,
                            fingerprint: tok.fingerprint,
                            serial: None,
                            not_before: tok.not_before,
                            not_after: tok.not_after,
                            details: tok.details,
                        },
                        material: Some(Material::Token { token: tok.token }),
                    }),
                    Err(e) => Err(StepError::Token(e)),
                },
            },
        })
    }

    /// Commits `successes` in one transaction with their audit records and
    /// announces each; an item whose lease was lost is left to its new owner.
    async fn commit(&self, items: &mut [Item], successes: Vec<Success>, outcome: EventOutcome) {
        if successes.is_empty() {
            return;
        }
        let actor = format!("rekey/{}", self.deps.replica);
        let audit: Vec<NewEvent> = successes
            .iter()
            .map(|s| {
                let item = items.iter().find(|i| i.claimed.id == s.credential_id);
                let name = item.map(|i| i.claimed.name.as_str()).unwrap_or_default();
                let mut e = NewEvent::new(&actor, "credential.rotate", name, Outcome::Success);
                e.reason = item.map(|i| i.trigger.to_string());
                e.details = serde_json::json!({
                    "rotation_id": s.rotation_id,
                    "version": s.version_id,
                    "not_after": s.not_after,
                    "next_rotation_at": s.next_rotation_at,
                    "fingerprint": item.and_then(|i| i.issued.as_ref()).map(|i| i.facts.fingerprint.clone()),
                    "recovered": outcome == EventOutcome::Recovered,
                });
                e
            })
            .collect();
        match self.deps.store.commit_successes(&successes, &audit).await {
            Ok(committed) => {
                crate::crash::point("engine-after-commit");
                for s in &successes {
                    let Some(item) = items.iter_mut().find(|i| i.claimed.id == s.credential_id)
                    else {
                        continue;
                    };
                    if !committed.contains(&s.credential_id) {
                        tracing::warn!(credential = %item.claimed.name, "lease lost before commit; the new owner will reconcile");
                        item.issued = None;
                        item.done = true;
                        continue;
                    }
                    let elapsed = item.started.elapsed();
                    metrics::counter!("rekey_rotations_total", "kind" => item.claimed.kind.clone(), "trigger" => item.trigger, "outcome" => "success").increment(1);
                    metrics::histogram!("rekey_rotation_duration_seconds", "kind" => item.claimed.kind.clone()).record(elapsed.as_secs_f64());
                    tracing::info!(
                        credential = %item.claimed.name, version = s.version_id, trigger = item.trigger,
                        not_after = %s.not_after.to_rfc3339(), next = %s.next_rotation_at.to_rfc3339(),
                        "rotated{}", if outcome == EventOutcome::Recovered { " (recovered)" } else { "" }
                    );
                    let _ = self.events.send(RotationEvent {
                        credential: item.claimed.name.clone(),
                        kind: item.claimed.kind.clone(),
                        trigger: item.trigger.to_string(),
                        rotation_id: Some(s.rotation_id),
                        outcome,
                        version: Some(s.version_id),
                        number: item.attempt.map(|a| a.number),
                        not_after: Some(s.not_after),
                        next_rotation_at: Some(s.next_rotation_at),
                        error: None,
                        duration_ms: elapsed.as_millis() as u64,
                    });
                    if let (Some(probes), Some(Spec::Certificate(c))) =
                        (&self.deps.probes, &item.spec)
                        && c.probe.is_some()
                    {
                        probes.after_publish(item.claimed.name.clone());
                    }
                    if outcome == EventOutcome::Succeeded
                        && let (Some(reload), Some(spec)) = (&self.deps.reload, &item.spec)
                        && !spec.reload().is_empty()
                        && let Err(e) = reload.restart(spec.reload()).await
                    {
                        tracing::warn!(credential = %item.claimed.name, error = %e, "restarting consumers failed");
                    }
                    item.issued = None;
                    item.failure = None;
                    item.done = true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "committing rotations failed; the versions stay pending and will be reconciled");
                let e = Arc::new(e);
                for s in &successes {
                    if let Some(item) = items.iter_mut().find(|i| i.claimed.id == s.credential_id) {
                        item.issued = None;
                        item.failure = Some((StepError::Database(e.clone()), true));
                    }
                }
            }
        }
    }

    /// Records the batch's failures, deciding each retry at `now`.
    async fn record_failures(&self, items: &[Item], now: DateTime<Utc>) {
        let actor = format!("rekey/{}", self.deps.replica);
        let mut failures = Vec::new();
        let mut audit = Vec::new();
        for item in items {
            let Some((error, maybe_published)) = &item.failure else {
                continue;
            };
            if item.done {
                continue;
            }
            let awaiting = matches!(error, StepError::AwaitingApproval(_));
            let retry_at = item.retry_at(now, rand::random(), awaiting);
            let delay = retry_at - now;
            let error = error.to_string();
            tracing::warn!(credential = %item.claimed.name, error = %error, retry_in = %humantime::format_duration(delay.to_std().unwrap_or_default()), "rotation failed");
            metrics::counter!("rekey_rotations_total", "kind" => item.claimed.kind.clone(), "trigger" => item.trigger, "outcome" => "failure").increment(1);
            failures.push(Failure {
                credential_id: item.claimed.id,
                lease_epoch: item.claimed.lease_epoch,
                rotation_id: item.attempt.map(|a| a.rotation_id),
                version: item.attempt.map(|a| (a.version_id, *maybe_published)),
                retry_at,
                error: error.clone(),
                trigger: item.trigger,
                due_at: item.claimed.next_rotation_at,
            });
            let mut e = NewEvent::new(
                &actor,
                "credential.rotate",
                &item.claimed.name,
                Outcome::Failure,
            );
            e.reason = Some(item.trigger.to_string());
            e.details = serde_json::json!({ "error": error, "retry_at": retry_at, "rotation_id": item.attempt.map(|a| a.rotation_id) });
            audit.push(e);
            let _ = self.events.send(RotationEvent {
                credential: item.claimed.name.clone(),
                kind: item.claimed.kind.clone(),
                trigger: item.trigger.to_string(),
                rotation_id: item.attempt.map(|a| a.rotation_id),
                outcome: EventOutcome::Failed,
                version: None,
                number: None,
                not_after: item.claimed.not_after,
                next_rotation_at: Some(retry_at),
                error: Some(error.clone()),
                duration_ms: item.started.elapsed().as_millis() as u64,
            });
        }
        if let Err(e) = self
            .deps
            .store
            .record_failures(&self.deps.replica, &failures, &audit)
            .await
        {
            tracing::warn!(error = %e, "recording failed rotations failed; their leases will expire");
        }
    }
}
