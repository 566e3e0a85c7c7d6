//! Errors starting or running the admin API and metrics listeners.

use std::{net::SocketAddr, path::PathBuf};

/// Errors starting or running the API servers.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A TLS file is missing or unusable.
    #[error("api.{field}: {}: {message}", path.display())]
    TlsFile {
        /// The config field.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("api: TLS configuration: {0}")]
    Tls(String),
    /// A required field is missing.
    #[error("api.{0}: required unless insecure_plain_http = true")]
    Missing(&'static str),
    /// The listen address is not an address.
    #[error("{field}: `{value}` is not an address like 0.0.0.0:8443")]
    BadListen {
        /// `api.listen` or `metrics.listen`.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// Binding failed (port in use, permission).
    #[error("cannot listen on {addr} ({field}): {source}")]
    Bind {
        /// `api.listen` or `metrics.listen`.
        field: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Token review is on but no Kubernetes client was given.
    #[error(
        "api.token_review = true needs a Kubernetes client (in-cluster config or [kubernetes].kubeconfig)"
    )]
    NoKubeClient,
    /// A server task failed.
    #[error("admin API server: {0}")]
    Server(String),
}

impl ApiError {
    /// True when the configuration (not the environment) is at fault: exit code 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::TlsFile { .. }
                | Self::Tls(_)
                | Self::Missing(_)
                | Self::BadListen { .. }
                | Self::NoKubeClient
        )
    }
}
