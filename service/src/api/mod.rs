//! The admin HTTPS API (mutual TLS): rotate now, inventory, audit, metrics.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[api]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address, e.g. `0.0.0.0:8443`.
    pub listen: String,
    /// Server certificate (PEM).
    pub tls_cert: Option<PathBuf>,
    /// Server key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Role of each client certificate subject.
    #[serde(default)]
    pub roles: Vec<RoleMapping>,
    /// Serve plain HTTP without TLS (development only; logged loudly).
    #[serde(default)]
    pub insecure_plain_http: bool,
}

/// Maps a client certificate subject to a role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMapping {
    /// The subject's common name.
    pub subject_cn: String,
    /// `viewer`, `operator` or `admin`.
    pub role: Role,
}

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read inventory, rotations, audit.
    Viewer,
    /// Also rotate now and revoke tokens.
    Operator,
    /// Everything.
    Admin,
}

impl ApiConfig {
    /// Checks field values; errors are `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "listen".into(),
                format!("`{}` is not an address like 0.0.0.0:8443", self.listen),
            ));
        }
        if !self.insecure_plain_http {
            for (f, v) in [
                ("tls_cert", &self.tls_cert),
                ("tls_key", &self.tls_key),
                ("client_ca", &self.client_ca),
            ] {
                if v.is_none() {
                    return Err((
                        f.into(),
                        "required unless insecure_plain_http = true".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}
