//! Bootstrap tokens: discovery, join tracking, revocation.
//!
//! ```text
//!  watch Secrets (kube-system, type=bootstrap.kubernetes.io/token) ─┐
//!  watch CSRs (signer kube-apiserver-client-kubelet) ── record join ├─► evaluate(id) ─ decide (pure)
//!  watch Nodes ── mark joins of registered nodes ───────────────────┤        │
//!  sweep: max_age, expiry, unfinished revocations, failed events ───┘        ▼
//!                                      claim (Postgres) → delete Secret (uid precondition)
//!                                      → mark revoked + audit event (one transaction)
//! ```
//!
//! A join is recorded the moment its CSR is seen (the controller-manager
//! deletes approved CSRs after an hour); a deleted CSR still counts with the
//! last state it had. Revocation is claimed in Postgres first, so a token is
//! revoked (its Secret deleted, its audit event written) once, whoever asks.

pub mod admin;
pub mod db;
pub mod model;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    certificates::v1::CertificateSigningRequest,
    core::v1::{Node, Secret},
};
use kube::{
    api::{Api, DeleteParams, PartialObjectMeta, PostParams, Preconditions},
    runtime::{WatchStreamExt, watcher},
};
use tokio_util::sync::CancellationToken;

use self::model::{Decision, JoinFacts, Policy, TokenFacts};
use super::{
    error::{K8sError, call},
    settings::BootstrapTokensConfig,
};
use crate::{
    schedule::jobs::every,
    store::{
        Store,
        audit::{NewEvent, Outcome, Ticket},
    },
};

/// How often the watcher sweeps: max_age and expiry, unfinished revocations,
/// events that failed to record. Short enough that a token past `max_age`
/// goes within seconds; each sweep is a handful of indexed queries.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// The actor in audit records written by the watcher.
pub const ACTOR: &str = "rekey/bootstrap-watcher";

/// How a revocation request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// This call revoked it.
    Revoked,
    /// It was not live (already revoked, expired, deleted, or being revoked): its state.
    NotLive(String),
    /// No such token in Postgres or the cluster.
    Unknown,
}

fn kube_system_secrets(client: &kube::Client) -> Api<Secret> {
    Api::namespaced(client.clone(), model::NAMESPACE)
}

