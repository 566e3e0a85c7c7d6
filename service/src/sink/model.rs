//! What every sink shares: the material of a version, the publication
//! request, the [`Sink`] trait, its errors, and what sinks need from the
//! running service.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::issue::TrustBundle;

/// The material of one credential version.
#[derive(Clone)]
pub enum Material {
    /// A certificate and its key.
    Certificate {
        /// Leaf certificate, then the CA chain (PEM): the content of `tls.crt`.
        chain_pem: String,
        /// Private key (PEM): `tls.key`.
        key_pem: SecretString,
        /// The issuer's trust bundle (PEM): `ca.crt`.
        ca_pem: String,
    },
    /// A bearer token.
    Token {
        /// The token: `token`.
        token: SecretString,
    },
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Certificate { .. } => f.write_str("Material::Certificate([redacted])"),
            Self::Token { .. } => f.write_str("Material::Token([redacted])"),
        }
    }
}

/// One version to publish.
#[derive(Debug)]
pub struct Publication<'a> {
    /// The credential's name.
    pub credential: &'a str,
    /// The version id (`credential_versions.id`), recorded with the material.
    pub version: i64,
    /// The version's number among its credential's (1, 2, 3, ...), shown
    /// beside it where people read it (a Secret's `rekey.io/version-number`).
    pub number: i64,
    /// When the material expires.
    pub not_after: DateTime<Utc>,
    /// What to publish.
    pub material: &'a Material,
    /// Take over an existing object rekey did not create.
    pub adopt: bool,
}

/// A new trust bundle for what a sink holds: the same certificate and key,
/// a new `ca.crt` (no re-issuing, no new version).
#[derive(Debug)]
pub struct BundleUpdate<'a> {
    /// The credential's name.
    pub credential: &'a str,
    /// The version the sink must hold (the credential's current version):
    /// a sink holding anything else is left alone.
    pub version: i64,
    /// The bundle to publish.
    pub bundle: &'a TrustBundle,
}

/// What [`Sink::publish_bundle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleOutcome {
    /// The new bundle was written, durably, in one atomic change.
    Published,
    /// The sink already held this bundle: nothing was written.
    Unchanged,
    /// The sink holds another version (`found`), or nothing: nothing was
    /// written (a rotation got there first, or the sink was lost).
    NotCurrent {
        /// The version the sink holds.
        found: Option<i64>,
    },
    /// The sink holds no trust bundle (a token): nothing to do.
    NotApplicable,
}

/// Why publishing or reading back failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The target exists and rekey does not own it.
    #[error(
        "refusing to overwrite {0}: it was not created by rekey (set adopt = true on the credential to take it over)"
    )]
    NotOwned(String),
    /// The sink's kind cannot be used here (e.g. no Kubernetes client).
    #[error("{0}")]
    Unavailable(String),
    /// A remote store (the Kubernetes API) failed.
    #[error("{target}: {message}")]
    Remote {
        /// What was being written, e.g. `secret default/web-tls`.
        target: String,
        /// What went wrong.
        message: String,
        /// Worth retrying (timeouts, 5xx, conflicts).
        retryable: bool,
    },
}

impl SinkError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Io { .. } => true,
            Self::NotOwned(_) | Self::Unavailable(_) => false,
            Self::Remote { retryable, .. } => *retryable,
        }
    }
}

/// A place credential versions are published to.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Publishes a version atomically; returns once it is durable.
    async fn publish(&self, publication: &Publication<'_>) -> Result<(), SinkError>;

    /// The version currently published there, if rekey published one.
    async fn published_version(&self) -> Result<Option<i64>, SinkError>;

    /// Republishes what the sink holds with a new trust bundle (`ca.crt`),
    /// atomically, keeping the certificate, the key and the version marker;
    /// only if the sink holds `update.version`.
    async fn publish_bundle(&self, update: &BundleUpdate<'_>) -> Result<BundleOutcome, SinkError>;

    /// The fingerprint ([`crate::issue::bundle`]) of the trust bundle the
    /// sink holds, `None` when it holds none (nothing published, a token).
    async fn published_bundle(&self) -> Result<Option<String>, SinkError>;

    /// A short description for logs, e.g. `file:/var/lib/rekey/web`.
    fn describe(&self) -> String;
}

/// What sinks may need from the running service.
#[derive(Clone, Default)]
pub struct SinkContext {
    /// A Kubernetes client, when one is configured.
    pub kube: Option<kube::Client>,
}

impl std::fmt::Debug for SinkContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkContext")
            .field("kube", &self.kube.is_some())
            .finish()
    }
}
