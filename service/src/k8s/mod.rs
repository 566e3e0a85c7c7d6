//! Kubernetes: service-account tokens, bootstrap tokens, CSR/Node watch.
//!
//! Named `k8s` so that it never shadows the `kube` crate.

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