/// Deletes a token's Secret, if it is still the one with `uid`. `false`:
/// gone already, or replaced by another Secret (uid precondition), so this
/// token no longer exists.
async fn delete_secret(
    client: &kube::Client,
    id: &str,
    uid: Option<&str>,
) -> Result<bool, K8sError> {
    let name = format!("{}{id}", model::SECRET_PREFIX);
    let dp = DeleteParams {
        preconditions: uid.map(|u| Preconditions {
            uid: Some(u.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match call(
        format!("delete secret kube-system/{name}"),
        kube_system_secrets(client).delete(&name, &dp),
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes a claimed token's Secret and records the revocation. Safe to
/// repeat: a missing Secret counts as deleted, and only one caller records it.
pub async fn finish(
    store: &Store,
    client: &kube::Client,
    id: &str,
    uid: Option<&str>,
    actor: &str,
    audit: Option<&Ticket>,
) -> Result<bool, K8sError> {
    crate::crash::point("bootstrap-after-claim");
    delete_secret(client, id, uid).await?;
    crate::crash::point("bootstrap-after-delete");
    let done = db::finish_revocation(store, id, actor, audit).await?;
    if done {
        tracing::info!(token = id, "bootstrap token revoked");
        metrics::counter!("rekey_bootstrap_tokens_revoked_total").increment(1);
    }
    Ok(done)
}

/// Revokes a token now (`reason` e.g. `joined`, `max-age`, `manual`),
/// unless it is not live. A token the watcher has not recorded yet is read
/// from the cluster first.
pub async fn revoke(
    store: &Store,
    client: &kube::Client,
    config: &BootstrapTokensConfig,
    id: &str,
    reason: &str,
    node: Option<&str>,
    actor: &str,
) -> Result<RevokeOutcome, K8sError> {
    revoke_audited(store, client, config, id, reason, node, actor, None).await
}

/// [`revoke`], for a caller with an audit event of its own (an API
/// request): it is the revocation's event, committed with the `revoked` row.
#[allow(clippy::too_many_arguments)]
pub async fn revoke_audited(
    store: &Store,
    client: &kube::Client,
    config: &BootstrapTokensConfig,
    id: &str,
    reason: &str,
    node: Option<&str>,
    actor: &str,
    audit: Option<&Ticket>,
) -> Result<RevokeOutcome, K8sError> {
    if db::token(store, id).await?.is_none() {
        let name = format!("{}{id}", model::SECRET_PREFIX);
        match call(
            format!("get secret kube-system/{name}"),
            kube_system_secrets(client).get_opt(&name),
        )
        .await?
        {
            Some(s) => {
                let info = model::token_from_secret(&s).map_err(K8sError::Invalid)?;
                let policy = model::effective_policy(info.policy_label, &info.id, config);
                db::upsert_token(store, &info, policy).await?;
            }
            None => return Ok(RevokeOutcome::Unknown),
        }
    }
    match db::claim_revocation(store, id, reason, node).await? {
        Some(uid) => {
            finish(store, client, id, uid.as_deref(), actor, audit).await?;
            Ok(RevokeOutcome::Revoked)
        }
        None => {
            let state = db::token(store, id)
                .await?
                .map(|t| t.state)
                .unwrap_or_default();
            Ok(RevokeOutcome::NotLive(state))
        }
    }
}

/// Writes a new token's Secret as kubeadm does. The caller prints the
/// token once this returns, then [`record_created`]s it.
pub async fn create(
    client: &kube::Client,
    id: &str,
    secret: &secrecy::SecretString,
    spec: &model::NewTokenSpec,
    now: DateTime<Utc>,
) -> Result<Secret, K8sError> {
    let obj = model::kubeadm_secret(id, secret, spec, now);
    call(
        format!("create secret kube-system/{}{id}", model::SECRET_PREFIX),
        kube_system_secrets(client).create(&PostParams::default(), &obj),
    )
    .await
}

/// Records a token made by [`create`] (the watcher would find it too) and
/// audits its creation.
pub async fn record_created(
    store: &Store,
    config: &BootstrapTokensConfig,
    created: &Secret,
    actor: &str,
) -> Result<(), K8sError> {
    let info = model::token_from_secret(created).map_err(K8sError::Invalid)?;
    let policy = model::effective_policy(info.policy_label, &info.id, config);
    db::upsert_token(store, &info, policy).await?;
    let mut ev = NewEvent::new(
        actor,
        "bootstrap_token.create",
        format!("bootstrap-token/{}", info.id),
        Outcome::Success,
    );
    ev.details = serde_json::json!({"expiration": info.expiration, "groups": info.groups, "usages": info.usages, "policy": policy.as_str()});
    store.audit(ev).await?;
    Ok(())
}

/// The watcher's state between events.
struct Watcher {
    store: Store,
    client: kube::Client,
    config: BootstrapTokensConfig,
    /// Nodes known to exist.
    nodes: HashSet<String>,
    /// Nodes seen during a relist (replaces `nodes` at InitDone).
    nodes_relist: Option<HashSet<String>>,
    /// Token Secrets seen during a relist: id → uid.
    secrets_relist: Option<HashMap<String, Option<String>>>,
    /// When the current relist of Secrets began.
    secrets_relist_began: DateTime<Utc>,
    /// Events that failed to record, retried at each sweep.
    retry_secrets: HashMap<String, Secret>,
    retry_csrs: HashMap<String, (CertificateSigningRequest, bool)>,
}

impl Watcher {
    fn max_age(&self) -> Option<chrono::TimeDelta> {
        self.config.max_age.map(|d| d.chrono())
    }

    async fn evaluate(&self, id: &str, now: DateTime<Utc>) -> Result<(), K8sError> {
        let Some(t) = db::token(&self.store, id).await? else {
            return Ok(());
        };
        let joins = db::joins(&self.store, id).await?;
        let facts = TokenFacts {
            state: t.state.clone(),
            policy: Policy::parse(&t.policy).unwrap_or(Policy::RevokeAfterJoin),
            created: t.created,
            expiration: t.expiration,
        };
        let jf: Vec<JoinFacts> = joins
            .iter()
            .map(|j| JoinFacts {
                node_name: j.node_name.clone(),
                approved: j.approved_at.is_some(),
                issued: j.issued_at.is_some(),
                registered: j.node_registered_at.is_some(),
            })
            .collect();
        match model::decide(&facts, &jf, self.max_age(), now) {
            Decision::Keep => Ok(()),
            Decision::MarkUsed => Ok(db::mark_used(&self.store, id).await?),
            Decision::Revoke { reason, node } => {
                if let Some(uid) =
                    db::claim_revocation(&self.store, id, reason, node.as_deref()).await?
                {
                    finish(&self.store, &self.client, id, uid.as_deref(), ACTOR, None).await?;
                }
                Ok(())
            }
        }
    }

    async fn on_secret(&mut self, s: &Secret, now: DateTime<Utc>) -> Result<(), K8sError> {
        let info = match model::token_from_secret(s) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed bootstrap-token secret");
                return Ok(());
            }
        };
        if let Some(seen) = &mut self.secrets_relist {
            seen.insert(info.id.clone(), info.secret_uid.clone());
        }
        let policy = model::effective_policy(info.policy_label, &info.id, &self.config);
        if db::upsert_token(&self.store, &info, policy).await? {
            let mut ev = NewEvent::new(
                ACTOR,
                "bootstrap_token.discover",
                format!("bootstrap-token/{}", info.id),
                Outcome::Success,
            );
            ev.details =
                serde_json::json!({"policy": policy.as_str(), "expiration": info.expiration});
            self.store.audit(ev).await?;
        }
        self.evaluate(&info.id, now).await
    }

    /// Secrets of tokens revoked before this relist began that are back in
    /// the cluster with the same uid: a restore of etcd (or of the Secrets)
    /// brought them back, and the token authenticates again. Each is deleted
    /// again, with an audit event. (A Secret with a new uid is a new token:
    /// [`db::upsert_token`] makes it active.)
    async fn revoke_reappeared(
        &self,
        seen: &HashMap<String, Option<String>>,
    ) -> Result<(), K8sError> {
        for (id, uid) in seen {
            let Some(t) = db::token(&self.store, id).await? else {
                continue;
            };
            let revoked_before = t
                .revoked_at
                .is_some_and(|at| at < self.secrets_relist_began);
            if t.state != "revoked" || !revoked_before {
                continue;
            }
            if !delete_secret(&self.client, id, uid.as_deref()).await? {
                continue;
            }
            tracing::warn!(
                token = %id,
                "the Secret of a revoked bootstrap token reappeared (an etcd restore?): deleted it again"
            );
            let mut ev = NewEvent::new(
                ACTOR,
                "bootstrap_token.revoke",
                format!("bootstrap-token/{id}"),
                Outcome::Success,
            );
            ev.reason = Some("reappeared after revocation".into());
            ev.details = serde_json::json!({"reason": "reappeared", "revoked_at": t.revoked_at});
            self.store.audit(ev).await?;
        }
        Ok(())
    }

    async fn on_secret_deleted(&mut self, s: &Secret, now: DateTime<Utc>) -> Result<(), K8sError> {
        if let Ok(info) = model::token_from_secret(s) {
            db::mark_gone(&self.store, &info.id, info.secret_uid.as_deref(), now).await?;
        }
        Ok(())
    }

    async fn on_csr(
        &mut self,
        csr: &CertificateSigningRequest,
        deleted: bool,
        now: DateTime<Utc>,
    ) -> Result<(), K8sError> {
        let join = match model::join_from_csr(csr) {
            None => return Ok(()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "ignoring a kubelet CSR rekey cannot read");
                return Ok(());
            }
            Some(Ok(j)) => j,
        };
        let registered = self.nodes.contains(&join.node_name);
        if db::record_join(&self.store, &join, registered, deleted).await? {
            crate::crash::point("bootstrap-after-join");
            let mut ev = NewEvent::new(
                ACTOR,
                "bootstrap_token.join",
                format!("bootstrap-token/{}", join.token_id),
                Outcome::Success,
            );
            ev.details = serde_json::json!({"csr": join.csr_name, "node": join.node_name});
            self.store.audit(ev).await?;
            tracing::info!(token = %join.token_id, node = %join.node_name, csr = %join.csr_name, "node join recorded");
        }
        self.evaluate(&join.token_id, now).await
    }

    async fn on_nodes(&mut self, names: Vec<String>, now: DateTime<Utc>) -> Result<(), K8sError> {
        for n in &names {
            self.nodes.insert(n.clone());
        }
        let mut ids = db::nodes_registered(&self.store, &names).await?;
        ids.sort();
        ids.dedup();
        for id in ids {
            self.evaluate(&id, now).await?;
        }
        Ok(())
    }

    /// One event of the Secrets watch.
    async fn on_secret_event(
        &mut self,
        ev: Result<watcher::Event<Secret>, watcher::Error>,
        now: DateTime<Utc>,
    ) {
        match ev {
            Ok(watcher::Event::Init) => {
                self.secrets_relist = Some(HashMap::new());
                self.secrets_relist_began = now;
            }
            Ok(watcher::Event::InitApply(s) | watcher::Event::Apply(s)) => {
                if let Err(e) = self.on_secret(&s, now).await {
                    tracing::warn!(error = %e, "recording a bootstrap token failed; will retry");
                    if let Ok(info) = model::token_from_secret(&s) {
                        self.retry_secrets.insert(info.id, s);
                    }
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                if let Err(e) = self.on_secret_deleted(&s, now).await {
                    tracing::warn!(error = %e, "recording a deleted bootstrap token failed");
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = self.secrets_relist.take() {
                    // Tokens whose Secret vanished while rekey was not watching.
                    match db::ids_in(&self.store, &["active", "used"]).await {
                        Ok(ids) => {
                            for id in ids.into_iter().filter(|id| !seen.contains_key(id)) {
                                if let Err(e) = db::mark_gone(&self.store, &id, None, now).await {
                                    tracing::warn!(error = %e, token = %id, "marking a vanished token failed");
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "listing live tokens failed"),
                    }
                    if let Err(e) = self.revoke_reappeared(&seen).await {
                        tracing::warn!(error = %e, "deleting reappeared revoked tokens failed; the next relist retries");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching bootstrap-token secrets"),
        }
    }

    /// One event of the kubelet CSR watch.
    async fn on_csr_event(
        &mut self,
        ev: Result<watcher::Event<CertificateSigningRequest>, watcher::Error>,
        now: DateTime<Utc>,
    ) {
        let (csr, deleted) = match ev {
            Ok(watcher::Event::InitApply(c) | watcher::Event::Apply(c)) => (c, false),
            Ok(watcher::Event::Delete(c)) => (c, true),
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "watching certificate signing requests");
                return;
            }
        };
        if let Err(e) = self.on_csr(&csr, deleted, now).await {
            tracing::warn!(error = %e, "recording a join failed; will retry");
            let key = csr.metadata.uid.clone().unwrap_or_default();
            self.retry_csrs.insert(key, (csr, deleted));
        }
    }

    /// One event of the Node watch.
    async fn on_node_event(
        &mut self,
        ev: Result<watcher::Event<PartialObjectMeta<Node>>, watcher::Error>,
        now: DateTime<Utc>,
    ) {
        match ev {
            Ok(watcher::Event::Init) => self.nodes_relist = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(n)) => {
                if let (Some(set), Some(name)) = (&mut self.nodes_relist, n.metadata.name) {
                    set.insert(name);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(set) = self.nodes_relist.take() {
                    self.nodes = HashSet::new();
                    if let Err(e) = self.on_nodes(set.into_iter().collect(), now).await {
                        tracing::warn!(error = %e, "recording registered nodes failed; the sweep retries");
                    }
                }
            }
            Ok(watcher::Event::Apply(n)) => {
                if let Some(name) = n.metadata.name
                    && let Err(e) = self.on_nodes(vec![name], now).await
                {
                    tracing::warn!(error = %e, "recording a registered node failed; the sweep retries");
                }
            }
            Ok(watcher::Event::Delete(n)) => {
                if let Some(name) = n.metadata.name {
                    self.nodes.remove(&name);
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching nodes"),
        }
    }

    async fn sweep(&mut self, now: DateTime<Utc>) -> Result<(), K8sError> {
        for (id, s) in std::mem::take(&mut self.retry_secrets) {
            if let Err(e) = self.on_secret(&s, now).await {
                tracing::warn!(error = %e, token = %id, "recording a bootstrap token failed again");
                self.retry_secrets.insert(id, s);
            }
        }
        for (uid, (csr, deleted)) in std::mem::take(&mut self.retry_csrs) {
            if let Err(e) = self.on_csr(&csr, deleted, now).await {
                tracing::warn!(error = %e, "recording a join failed again");
                self.retry_csrs.insert(uid, (csr, deleted));
            }
        }
        let nodes: Vec<String> = self.nodes.iter().cloned().collect();
        self.on_nodes(nodes, now).await?;
        for id in db::ids_in(&self.store, &["revoking"]).await? {
            if let Some(t) = db::token(&self.store, &id).await? {
                finish(
                    &self.store,
                    &self.client,
                    &id,
                    t.secret_uid.as_deref(),
                    ACTOR,
                    None,
                )
                .await?;
            }
        }
        let cutoff = self.max_age().map(|a| now - a);
        for id in db::time_due_ids(&self.store, now, cutoff).await? {
            self.evaluate(&id, now).await?;
        }
        Ok(())
    }
}

/// Runs the bootstrap-token watcher until `shutdown` (run it on one replica:
/// the lead replica under leader election). API and database errors are
/// logged and retried; it returns only on shutdown.
pub async fn run(
    store: Store,
    client: kube::Client,
    config: BootstrapTokensConfig,
    shutdown: CancellationToken,
) -> Result<(), K8sError> {
    let mut secrets: BoxStream<'static, Result<watcher::Event<Secret>, watcher::Error>> = watcher(
        kube_system_secrets(&client),
        watcher::Config::default().fields(&format!("type={}", model::SECRET_TYPE)),
    )
    .default_backoff()
    .boxed();
    let mut csrs: BoxStream<
        'static,
        Result<watcher::Event<CertificateSigningRequest>, watcher::Error>,
    > = watcher(
        Api::<CertificateSigningRequest>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.signerName={}", model::KUBELET_SIGNER)),
    )
    .default_backoff()
    .boxed();
    let mut nodes: BoxStream<
        'static,
        Result<watcher::Event<PartialObjectMeta<Node>>, watcher::Error>,
    > = watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    let w = Watcher {
        store,
        client,
        config,
        nodes: HashSet::new(),
        nodes_relist: None,
        secrets_relist: None,
        secrets_relist_began: Utc::now(),
        retry_secrets: HashMap::new(),
        retry_csrs: HashMap::new(),
    };
    tracing::info!("bootstrap-token watcher started");
    let w = tokio::sync::Mutex::new(w);
    let events = async {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(ev) = secrets.next() => w.lock().await.on_secret_event(ev, Utc::now()).await,
                Some(ev) = csrs.next() => w.lock().await.on_csr_event(ev, Utc::now()).await,
                Some(ev) = nodes.next() => w.lock().await.on_node_event(ev, Utc::now()).await,
            }
        }
    };
    let sweeps = every(SWEEP_INTERVAL, &shutdown, |_| {
        let w = &w;
        async move {
            if let Err(e) = w.lock().await.sweep(Utc::now()).await {
                tracing::warn!(error = %e, "bootstrap-token sweep failed; retrying at the next one");
            }
        }
    });
    tokio::join!(events, sweeps);
    tracing::info!("bootstrap-token watcher stopped");
    Ok(())
}
