//! Kubernetes: service-account tokens, bootstrap tokens, CSR/Node watch,
//! consumer reload, legacy-token discovery.
//!
//! Named `k8s` so that it never shadows the `kube` crate. Every call to the
//! API goes through [`call`], which bounds it in time and turns failures
//! into [`K8sError`]s that say whether retrying may help.
//!
//! ```text
//!   client() ── kubeconfig (--kubeconfig, KUBECONFIG, [kubernetes].kubeconfig) or in-cluster
//!      │
//!      ├─► tokens     TokenRequest (+ bound per-version Secret), retire
//!      ├─► reload     pod-template annotation patch, process-wide token bucket
//!      ├─► bootstrap  Secret/CSR/Node watches → decide (pure) → revoke → Postgres + audit
//!      ├─► legacy     long-lived service-account-token Secrets → credentials (no-expiry)
//!      └─► sink::kubernetes  Secret publish with resourceVersion concurrency
//! ```

pub mod bootstrap;
pub mod legacy;
pub mod reload;
pub mod tokens;
pub mod wiring;

use std::{future::Future, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

/// `[bootstrap_tokens]`: when bootstrap tokens are revoked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapTokensConfig {
    /// Revoke a token as soon as a node has joined with it (default true).
    #[serde(default = "yes")]
    pub revoke_after_join: bool,
    /// Revoke tokens older than this even if never used.
    pub max_age: Option<HumanDuration>,
    /// Token ids kept until their expiry whatever the default.
    #[serde(default)]
    pub keep_until_expiry: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for BootstrapTokensConfig {
    fn default() -> Self {
        Self {
            revoke_after_join: true,
            max_age: None,
            keep_until_expiry: Vec::new(),
        }
    }
}

impl BootstrapTokensConfig {
    /// Checks field values; errors are `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(age) = self.max_age
            && age.get().is_zero()
        {
            return Err(("max_age".into(), "must be more than zero".into()));
        }
        for (i, id) in self.keep_until_expiry.iter().enumerate() {
            if id.len() != 6
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err((
                    format!("keep_until_expiry[{i}]"),
                    format!("`{id}` is not a bootstrap token id ([a-z0-9]{{6}})"),
                ));
            }
        }
        Ok(())
    }
}

/// How long one API call may take before it counts as a (retryable) timeout.
/// The API server itself gives up on requests after 60 s; most answer in
/// milliseconds, so a quarter of that is generous without stalling rotations.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors talking to the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The kubeconfig (or in-cluster environment) cannot be used.
    #[error("Kubernetes configuration: {0}")]
    Config(String),
    /// The API answered with an error Status.
    #[error("{what}: {message} (HTTP {code} {reason})")]
    Api {
        /// What was being done, e.g. `create secret ci/deployer-token`.
        what: String,
        /// HTTP status.
        code: u16,
        /// Status reason (`NotFound`, `Conflict`, `Forbidden`, ...).
        reason: String,
        /// The server's message.
        message: String,
    },
    /// No answer in time.
    #[error("{what}: no answer from the Kubernetes API within {}s", .after.as_secs())]
    Timeout {
        /// What was being done.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The connection failed (API down, TLS, DNS).
    #[error("{what}: cannot reach the Kubernetes API: {message}")]
    Transport {
        /// What was being done.
        what: String,
        /// Why.
        message: String,
    },
    /// The cluster holds or returned something rekey cannot use.
    #[error("{0}")]
    Invalid(String),
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl K8sError {
    /// Whether retrying later may succeed: timeouts, transport errors, 5xx,
    /// 409 Conflict and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Api { code, .. } => *code >= 500 || *code == 409 || *code == 429,
            Self::Store(_) => true,
            Self::Config(_) | Self::Invalid(_) => false,
        }
    }

    /// The HTTP status, for API errors.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A 404.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// A 409 (stale resourceVersion or already exists).
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }

    /// Classifies a kube client error.
    pub fn from_kube(what: impl Into<String>, e: kube::Error) -> Self {
        let what = what.into();
        match e {
            kube::Error::Api(s) => Self::Api {
                what,
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            kube::Error::SerdeError(e) => Self::Invalid(format!("{what}: unexpected answer: {e}")),
            other => Self::Transport {
                what,
                message: crate::error::report(&anyhow::Error::new(other)),
            },
        }
    }
}

/// Runs one API call with [`REQUEST_TIMEOUT`], classifying its error.
pub async fn call<T>(
    what: impl Into<String>,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, K8sError> {
    let what = what.into();
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(K8sError::from_kube(what, e)),
        Err(_) => Err(K8sError::Timeout {
            what,
            after: REQUEST_TIMEOUT,
        }),
    }
}

/// Builds the client, as in production: from `kubeconfig` when given (the
/// `--kubeconfig` flag, `KUBECONFIG`, or `[kubernetes].kubeconfig`), else
/// from the standard inference (`KUBECONFIG`, `~/.kube/config`, in-cluster
/// service account).
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, K8sError> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| K8sError::Config(e.to_string()))?,
        None => kube::Config::infer().await.map_err(|e| {
            K8sError::Config(format!(
                "{e} (pass --kubeconfig, set KUBECONFIG or [kubernetes].kubeconfig, or run in a pod)"
            ))
        })?,
    };
    kube::Client::try_from(config).map_err(|e| K8sError::Config(e.to_string()))
}

/// The client for a loaded config: `[kubernetes]` when present, else inference.
pub async fn client_for(
    config: Option<&crate::config::KubernetesConfig>,
) -> Result<kube::Client, K8sError> {
    match config {
        Some(k) => client(k.kubeconfig.as_deref(), k.context.as_deref()).await,
        None => client(None, None).await,
    }
}

/// Converts an API timestamp.
pub fn to_chrono(
    t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// Converts to an API timestamp.
pub fn from_chrono(
    t: chrono::DateTime<chrono::Utc>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The annotation carrying the published version id.
pub const VERSION_ANNOTATION: &str = "rekey.io/version";
/// The annotation carrying the published version's expiry (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "rekey.io/not-after";
/// The annotation naming the credential a rekey-made object belongs to.
pub const CREDENTIAL_ANNOTATION: &str = "rekey.io/credential";
/// `app.kubernetes.io/managed-by` value on objects rekey creates.
pub const MANAGED_BY: &str = "rekey";
