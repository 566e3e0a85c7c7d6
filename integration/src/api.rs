//! The admin API under test: certificates for every role, a real `rekey serve`
//! on loopback ports, and mTLS HTTP clients.
//!
//! ```text
//!  Pki: API CA ──► server.crt (localhost, 127.0.0.1)
//!               └► client certs by CN (viewer, operator, admin, anything)
//!       other CA ─► a client cert the server must refuse
//!       issuer CA ─► what rekey signs credentials with ([issuer])
//!  Serve: rekey serve --config DIR/rekey.toml  (fresh database, [api] + [metrics])
//! ```

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{TimeDelta, Utc};
use rekey::{
    api::dev::client_spec,
    issue::{CertAuthority, CertificateSpec, KeyType, Usage},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use secrecy::ExposeSecret;

use crate::pg::TestDb;

/// Role mappings every test server uses: the CN is the role's name.
pub const ROLES_TOML: &str = r#"roles = [
  { subject_cn = "viewer", role = "viewer" },
  { subject_cn = "operator", role = "operator" },
  { subject_cn = "admin", role = "admin" },
]"#;

/// Certificates and keys for one test (all files in a temp dir).
pub struct Pki {
    /// Where the files are.
    pub dir: tempfile::TempDir,
    ca: CertAuthority,
    ca_key: secrecy::SecretString,
    other: CertAuthority,
    /// The API CA (server and client certificates): `--cacert`, `[api].client_ca`.
    pub ca_cert: PathBuf,
    /// Server certificate for localhost.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The credentials' issuer (`[issuer]`).
    pub issuer_cert: PathBuf,
    /// Its key.
    pub issuer_key: PathBuf,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// Makes the CAs and the server certificate.
    pub fn new() -> Self {
        rekey::install_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix("rekey-test-api-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let now = Utc::now();
        let (ca, ca_key) =
            CertAuthority::generate("api test CA", KeyType::EcdsaP256, TimeDelta::days(2), now)
                .expect("CA");
        let (other, _) =
            CertAuthority::generate("other CA", KeyType::EcdsaP256, TimeDelta::days(2), now)
                .expect("CA");
        let (issuer, issuer_key) =
            CertAuthority::generate("issuer CA", KeyType::EcdsaP256, TimeDelta::days(2), now)
                .expect("CA");
        issuer
            .write_files(&issuer_key, &dir.path().join("issuer"), true)
            .expect("issuer files");
        let server = ca
            .issue(
                &CertificateSpec {
                    dns_names: vec!["localhost".into()],
                    ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
                    usages: vec![Usage::Server],
                    ..client_spec("localhost", "/nonexistent".into())
                },
                now,
            )
            .expect("server cert");
        let w = |name: &str, data: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).expect("write pki file");
            p
        };
        let ca_cert = w("ca.crt", ca.cert_pem());
        let server_cert = w("server.crt", &server.cert_pem);
        let server_key = w("server.key", server.key_pem.expose_secret());
        Self {
            issuer_cert: dir.path().join("issuer/ca.crt"),
            issuer_key: dir.path().join("issuer/ca.key"),
            dir,
            ca,
            ca_key,
            other,
            ca_cert,
            server_cert,
            server_key,
        }
    }

    fn mint(&self, ca: &CertAuthority, cn: &str, prefix: &str) -> (PathBuf, PathBuf) {
        let leaf = ca
            .issue(&client_spec(cn, "/nonexistent".into()), Utc::now())
            .expect("client cert");
        let cert = self.dir.path().join(format!("{prefix}{cn}.crt"));
        let key = self.dir.path().join(format!("{prefix}{cn}.key"));
        std::fs::write(&cert, &leaf.cert_pem).expect("write");
        std::fs::write(&key, leaf.key_pem.expose_secret()).expect("write");
        (cert, key)
    }

    /// A client certificate from the API CA with common name `cn` (cert, key).
    pub fn client_files(&self, cn: &str) -> (PathBuf, PathBuf) {
        self.mint(&self.ca, cn, "client-")
    }

    /// A client certificate from the API CA whose subject is `subject` in
    /// OpenSSL's `/CN=a/CN=b` form (any RDNs, repeated ones included), made
    /// with the `openssl` command (cert, key).
    pub fn client_files_with_subject(&self, subject: &str, file: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let ca_key = d.join("api-ca.key");
        std::fs::write(&ca_key, self.ca_key.expose_secret()).expect("write CA key");
        let (key, csr, cert, ext) = (
            d.join(format!("{file}.key")),
            d.join(format!("{file}.csr")),
            d.join(format!("{file}.crt")),
            d.join(format!("{file}.ext")),
        );
        std::fs::write(
            &ext,
            "extendedKeyUsage = clientAuth\nbasicConstraints = CA:FALSE\n",
        )
        .expect("write extensions");
        let openssl = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        openssl(&[
            &os("req"),
            &os("-new"),
            &os("-newkey"),
            &os("ec"),
            &os("-pkeyopt"),
            &os("ec_paramgen_curve:P-256"),
            &os("-nodes"),
            &os("-subj"),
            &os(subject),
            &os("-keyout"),
            key.as_os_str(),
            &os("-out"),
            csr.as_os_str(),
        ]);
        openssl(&[
            &os("x509"),
            &os("-req"),
            &os("-in"),
            csr.as_os_str(),
            &os("-CA"),
            self.ca_cert.as_os_str(),
            &os("-CAkey"),
            ca_key.as_os_str(),
            &os("-days"),
            &os("1"),
            &os("-extfile"),
            ext.as_os_str(),
            &os("-out"),
            cert.as_os_str(),
        ]);
        (cert, key)
    }

    /// A client certificate with common name `cn` from a CA the server does not trust.
    pub fn foreign_client_files(&self, cn: &str) -> (PathBuf, PathBuf) {
        self.mint(&self.other, cn, "foreign-")
    }

    /// An HTTPS client trusting the API CA, presenting `cert` if given.
    pub fn client_with(&self, cert: Option<(PathBuf, PathBuf)>) -> reqwest::Client {
        self.client_opts(cert, true, usize::MAX)
    }

    /// Like [`Pki::client_with`], HTTP/1.1 only, keeping at most `max_idle`
    /// idle connections (0: a new connection and handshake per request).
    pub fn client_with_pool(
        &self,
        cert: Option<(PathBuf, PathBuf)>,
        max_idle: usize,
    ) -> reqwest::Client {
        self.client_opts(cert, false, max_idle)
    }

    fn client_opts(
        &self,
        cert: Option<(PathBuf, PathBuf)>,
        http2: bool,
        max_idle: usize,
    ) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca_cert).expect("ca") {
            roots.add(c.expect("ca pem")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut tls = match cert {
            Some((c, k)) => b
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(&c)
                        .expect("cert")
                        .collect::<Result<Vec<_>, _>>()
                        .expect("cert pem"),
                    PrivateKeyDer::from_pem_file(&k).expect("key"),
                )
                .expect("client auth"),
            None => b.with_no_client_auth(),
        };
        tls.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        reqwest::Client::builder()
            .pool_max_idle_per_host(max_idle)
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    }

    /// An HTTPS client presenting a certificate with common name `cn`.
    pub fn client(&self, cn: &str) -> reqwest::Client {
        self.client_with(Some(self.client_files(cn)))
    }
}

