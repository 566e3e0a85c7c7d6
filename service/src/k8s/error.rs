//! Errors talking to the Kubernetes API, and [`call`], which every request
//! goes through: it bounds the request in time and classifies its failure
//! (whether retrying may help).

use std::{future::Future, time::Duration};

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
