//! `[api]`: the admin API's configuration section, its roles, and the checks
//! on its values (`config` composes this section; it never looks inside).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, HumanDuration};

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
    /// Also accept `Authorization: Bearer` ServiceAccount tokens, verified with
    /// TokenReview and authorized per action with SubjectAccessReview
    /// (API group `rekey.io`). Client certificates become optional on the handshake.
    #[serde(default)]
    pub token_review: bool,
    /// Audiences a bearer token must be issued for (TokenReview `spec.audiences`).
    #[serde(default)]
    pub token_audiences: Vec<String>,
    /// Largest request body accepted (413 above).
    #[serde(default = "default_max_body")]
    pub max_body_size: ByteSize,
    /// Longest a request may take (503 after).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Longest `?wait=true` waits for a rotation before answering 202 anyway.
    #[serde(default = "default_wait_timeout")]
    pub wait_timeout: HumanDuration,
    /// Requests handled at once; more are refused with 503.
    #[serde(default = "default_max_requests")]
    pub max_concurrent_requests: usize,
    /// Open connections at once. At the limit, a new connection closes the
    /// least useful open one (no ClientHello yet, a certificate without a
    /// role, then the longest without progress; never one with a request in
    /// flight), or is refused if every one is busy.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one IP address, with the same rule at the limit.
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// Longest a connection may take to send a request's complete headers,
    /// counted from the end of the TLS handshake or of the previous response
    /// (also how long an idle keep-alive connection stays open).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
}

fn default_max_body() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_request_timeout() -> HumanDuration {
    std::time::Duration::from_secs(60).into()
}
fn default_wait_timeout() -> HumanDuration {
    std::time::Duration::from_secs(50).into()
}
fn default_max_requests() -> usize {
    512
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_connections_per_peer() -> usize {
    256
}
fn default_header_read_timeout() -> HumanDuration {
    std::time::Duration::from_secs(10).into()
}

impl ApiConfig {
    /// A config for `listen` with every limit at its default (no TLS files).
    pub fn new(listen: impl Into<String>) -> Self {
        Self {
            listen: listen.into(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            roles: Vec::new(),
            insecure_plain_http: false,
            token_review: false,
            token_audiences: Vec::new(),
            max_body_size: default_max_body(),
            request_timeout: default_request_timeout(),
            wait_timeout: default_wait_timeout(),
            max_concurrent_requests: default_max_requests(),
            max_connections: default_max_connections(),
            max_connections_per_peer: default_max_connections_per_peer(),
            header_read_timeout: default_header_read_timeout(),
        }
    }
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

impl Role {
    /// The spelling in config and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
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
        for (i, r) in self.roles.iter().enumerate() {
            if r.subject_cn.trim().is_empty() {
                return Err((format!("roles[{i}].subject_cn"), "must not be empty".into()));
            }
        }
        if self.max_body_size.0 < 1024 {
            return Err((
                "max_body_size".into(),
                format!("{} is too small (at least 1KiB)", self.max_body_size),
            ));
        }
        if self.request_timeout.get().as_millis() < 100 {
            return Err(("request_timeout".into(), "must be at least 100ms".into()));
        }
        if self.wait_timeout >= self.request_timeout {
            return Err((
                "wait_timeout".into(),
                format!(
                    "{} must be shorter than request_timeout ({})",
                    self.wait_timeout, self.request_timeout
                ),
            ));
        }
        if self.max_concurrent_requests == 0 {
            return Err((
                "max_concurrent_requests".into(),
                "must be at least 1".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(("max_connections".into(), "must be at least 1".into()));
        }
        if self.max_connections_per_peer == 0 {
            return Err((
                "max_connections_per_peer".into(),
                "must be at least 1".into(),
            ));
        }
        if self.header_read_timeout.get().as_millis() < 100 {
            return Err((
                "header_read_timeout".into(),
                "must be at least 100ms".into(),
            ));
        }
        Ok(())
    }

    /// Makes relative file paths relative to the config file's directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in [&mut self.tls_cert, &mut self.tls_key, &mut self.client_ca]
            .into_iter()
            .flatten()
        {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_name_the_field() {
        let mut c = ApiConfig::new("127.0.0.1:8443");
        assert_eq!(c.validate().unwrap_err().0, "tls_cert");
        c.insecure_plain_http = true;
        c.validate().unwrap();
        c.wait_timeout = std::time::Duration::from_secs(600).into();
        assert_eq!(c.validate().unwrap_err().0, "wait_timeout");
        c.wait_timeout = default_wait_timeout();
        c.max_body_size = ByteSize(10);
        assert_eq!(c.validate().unwrap_err().0, "max_body_size");
        c.max_body_size = default_max_body();
        c.listen = "nope".into();
        assert_eq!(c.validate().unwrap_err().0, "listen");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut c = ApiConfig::new("127.0.0.1:8443");
        c.tls_cert = Some("tls/tls.crt".into());
        c.client_ca = Some("/abs/ca.crt".into());
        c.resolve_paths(std::path::Path::new("/etc/rekey"));
        assert_eq!(c.tls_cert.unwrap(), PathBuf::from("/etc/rekey/tls/tls.crt"));
        assert_eq!(c.client_ca.unwrap(), PathBuf::from("/abs/ca.crt"));
    }
}
