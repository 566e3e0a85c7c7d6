//! etcd encryption at rest: the EncryptionConfiguration, value formats, scan.

pub mod client;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[etcd]`: how to reach etcd (checks and backups).
#[derive(Debug, Clone, Deserialize, Serialize)]
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
        Ok(())
    }
}
