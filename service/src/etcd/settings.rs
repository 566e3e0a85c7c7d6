//! `[etcd]`: how to reach etcd (encryption checks and backups), and the
//! scheduled encryption check.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

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
    /// Cron schedule of the storage migration in `rekey serve` (rewrites
    /// every value not under the current write key; needs `[kubernetes]`
    /// access with get and update on the migrated resources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_schedule: Option<String>,
    /// Resources the scheduled migration and `POST /v1/etcd/migrate` rewrite
    /// (default: every resource the EncryptionConfiguration names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrate_resources: Vec<String>,
    /// Objects rewritten per second at most by the scheduled migration and
    /// the API (default 100; 0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_max_rate: Option<f64>,
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
        if let Some(s) = &self.migrate_schedule {
            crate::schedule::parse_cron(s).map_err(|m| ("migrate_schedule".to_string(), m))?;
            if self.encryption_config.is_none() {
                return Err((
                    "encryption_config".into(),
                    "migrate_schedule needs encryption_config (the API server's EncryptionConfiguration file)".into(),
                ));
            }
        }
        for (i, r) in self.migrate_resources.iter().enumerate() {
            if r.is_empty()
                || r.contains('*')
                || r.chars().any(|c| c.is_uppercase() || c.is_whitespace())
            {
                return Err((
                    format!("migrate_resources[{i}]"),
                    format!("`{r}` is not a resource name (lower case, e.g. `secrets`)"),
                ));
            }
        }
        if let Some(n) = self.migrate_max_rate
            && (!n.is_finite() || n < 0.0)
        {
            return Err((
                "migrate_max_rate".into(),
                format!("{n} is not a rate (0 or more; 0: no limit)"),
            ));
        }
        if let Some(a) = self.max_key_age
            && a.get().is_zero()
        {
            return Err(("max_key_age".into(), "must be more than zero".into()));
        }
        Ok(())
    }
}
