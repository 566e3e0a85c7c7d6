//! Service-account tokens as the engine sees them: the `[[token]]` spec,
//! and what the engine needs from Kubernetes, as traits so the engine does
//! not depend on how tokens are requested or workloads restarted (`k8s`
//! implements them: `k8s` imports this module, never the reverse).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::{
    schedule::{RenewalPolicy, validate_renewal},
    sink::spec::{SinkSpec, validate_k8s_name, validate_reload},
    store::credentials::validate_name,
    units::HumanDuration,
};

/// A `[[token]]`: a service-account token from the TokenRequest API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Unique name, e.g. `sa-token/ci/deployer`.
    pub name: String,
    /// Namespace of the service account.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// Token audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `expirationSeconds` of each token (at least 10 minutes).
    pub lifetime: HumanDuration,
    /// Renew after this share of the lifetime (default 2/3).
    pub renew_fraction: Option<f64>,
    /// Renew at the latest this long before expiry.
    pub renew_before: Option<HumanDuration>,
    /// Optional cron schedule.
    pub schedule: Option<String>,
    /// Bind each token to a per-version Secret, so that deleting it revokes the token.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bound: bool,
    /// How long a superseded token stays valid for consumers to reload (bound tokens only).
    pub grace: Option<HumanDuration>,
    /// Where to publish.
    pub sink: SinkSpec,
    /// Overwrite a Secret that rekey did not create.
    #[serde(default, skip_serializing_if = "is_false")]
    pub adopt: bool,
    /// Workloads to roll after publishing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl TokenSpec {
    /// The renewal policy (assumes the spec was validated).
    pub fn policy(&self) -> RenewalPolicy {
        RenewalPolicy::new(
            self.lifetime,
            self.renew_fraction,
            self.renew_before,
            self.schedule.as_deref(),
        )
    }

    /// Checks field values; an error is `(field, message)`. `min_lifetime`
    /// is the token service's floor (`k8s::MIN_TOKEN_LIFETIME_SECS` for
    /// TokenRequest).
    pub fn validate(&self, min_lifetime: Duration) -> Result<(), (String, String)> {
        validate_name(&self.name).map_err(|m| ("name".to_string(), m))?;
        validate_k8s_name(&self.namespace).map_err(|m| ("namespace".to_string(), m))?;
        validate_k8s_name(&self.service_account).map_err(|m| ("service_account".to_string(), m))?;
        if self.lifetime.get() < min_lifetime {
            return Err((
                "lifetime".into(),
                format!(
                    "{} is below the TokenRequest minimum of {} (expirationSeconds >= {})",
                    self.lifetime,
                    HumanDuration(min_lifetime),
                    min_lifetime.as_secs()
                ),
            ));
        }
        validate_renewal(
            self.lifetime,
            self.renew_fraction,
            self.renew_before,
            self.schedule.as_deref(),
        )?;
        self.sink
            .validate()
            .map_err(|(f, m)| (format!("sink.{f}"), m))?;
        if matches!(self.sink, SinkSpec::Kubeconfig { .. }) {
            return Err((
                "sink.kind".into(),
                "a kubeconfig sink holds a client certificate: publish tokens to `file` or `kubernetes-secret`".into(),
            ));
        }
        validate_reload(&self.reload)
    }
}

/// A freshly requested token. `Debug` never shows the token.
#[derive(Debug)]
pub struct IssuedToken {
    /// The bearer token.
    pub token: SecretString,
    /// When it was issued.
    pub not_before: DateTime<Utc>,
    /// When the token service says it expires.
    pub not_after: DateTime<Utc>,
    /// sha256 of the token, hex.
    pub fingerprint: String,
    /// Non-secret details (e.g. the Secret the token is bound to).
    pub details: serde_json::Value,
}

/// Why a token could not be issued or retired.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token service failed or refused; its own error says how.
    #[error(transparent)]
    Service(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl TokenError {
    /// Wraps the token service's error.
    pub fn service(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Service(Box::new(e))
    }
}

/// Why consumers could not be restarted.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The workload API failed or refused; its own error says how.
    #[error(transparent)]
    Service(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl ReloadError {
    /// Wraps the workload API's error.
    pub fn service(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Service(Box::new(e))
    }
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
    ) -> Result<IssuedToken, TokenError>;

    /// Retires a superseded version (deletes its bound Secret).
    async fn retire(&self, spec: &TokenSpec, details: &serde_json::Value)
    -> Result<(), TokenError>;
}

/// Restarts consumer workloads after a new version is published.
#[async_trait]
pub trait Reload: Send + Sync {
    /// Rolls each `kind/namespace/name` target.
    async fn restart(&self, targets: &[String]) -> Result<(), ReloadError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_token_debug_hides_the_token() {
        let t = IssuedToken {
            token: SecretString::from("eyJhbGciOiJFUzI1NiJ9.secret"),
            not_before: Utc::now(),
            not_after: Utc::now(),
            fingerprint: "00".into(),
            details: serde_json::json!({}),
        };
        assert!(!format!("{t:?}").contains("eyJ"));
    }

    #[test]
    fn the_token_request_floor_is_named() {
        let spec: TokenSpec = toml::from_str(
            r#"
name = "sa-token/ci/deployer"
namespace = "ci"
service_account = "deployer"
lifetime = "5m"
sink = { kind = "kubernetes-secret", namespace = "ci", name = "deployer-token" }
"#,
        )
        .unwrap();
        let (field, message) = spec.validate(Duration::from_secs(600)).unwrap_err();
        assert_eq!(field, "lifetime");
        assert_eq!(
            message,
            "5m is below the TokenRequest minimum of 10m (expirationSeconds >= 600)"
        );
    }
}
