//! What the API's handlers are given by the wiring: the store, the engine's
//! liveness, the metrics renderer, the Kubernetes client and the
//! configuration of the jobs some endpoints run.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::store::Store;

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The inventory.
    pub store: Store,
    /// True while the rotation engine runs (for `/readyz`).
    pub engine_alive: watch::Receiver<bool>,
    /// Renders the process's metrics (see [`crate::telemetry::install_metrics_recorder`]).
    pub metrics: PrometheusHandle,
    /// The Kubernetes client: TokenReview/SubjectAccessReview (needed when
    /// `token_review = true`) and bootstrap-token revocation.
    pub kube: Option<kube::Client>,
    /// Capabilities the API exposes when their modules provide them.
    pub capabilities: Arc<Capabilities>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("kube", &self.kube.is_some())
            .finish_non_exhaustive()
    }
}

/// Configuration of the jobs some endpoints run (etcd verification, backups).
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// `[etcd]`, for `POST /v1/etcd/verify`.
    pub etcd: Option<crate::etcd::EtcdConfig>,
    /// `[backup]`, for `GET`/`POST /v1/backups`.
    pub backup: Option<crate::backup::BackupConfig>,
    /// `[bootstrap_tokens]`, for `POST /v1/bootstrap-tokens/{id}/revoke`.
    pub bootstrap_tokens: Option<crate::k8s::BootstrapTokensConfig>,
    /// The issuers (following their CA rotations), for `/v1/issuers`.
    pub issuers: Option<Arc<crate::rotate::ca_rotation::follow::Follower>>,
}

impl ApiState {
    /// State for `store` with the engine reported as running by `engine_alive`.
    pub fn new(store: Store, engine_alive: watch::Receiver<bool>) -> Self {
        Self {
            store,
            engine_alive,
            metrics: crate::telemetry::install_metrics_recorder(),
            kube: None,
            capabilities: Arc::default(),
        }
    }
}
