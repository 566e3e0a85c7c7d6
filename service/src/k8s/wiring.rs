//! How the running service uses this module: the client, the engine's token
//! issuer and consumer reloader (implementations of `rotate`'s traits), and
//! the long-running jobs (bootstrap-token watcher, legacy-token discovery).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{
    bootstrap,
    ca_secret::SecretCaStore,
    connect::{cluster_ca, config_for},
    csr_signer::KubeCsrSigner,
    error::K8sError,
    legacy,
    reload::{self, Reloader},
    settings::{BootstrapTokensConfig, KubernetesConfig},
    tokens,
};
use crate::{
    issue::{CaStore, CsrSigner, SecretRef},
    rotate::tokens::{IssuedToken, Reload, ReloadError, TokenError, TokenIssuer, TokenSpec},
    store::Store,
};

/// How often legacy long-lived token Secrets are looked for.
pub const LEGACY_INTERVAL: Duration = Duration::from_secs(300);

/// The Kubernetes side of a running service.
#[derive(Clone)]
pub struct Kube {
    /// The client every part shares.
    pub client: kube::Client,
    reloader: Reloader,
    cluster_ca: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").finish_non_exhaustive()
    }
}

impl Kube {
    /// Builds the client from `[kubernetes]` when given, else `KUBECONFIG` /
    /// `~/.kube/config` / in-cluster, and the process's one reloader.
    pub async fn connect(config: Option<&KubernetesConfig>) -> Result<Self, K8sError> {
        let kube_config = config_for(config).await?;
        let cluster_ca = cluster_ca(&kube_config);
        let client =
            kube::Client::try_from(kube_config).map_err(|e| K8sError::Config(e.to_string()))?;
        let reloader = Reloader::new(
            client.clone(),
            config
                .and_then(|k| k.reload_per_minute)
                .unwrap_or(reload::DEFAULT_PER_MINUTE),
            config
                .and_then(|k| k.reload_burst)
                .unwrap_or(reload::DEFAULT_BURST),
        );
        Ok(Self {
            client,
            reloader,
            cluster_ca,
        })
    }

    /// The CA certificates (DER) the client trusts for the API server (see
    /// [`super::connect::cluster_ca`]): the default trust bundle of a
    /// `kubernetes-csr` issuer without `ca_bundle`.
    pub fn cluster_ca(&self) -> &[Vec<u8>] {
        &self.cluster_ca
    }

    /// Where a `ca` issuer's CA lives when it is a Secret.
    pub fn ca_store(&self, secret: &SecretRef) -> Arc<dyn CaStore> {
        Arc::new(SecretCaStore::new(self.client.clone(), secret.clone()))
    }

    /// The signer of a `kubernetes-csr` issuer.
    pub fn csr_signer(&self, signer_name: &str) -> Arc<dyn CsrSigner> {
        Arc::new(KubeCsrSigner::new(self.client.clone(), signer_name))
    }

    /// The bootstrap-token watcher, to run under leader election.
    pub async fn bootstrap_watcher(
        &self,
        store: Store,
        config: BootstrapTokensConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        bootstrap::run(store, self.client.clone(), config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    }

    /// Legacy-token discovery every [`LEGACY_INTERVAL`] until `shutdown`
    /// (every replica runs it: the writes are idempotent).
    pub async fn legacy_discovery(&self, store: Store, shutdown: CancellationToken) {
        legacy::run(store, self.client.clone(), LEGACY_INTERVAL, shutdown).await;
    }

    /// The engine's token issuer.
    pub fn token_issuer(&self) -> Arc<dyn TokenIssuer> {
        Arc::new(KubeTokens(self.client.clone()))
    }

    /// The engine's consumer reloader (one bucket for the process).
    pub fn reload(&self) -> Arc<dyn Reload> {
        Arc::new(KubeReload(self.reloader.clone()))
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
    ) -> Result<IssuedToken, TokenError> {
        tokens::issue(&self.0, spec, version, now)
            .await
            .map_err(TokenError::service)
    }

    async fn retire(
        &self,
        spec: &TokenSpec,
        details: &serde_json::Value,
    ) -> Result<(), TokenError> {
        tokens::retire(&self.0, spec, details)
            .await
            .map_err(TokenError::service)
    }
}

struct KubeReload(Reloader);

#[async_trait]
impl Reload for KubeReload {
    async fn restart(&self, targets: &[String]) -> Result<(), ReloadError> {
        self.0.restart(targets).await.map_err(ReloadError::service)
    }
}
