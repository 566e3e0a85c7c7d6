//! The Kubernetes sections of `rekey.toml`: `[kubernetes]` (how to reach
//! the API, how fast to restart consumers) and `[bootstrap_tokens]` (when
//! bootstrap tokens are revoked), and the TokenRequest lifetime floor.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

/// The TokenRequest API refuses `expirationSeconds` below ten minutes.
pub const MIN_TOKEN_LIFETIME_SECS: u64 = 600;

/// `[kubernetes]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Path to a kubeconfig (default: `KUBECONFIG`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig.
    pub context: Option<String>,
    /// Restarts of consumer workloads allowed per minute across the fleet.
    pub reload_per_minute: Option<u32>,
    /// Burst of restarts allowed at once.
    pub reload_burst: Option<u32>,
}

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
