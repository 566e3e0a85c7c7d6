//! Certificates for the admin API under `rekey dev`.
//!
//! [`dev_certs`] makes a CA of the API's own (not the credentials' issuer:
//! a managed leaf certificate must never double as an admin API login), a
//! server certificate for `localhost`/`127.0.0.1`, and an `operator` client
//! certificate, all under `STATE_DIR/api/`. Nothing is reused across runs; the
//! CA key is never written.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::ExposeSecret;

use super::config::{ApiConfig, Role, RoleMapping};
use crate::{
    issue::{CertAuthority, IssueError},
    issue::{CertificateSpec, KeyType, Usage},
    sink::SinkSpec,
};

/// The CN of the client certificate `rekey dev` writes.
pub const DEV_OPERATOR_CN: &str = "rekey-dev-operator";

/// How long the dev certificates are valid.
const DEV_VALIDITY: TimeDelta = TimeDelta::days(7);

/// Files written by [`dev_certs`] and the `[api]` section that uses them.
#[derive(Debug, Clone)]
pub struct DevApi {
    /// `STATE_DIR/api`.
    pub dir: PathBuf,
    /// CA of the server and client certificates (`--cacert`).
    pub ca_cert: PathBuf,
    /// The operator client certificate (`--cert`).
    pub client_cert: PathBuf,
    /// Its key (`--key`).
    pub client_key: PathBuf,
    /// `[api]` for the dev server: TLS files set, the operator role mapped.
    pub config: ApiConfig,
}

/// A leaf spec for a client certificate with common name `cn`.
pub fn client_spec(cn: &str, dir: PathBuf) -> CertificateSpec {
    leaf_spec(cn, Usage::Client, vec![], dir)
}

fn leaf_spec(cn: &str, usage: Usage, dns: Vec<String>, dir: PathBuf) -> CertificateSpec {
    CertificateSpec {
        name: format!("api/{cn}"),
        issuer: None,
        common_name: Some(cn.into()),
        organizations: vec![],
        dns_names: dns,
        ip_addresses: if usage == Usage::Server {
            vec![
                "127.0.0.1".parse().expect("literal"),
                "::1".parse().expect("literal"),
            ]
        } else {
            vec![]
        },
        key: KeyType::EcdsaP256,
        usages: vec![usage],
        lifetime: DEV_VALIDITY.to_std().unwrap_or_default().into(),
        renew_fraction: None,
        renew_before: None,
        schedule: None,
        sink: SinkSpec::File { dir },
        adopt: false,
        reload: vec![],
        probe: None,
        probe_grace: None,
    }
}

fn write(path: &Path, data: &str, mode: u32) -> Result<(), IssueError> {
    let werr = |source| IssueError::Write {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(werr)?;
    f.write_all(data.as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)
}

/// Writes a fresh API CA, server certificate and operator client certificate
/// under `state_dir/api/` and returns the `[api]` section serving on `listen`.
pub fn dev_certs(state_dir: &Path, listen: &str, now: DateTime<Utc>) -> Result<DevApi, IssueError> {
    let dir = state_dir.join("api");
    std::fs::create_dir_all(&dir).map_err(|source| IssueError::Write {
        path: dir.clone(),
        source,
    })?;
    let (ca, _ca_key) = CertAuthority::generate(
        "rekey dev admin API CA",
        KeyType::EcdsaP256,
        DEV_VALIDITY,
        now,
    )?;
    let server = ca.issue(
        &leaf_spec(
            "localhost",
            Usage::Server,
            vec!["localhost".into()],
            dir.clone(),
        ),
        now,
    )?;
    let client = ca.issue(&client_spec(DEV_OPERATOR_CN, dir.clone()), now)?;
    let p = |n: &str| dir.join(n);
    write(&p("ca.crt"), ca.cert_pem(), 0o644)?;
    write(&p("server.crt"), &server.cert_pem, 0o644)?;
    write(&p("server.key"), server.key_pem.expose_secret(), 0o600)?;
    write(&p("operator.crt"), &client.cert_pem, 0o644)?;
    write(&p("operator.key"), client.key_pem.expose_secret(), 0o600)?;
    let mut config = ApiConfig::new(listen);
    config.tls_cert = Some(p("server.crt"));
    config.tls_key = Some(p("server.key"));
    config.client_ca = Some(p("ca.crt"));
    config.roles = vec![RoleMapping {
        subject_cn: DEV_OPERATOR_CN.into(),
        role: Role::Operator,
    }];
    Ok(DevApi {
        ca_cert: p("ca.crt"),
        client_cert: p("operator.crt"),
        client_key: p("operator.key"),
        dir,
        config,
    })
}

impl DevApi {
    /// The `[api]` section (TOML) for the generated dev configuration.
    pub fn config_toml(&self) -> String {
        let q = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        format!(
            "\n# The admin API (mutual TLS); certificates written by `rekey dev` under {dir}.\n\
             [api]\nlisten = \"{listen}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n\
             client_ca = \"{ca}\"\nroles = [ {{ subject_cn = \"{DEV_OPERATOR_CN}\", role = \"operator\" }} ]\n",
            dir = self.dir.display(),
            listen = self.config.listen,
            cert = q(&self.config.tls_cert),
            key = q(&self.config.tls_key),
            ca = q(&self.config.client_ca),
        )
    }

    /// How to call the API served at `addr` with curl and with the `rekey` CLI.
    pub fn usage(&self, addr: std::net::SocketAddr) -> String {
        let host = if addr.ip().is_loopback() || addr.ip().is_unspecified() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        };
        let (ca, cert, key) = (
            self.ca_cert.display(),
            self.client_cert.display(),
            self.client_key.display(),
        );
        format!(
            "admin API: https://{host} (mutual TLS; client certificate CN={DEV_OPERATOR_CN}, role operator)\n\
             \x20 curl --cacert {ca} --cert {cert} --key {key} https://{host}/v1/credentials\n\
             \x20 curl --cacert {ca} --cert {cert} --key {key} -X POST -H 'content-type: application/json' \\\n\
             \x20      -d '{{\"reason\":\"testing\"}}' https://{host}/v1/credentials/NAME-URL-ENCODED/rotate\n\
             \x20 export REKEY_SERVER=https://{host} REKEY_CACERT={ca} REKEY_CLIENT_CERT={cert} REKEY_CLIENT_KEY={key}\n\
             \x20 rekey status --server https://{host}; rekey rotate NAME --wait --reason testing\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_usable_files_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dev_certs(dir.path(), "127.0.0.1:0", Utc::now()).unwrap();
        dev.config
            .validate()
            .unwrap_or_else(|(f, m)| panic!("{f}: {m}"));
        let mode = std::fs::metadata(&dev.client_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        crate::install_crypto_provider();
        super::super::server::tls_config(&dev.config).unwrap();
        let text = dev.usage("127.0.0.1:8443".parse().unwrap());
        assert!(text.contains("curl --cacert"), "{text}");
        assert!(
            text.contains("https://localhost:8443/v1/credentials"),
            "{text}"
        );
        // Again: files are replaced, not refused.
        dev_certs(dir.path(), "127.0.0.1:0", Utc::now()).unwrap();
        // The TOML section parses into the same [api].
        let text = format!(
            "[database]\nurl = \"postgres://x@y/z\"\n{}",
            dev.config_toml()
        );
        let c = crate::config::Config::parse(&text, &Default::default(), dir.path()).unwrap();
        assert_eq!(c.api.unwrap().client_ca, dev.config.client_ca);
    }
}
