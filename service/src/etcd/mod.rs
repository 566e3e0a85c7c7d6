//! etcd encryption at rest: the EncryptionConfiguration, value formats, scan.
//!
//! ```text
//!   encryption.rs  EncryptionConfiguration ──parse/validate──► rules, keys (SecretBytes)
//!        │                                                       │
//!        ▼                                                       ▼
//!   policy.rs      findings (pure: config + scan tally + key age)   values.rs  Keyring::judge (pure)
//!        │                                                       │
//!        └──────────────► verify.rs ◄── scan.rs (etcd pages, bounded memory) ◄┘
//!                             │
//!               report.rs (JSON)  checks.rs (etcd_checks)  job.rs (cron + gauges)
//!                             │
//!          the command line (`rekey etcd verify`, `rekey etcd rotate-key`)
//! ```
//!
//! Decisions (what a value is, which findings apply, the exit code) are pure
//! functions; only `scan`, `checks`, `job` and `rotate::rotate_key` do I/O.

pub mod checks;
pub mod client;
pub mod encryption;
pub mod job;
pub mod policy;
pub mod report;
pub mod rotate;
pub mod scan;
pub mod values;
pub mod verify;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

pub use verify::{VerifyError, VerifyOptions, verify};

/// The default key prefix scanned: the API server's Secrets.
pub const DEFAULT_PREFIX: &str = "/registry/secrets/";

/// `[etcd]`: how to reach etcd (checks and backups), and the encryption check.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// CA that signed etcd's serving certificate.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate for etcd's client-certificate auth.
    pub client_cert: Option<PathBuf>,
    /// Key of the client certificate.
    pub client_key: Option<PathBuf>,
    /// The API server's `--encryption-provider-config` file, for the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_config: Option<PathBuf>,
    /// Key prefix scanned (default `/registry/secrets/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Resource whose rules apply to the scanned values, e.g. `secrets` or
    /// `deployments.apps` (default: inferred from the prefix, e.g. `secrets`
    /// for `/registry/secrets/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Cron schedule of the check in `rekey serve` (`sec min hour dom mon dow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_schedule: Option<String>,
    /// A write key older than this is an error finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_key_age: Option<HumanDuration>,
    /// Decrypt only this many values, chosen at random (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<u64>,
}

impl EtcdConfig {
    /// Checks field values; errors are `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.endpoints.is_empty() {
            return Err(("endpoints".into(), "must list at least one URL".into()));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err((
                "client_key".into(),
                "client_cert and client_key go together".into(),
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err((
                    format!("endpoints[{i}]"),
                    format!("`{e}` is not an http:// or https:// URL"),
                ));
            }
        }
        if let Some(p) = &self.prefix
            && !p.starts_with('/')
        {
            return Err(("prefix".into(), format!("`{p}` must start with `/`")));
        }
        if let Some(s) = &self.check_schedule {
            crate::schedule::parse_cron(s).map_err(|m| ("check_schedule".to_string(), m))?;
            if self.encryption_config.is_none() {
                return Err((
                    "encryption_config".into(),
                    "check_schedule needs encryption_config (the API server's EncryptionConfiguration file)".into(),
                ));
            }
        }
        if let Some(a) = self.max_key_age
            && a.get().is_zero()
        {
            return Err(("max_key_age".into(), "must be more than zero".into()));
        }
        Ok(())
    }
}