/// A `[[certificate]]` with a file sink under `dir`.
pub fn certificate_toml(name: &str, key: &str, lifetime: &str, dir: &Path) -> String {
    format!(
        r#"
[[certificate]]
name = "{name}"
dns_names = ["svc.example"]
key = "{key}"
lifetime = "{lifetime}"
sink = {{ kind = "file", dir = "{}" }}
"#,
        dir.display()
    )
}

/// A running `rekey serve`; killed on drop.
pub struct Serve {
    child: Child,
    /// `https://localhost:PORT` (`http://127.0.0.1:PORT` with `insecure_plain_http = true`).
    pub url: String,
    /// `http://127.0.0.1:PORT` (the metrics listener).
    pub metrics_url: String,
    /// The config file.
    pub config: PathBuf,
    log: PathBuf,
}

impl Serve {
    /// Starts `rekey serve` on `db` with the API configured from `pki`, plus
    /// `api_extra` lines in `[api]` and `rest` appended (credentials, sections).
    pub async fn start(db: &TestDb, pki: &Pki, api_extra: &str, rest: &str) -> Self {
        let port = rekey::devdb::free_port().expect("port");
        let metrics_port = rekey::devdb::free_port().expect("port");
        let dir = pki.dir.path();
        let config = dir.join(format!("rekey-{port}.toml"));
        let text = format!(
            r#"[database]
url = "{url}"

[issuer]
ca_cert = "{ic}"
ca_key = "{ik}"

[engine]
poll_interval = "200ms"
max_jitter = "0s"

[api]
listen = "127.0.0.1:{port}"
tls_cert = "{sc}"
tls_key = "{sk}"
client_ca = "{ca}"
{ROLES_TOML}
{api_extra}

[metrics]
listen = "127.0.0.1:{metrics_port}"
{rest}
"#,
            url = db.url,
            ic = pki.issuer_cert.display(),
            ik = pki.issuer_key.display(),
            sc = pki.server_cert.display(),
            sk = pki.server_key.display(),
            ca = pki.ca_cert.display(),
        );
        std::fs::write(&config, text).expect("write config");
        let log = dir.join(format!("serve-{port}.log"));
        let child = crate::bin::rekey()
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("REKEY_LOG", "info,rekey=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("spawning rekey serve");
        let plain = api_extra.contains("insecure_plain_http = true");
        let mut me = Self {
            child,
            url: if plain {
                format!("http://127.0.0.1:{port}")
            } else {
                format!("https://localhost:{port}")
            },
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            config,
            log,
        };
        me.wait_ready().await;
        me
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("rekey serve exited ({status}):\n{}", self.log());
            }
            if let Ok(r) = http
                .get(format!("{}/readyz", self.metrics_url))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rekey serve not ready after 60s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `rekey` command with the client flags for `cn`'s certificate set.
    pub fn cli(&self, pki: &Pki, cn: Option<&str>) -> Command {
        let mut c = crate::bin::rekey();
        c.arg("--log").arg("warn");
        c.env("REKEY_SERVER", &self.url)
            .env("REKEY_CACERT", &pki.ca_cert);
        if let Some(cn) = cn {
            let (cert, key) = pki.client_files(cn);
            c.env("REKEY_CLIENT_CERT", cert)
                .env("REKEY_CLIENT_KEY", key);
        }
        c
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// URL-encodes a credential name for a path segment.
pub fn enc(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `[etcd]` and `[backup]` sections for `etcd` (real, from [`crate::etcd::Etcd`]):
/// an EncryptionConfiguration (aescbc, then identity), a KEK and a `file://`
/// destination, all under `dir`.
pub fn etcd_and_backup_toml(etcd: &crate::etcd::Etcd, dir: &Path) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let enc = dir.join("encryption-config.yaml");
    std::fs::write(
        &enc,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [\"secrets\"]\n    providers:\n      - aescbc:\n          keys:\n            - name: key1\n              secret: {key}\n      - identity: {{}}\n"
        ),
    )
    .expect("write encryption config");
    let kek = dir.join("kek");
    std::fs::write(&kek, [9u8; 32]).expect("write kek");
    let backups = dir.join("backups");
    std::fs::create_dir_all(&backups).expect("backups dir");
    format!(
        "\n[etcd]\nendpoints = [\"{}\"]\nencryption_config = \"{}\"\n\n[backup]\ndestination = \"file://{}/\"\nkek_file = \"{}\"\n",
        etcd.endpoint,
        enc.display(),
        backups.display(),
        kek.display()
    )
}
