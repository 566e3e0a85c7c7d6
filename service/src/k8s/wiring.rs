//! How the running service uses this module: the client (when the config
//! needs one), the engine's token issuer and consumer reloader, and the
//! long-running jobs (bootstrap-token watcher, legacy-token discovery).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{K8sError, bootstrap, legacy, reload::Reloader, tokens};
use crate::{
    config::{Config, SinkSpec, TokenSpec},
    rotate::{IssuedToken, Reload, TokenIssuer},
    store::Store,
};

/// How often legacy long-lived token Secrets are looked for.
pub const LEGACY_INTERVAL: Duration = Duration::from_secs(300);

/// Whether the config needs the Kubernetes API: `[kubernetes]`, a
/// kubernetes-secret sink, a `[[token]]`, consumers to reload, or
/// `[bootstrap_tokens]`.
pub fn needs_kubernetes(config: &Config) -> bool {
    config.kubernetes.is_some()
        || config.bootstrap_tokens.is_some()
        || !config.tokens.is_empty()
        || config
            .certificates
            .iter()
            .any(|c| matches!(c.sink, SinkSpec::KubernetesSecret { .. }) || !c.reload.is_empty())
}

/// The Kubernetes side of a running service.
#[derive(Clone)]
pub struct Kube {
    /// The client every part shares.
    pub client: kube::Client,
    reloader: Reloader,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").finish_non_exhaustive()
    }
}

impl Kube {
    /// Builds the client if the config needs one (`[kubernetes]`, else
    /// `KUBECONFIG` / `~/.kube/config` / in-cluster).
    pub async fn connect_if_needed(config: &Config) -> Result<Option<Self>, K8sError> {
        if !needs_kubernetes(config) {
            return Ok(None);
        }
        let client = super::client_for(config.kubernetes.as_ref()).await?;
        let k = config.kubernetes.as_ref();
        let reloader = Reloader::new(
            client.clone(),
            k.and_then(|k| k.reload_per_minute)
                .unwrap_or(super::reload::DEFAULT_PER_MINUTE),
            k.and_then(|k| k.reload_burst)
                .unwrap_or(super::reload::DEFAULT_BURST),
        );
        Ok(Some(Self { client, reloader }))
    }

    /// The engine's TokenRequest issuer.
    /// The bootstrap-token watcher, to run under leader election.
    pub async fn bootstrap_watcher(
        &self,
        store: Store,
        config: crate::k8s::BootstrapTokensConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        bootstrap::run(store, self.client.clone(), config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    }

    /// The engine's token issuer.
    pub fn token_issuer(&self) -> Arc<dyn TokenIssuer> {
        Arc::new(KubeTokens(self.client.clone()))
    }

    /// The engine's consumer reloader (one bucket for the process).
    pub fn reload(&self) -> Arc<dyn Reload> {
        Arc::new(KubeReload(self.reloader.clone()))
    }

    /// Spawns the bootstrap-token watcher (when `[bootstrap_tokens]` is
    /// present) and periodic legacy-token discovery onto `tasks`.
    /// Spawns the jobs every replica runs (legacy-token discovery). The
    /// bootstrap-token watcher runs on one replica at a time: see
    /// [`Kube::bootstrap_watcher`].
    pub fn spawn_jobs(
        &self,
        _config: &Config,
        store: &Store,
        shutdown: &CancellationToken,
        tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
    ) {
        let (store, client, shutdown) = (store.clone(), self.client.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                match legacy::discover(&store, &client).await {
                    Ok(n) => tracing::debug!(found = n, "legacy token discovery"),
                    Err(e) => tracing::warn!(error = %e, "legacy token discovery failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(LEGACY_INTERVAL) => {}
                }
            }
            ("legacy-token discovery", Ok(()))
        });
    }
}

struct KubeTokens(kube::Client);

#[async_trait]
impl TokenIssuer for KubeTokens {
    async fn issue(
        &self,
        spec: &TokenSpec,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, String> {
        let t = tokens::issue(&self.0, spec, version, now)
            .await
            .map_err(|e| e.to_string())?;
        Ok(IssuedToken {
            token: t.token,
            not_before: t.not_before,
            not_after: t.not_after,
            fingerprint: t.fingerprint,
            details: t.details,
        })
    }

    async fn retire(&self, spec: &TokenSpec, details: &serde_json::Value) -> Result<(), String> {
        tokens::retire(&self.0, spec, details)
            .await
            .map_err(|e| e.to_string())
    }
}

struct KubeReload(Reloader);

#[async_trait]
impl Reload for KubeReload {
    async fn restart(&self, targets: &[String]) -> Result<(), String> {
        self.0.restart(targets).await.map_err(|e| e.to_string())
    }
}
