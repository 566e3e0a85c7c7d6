//! The rotation engine: claims due credentials and rotates them, crash-safe.
//!
//! ```text
//!  claim (lease, FOR UPDATE SKIP LOCKED)
//!    │  reconcile versions an interrupted attempt left `pending`
//!    ▼
//!  issue material in memory, labelled with a reserved version id
//!    │  (CA on blocking threads, TokenRequest)
//!    ▼
//!  open attempts: fencing + lease extension, `rotations` row       (one transaction)
//!  running, `pending` version with its facts
//!    ▼
//!  publish to the sink, version id attached  ◄── the commit point
//!    ▼
//!  commit: supersede old, publish new, next due, audit, release   (one transaction)
//! ```
//!
//! Each step is safe to crash after. A version is `pending` until the commit;
//! whoever claims the credential next asks the sink which version it holds
//! and either finalizes that version (it was published) or fails it (it never
//! was). Work is batched: one claim, one transaction to open, one transaction
//! to commit, for up to `batch_size` credentials.

pub mod declare;
pub mod retire;
pub mod tokens;

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::{CertificateSpec, EngineConfig, SinkSpec, TokenSpec},
    issue::CertAuthority,
    schedule::{self, Jitter},
    sink::{self, Material, Publication, Sink, SinkContext},
    store::{
        Store, StoreError,
        audit::{NewEvent, Outcome},
        credentials::kind,
        engine::{Attempt, Claimed, Failure, Opening, Success, VersionFacts},
        rotations::WAKE_CHANNEL,
    },
};

pub use tokens::{IssuedToken, Reload, TokenIssuer};

/// Errors that stop the engine (individual rotation failures do not).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed in a way the engine cannot ride out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
    /// The published version.
    pub version: Option<i64>,
    /// Expiry of the published version.
    pub not_after: Option<DateTime<Utc>>,
    /// When it will rotate next (or be retried).
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
    /// Wall time of the attempt.
    pub duration_ms: u64,
}

/// What the engine needs to run.
pub struct EngineDeps {
    /// The inventory.
    pub store: Store,
    /// Replica identity for leases and audit.
    pub replica: String,
    /// Tuning.
    pub config: EngineConfig,
    /// The internal CA (certificates).
    pub ca: Option<Arc<CertAuthority>>,
    /// What sinks need (a Kubernetes client).
    pub sinks: SinkContext,
    /// Service-account token issuance (TokenRequest).
    pub tokens: Option<Arc<dyn TokenIssuer>>,
    /// Consumer workload restarts after publishing.
    pub reload: Option<Arc<dyn Reload>>,
}

/// The rotation engine. Cheap to share (`Arc`).
pub struct Engine {
    deps: EngineDeps,
    events: broadcast::Sender<RotationEvent>,
    running: watch::Sender<bool>,
    jitter: Jitter,
    slots: Arc<Semaphore>,
}

/// One credential in flight through a batch.
struct Item {
    claimed: Claimed,
    trigger: &'static str,
    started: tokio::time::Instant,
    attempt: Option<Attempt>,
    spec: Option<Spec>,
    sink: Option<Arc<dyn Sink>>,
    issued: Option<Issued>,
    failure: Option<(String, bool)>,
    /// Committed, or handed over to another replica: nothing more to do.
    done: bool,
}

enum Spec {
    Certificate(CertificateSpec),
    Token(TokenSpec),
}

impl Spec {
    fn policy(&self) -> crate::config::RenewalPolicy {
        match self {
            Self::Certificate(c) => c.policy(),
            Self::Token(t) => t.policy(),
        }
    }

    fn sink(&self) -> &SinkSpec {
        match self {
            Self::Certificate(c) => &c.sink,
            Self::Token(t) => &t.sink,
        }
    }

    fn adopt(&self) -> bool {
        match self {
            Self::Certificate(c) => c.adopt,
            Self::Token(t) => t.adopt,
        }
    }

    fn reload(&self) -> &[String] {
        match self {
            Self::Certificate(c) => &c.reload,
            Self::Token(t) => &t.reload,
        }
    }
}

struct Issued {
    /// None when recovering a version already in the sink.
    material: Option<Material>,
    facts: VersionFacts,
}

