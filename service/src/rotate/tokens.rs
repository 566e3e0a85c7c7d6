//! What the engine needs from Kubernetes, as traits so the engine does not
//! depend on how tokens are requested or workloads restarted.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::config::TokenSpec;

/// A freshly requested token.
pub struct IssuedToken {
    /// The token.
    pub token: SecretString,
    /// Validity start.
    pub not_before: DateTime<Utc>,
    /// Expiry.
    pub not_after: DateTime<Utc>,
    /// sha256 of the token, hex.
    pub fingerprint: String,
    /// Non-secret details (e.g. the Secret the token is bound to).
    pub details: serde_json::Value,
}

/// Issues service-account tokens (TokenRequest).
#[async_trait]
pub trait TokenIssuer: Send + Sync {
    /// Requests a token for version `version` of `spec`.
    async fn issue(
        &self,
        spec: &TokenSpec,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, String>;

    /// Retires a superseded version (deletes its bound Secret).
    async fn retire(&self, spec: &TokenSpec, details: &serde_json::Value) -> Result<(), String>;
}

/// Restarts consumer workloads after a new version is published.
#[async_trait]
pub trait Reload: Send + Sync {
    /// Rolls each `kind/namespace/name` target.
    async fn restart(&self, targets: &[String]) -> Result<(), String>;
}