impl Engine {
    /// Builds an engine.
    pub fn new(deps: EngineDeps) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        let (running, _) = watch::channel(false);
        let jitter = Jitter {
            max: deps.config.max_jitter.chrono(),
            fraction: deps.config.jitter_fraction,
        };
        let slots = Arc::new(Semaphore::new(deps.config.concurrency));
        Arc::new(Self {
            deps,
            events,
            running,
            jitter,
            slots,
        })
    }

    /// Subscribes to finished rotations.
    pub fn subscribe(&self) -> broadcast::Receiver<RotationEvent> {
        self.events.subscribe()
    }

    /// `true` while the engine loop runs (for `/readyz`).
    pub fn running(&self) -> watch::Receiver<bool> {
        self.running.subscribe()
    }

    /// The replica id.
    pub fn replica(&self) -> &str {
        &self.deps.replica
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.deps.store
    }

    fn lease_secs(&self) -> f64 {
        self.deps.config.lease.get().as_secs_f64()
    }

    /// Runs until `shutdown`: claims due work, rotates it with bounded
    /// concurrency, sleeps until the next due time or a wake-up. On shutdown
    /// it stops claiming and lets in-flight rotations finish.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), EngineError> {
        // Subscribed before the first claim, so a wake-up sent meanwhile is kept.
        let mut wake =
            crate::store::listen::listen(&self.deps.store, WAKE_CHANNEL, shutdown.clone())
                .subscribe();
        self.running.send_replace(true);
        let mut in_flight = tokio::task::JoinSet::new();
        let mut db_failures = 0u32;
        let poll = self.deps.config.poll_interval.get();
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
            let limit = (free as i64).min(self.deps.config.batch_size);
            match self
                .deps
                .store
                .claim_due(&self.deps.replica, limit, self.lease_secs())
                .await
            {
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
                    let me = self.clone();
                    in_flight.spawn(async move {
                        me.process_batch(claimed).await;
                        drop(permits);
                    });
                }
                Ok(_) => {
                    if db_failures > 0 {
                        tracing::info!("Postgres reachable again");
                        self.running.send_replace(true);
                    }
                    db_failures = 0;
                    let wait = match self.deps.store.next_due_at().await {
                        Ok(Some(t)) => (t - Utc::now())
                            .to_std()
                            .unwrap_or(Duration::ZERO)
                            .min(poll),
                        _ => poll,
                    }
                    .max(Duration::from_millis(10));
                    self.idle(&shutdown, &mut wake, wait).await;
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

    /// Sleeps up to `wait`, or until a wake-up or shutdown.
    async fn idle(
        &self,
        shutdown: &CancellationToken,
        wake: &mut tokio::sync::broadcast::Receiver<String>,
        wait: Duration,
    ) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
            // A payload, a lag or a reconnect all mean "look again".
            _ = wake.recv() => {}
        }
    }

    /// Claims and rotates one batch now; returns how many were claimed.
    /// (Tests and benchmarks drive the engine step by step with this.)
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, EngineError> {
        let claimed = self
            .deps
            .store
            .claim_due(
                &self.deps.replica,
                self.deps.config.batch_size,
                self.lease_secs(),
            )
            .await?;
        let n = claimed.len();
        if n > 0 {
            self.process_batch(claimed).await;
        }
        Ok(n)
    }

    async fn process_batch(&self, claimed: Vec<Claimed>) {
        crate::crash::point("engine-after-claim");
        let mut items: Vec<Item> = claimed
            .into_iter()
            .map(|c| Item {
                trigger: schedule::trigger_for(c.next_rotation_reason.as_deref()),
                claimed: c,
                started: tokio::time::Instant::now(),
                attempt: None,
                spec: None,
                sink: None,
                issued: None,
                failure: None,
                done: false,
            })
            .collect();
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
            match self.reconcile(item).await {
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
                    for item in items.iter_mut().filter(|i| i.issued.is_some() && !i.done) {
                        item.issued = None;
                        item.failure = Some((format!("database: {e}"), false));
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
                not_after: issued.facts.not_after,
                material: issued.material.as_ref()?,
                adopt: spec.adopt(),
            };
            Some(
                match tokio::time::timeout(timeout, sink.publish(&p)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("publishing to {}: {e}", sink.describe())),
                    Err(_) => Err(format!(
                        "publishing to {}: timed out after {timeout:?}",
                        sink.describe()
                    )),
                },
            )
        }))
        .await;
        let mut successes = Vec::new();
        for (item, result) in items.iter_mut().zip(published) {
            match result {
                Some(Ok(())) => {
                    if let Some(s) = self.success_of(item) {
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
        self.record_failures(&items).await;
    }

    /// Parses the stored spec and builds its sink.
    fn prepare(&self, c: &Claimed) -> Result<(Spec, Arc<dyn Sink>), String> {
        let spec = match c.kind.as_str() {
            kind::CERTIFICATE => serde_json::from_value(c.spec.clone()).map(Spec::Certificate),
            kind::SERVICE_ACCOUNT_TOKEN => serde_json::from_value(c.spec.clone()).map(Spec::Token),
            other => {
                return Err(format!(
                    "rekey does not rotate credentials of kind `{other}`"
                ));
            }
        }
        .map_err(|e| format!("stored spec does not parse: {e}"))?;
        let sink = sink::build(spec.sink(), &self.deps.sinks).map_err(|e| e.to_string())?;
        Ok((spec, sink))
    }

    /// Asks the sink which version it holds. If it is one of the pending
    /// versions (the crash came after publishing), that version is committed
    /// and no new rotation is needed; otherwise the pending versions never
    /// reached consumers and are failed.
    async fn reconcile(&self, item: &mut Item) -> Result<Option<Success>, String> {
        let sink = item.sink.clone().ok_or("no sink")?;
        let pending = self
            .deps
            .store
            .pending_versions(item.claimed.id)
            .await
            .map_err(|e| e.to_string())?;
        let published = sink
            .published_version()
            .await
            .map_err(|e| format!("reading {}: {e}", sink.describe()))?;
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
                    success = self.success_of(item);
                }
                _ => abandon.push(v.id),
            }
        }
        if !abandon.is_empty() {
            self.deps
                .store
                .abandon_versions(item.claimed.id, item.claimed.lease_epoch, &abandon)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(success)
    }

    /// Issues new material for an item with an open attempt.
    async fn issue(&self, item: &Item, now: DateTime<Utc>) -> Option<Result<Issued, String>> {
        if item.failure.is_some() || item.issued.is_some() || item.done {
            return None;
        }
        let (version_id, credential_id) = (item.claimed.reserved_version, item.claimed.id);
        let spec = item.spec.as_ref()?;
        Some(match spec {
            Spec::Certificate(c) => {
                let Some(ca) = self.deps.ca.clone() else {
                    return Some(Err("no [issuer] CA is configured".into()));
                };
                let c = c.clone();
                match tokio::task::spawn_blocking(move || ca.issue(&c, now)).await {
                    Ok(Ok(cert)) => Ok(Issued {
                        facts: VersionFacts {
                            version_id,
                            credential_id,
                            fingerprint: cert.fingerprint,
                            serial: Some(cert.serial),
                            not_before: cert.not_before,
                            not_after: cert.not_after,
                            details: serde_json::json!({}),
                        },
                        material: Some(Material::Certificate {
                            chain_pem: format!("{}{}", cert.cert_pem, cert.ca_pem),
                            key_pem: cert.key_pem,
                            ca_pem: cert.ca_pem,
                        }),
                    }),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("issuing thread failed: {e}")),
                }
            }
            Spec::Token(t) => match &self.deps.tokens {
                None => Err(
                    "service-account tokens need a Kubernetes client ([kubernetes] or in-cluster)"
                        .into(),
                ),
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
                    Err(e) => Err(e),
                },
            },
        })
    }

    fn success_of(&self, item: &Item) -> Option<Success> {
        let (issued, attempt, spec) = (item.issued.as_ref()?, item.attempt?, item.spec.as_ref()?);
        let facts = &issued.facts;
        let sample = schedule::jitter_sample(&item.claimed.name, attempt.version_id);
        let issued_at = match spec {
            Spec::Certificate(_) => {
                facts.not_before + crate::issue::backdate(facts.not_after - facts.not_before)
            }
            Spec::Token(_) => facts.not_before,
        };
        let due = schedule::next_due(
            &spec.policy(),
            issued_at,
            facts.not_before,
            facts.not_after,
            self.jitter,
            sample,
        );
        let floor = Utc::now() + TimeDelta::seconds(1);
        let retire_previous_after = match spec {
            Spec::Token(t) if t.bound => {
                Some(Utc::now() + t.grace.map(|g| g.chrono()).unwrap_or(TimeDelta::minutes(5)))
            }
            _ => None,
        };
        Some(Success {
            credential_id: item.claimed.id,
            lease_epoch: item.claimed.lease_epoch,
            rotation_id: attempt.rotation_id,
            version_id: attempt.version_id,
            not_before: facts.not_before,
            not_after: facts.not_after,
            next_rotation_at: due.at.max(floor),
            next_reason: due.reason.as_str(),
            retire_previous_after,
        })
    }

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
                        not_after: Some(s.not_after),
                        next_rotation_at: Some(s.next_rotation_at),
                        error: None,
                        duration_ms: elapsed.as_millis() as u64,
                    });
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
                for s in &successes {
                    if let Some(item) = items.iter_mut().find(|i| i.claimed.id == s.credential_id) {
                        item.issued = None;
                        item.failure = Some((format!("database: {e}"), true));
                    }
                }
            }
        }
    }

    async fn record_failures(&self, items: &[Item]) {
        let now = Utc::now();
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
            let sample: f64 = rand::random();
            let delay = schedule::retry_delay(
                item.claimed.failures.max(0) as u32,
                now,
                item.claimed.not_after,
                sample,
            );
            let retry_at = now + delay;
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

/// A replica id unique to this process: host name and process id.
pub fn default_replica_id() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "rekey".into());
    format!("{host}-{}", std::process::id())
}
