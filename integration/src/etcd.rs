//! A real etcd (Debian's `etcd-server`) on loopback ports with a temp data dir.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chrono::{TimeDelta, Utc};
use rekey::{
    etcd::EtcdConfig,
    issue::{CertAuthority, CertificateSpec, KeyType, Usage},
    sink::SinkSpec,
};
use secrecy::ExposeSecret;

/// A running etcd; killed on drop.
pub struct Etcd {
    child: Child,
    /// Client URL, e.g. `http://127.0.0.1:23791`.
    pub endpoint: String,
    /// Data and certificate directory.
    pub dir: tempfile::TempDir,
    /// TLS files when started with [`Etcd::start_tls`].
    pub tls: Option<EtcdTls>,
}

/// Files for a TLS etcd with client-certificate auth.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA that signed the server and client certificates.
    pub ca_cert: PathBuf,
    /// A client certificate etcd accepts.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

fn etcd_binary() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "etcd is not installed: `apt-get install -y etcd-server etcd-client` (Debian's etcd 3.4)"
    );
}

impl Etcd {
    /// Starts a plain-HTTP etcd.
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// Starts etcd over TLS requiring client certificates (as production etcd does).
    pub fn start_tls() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> Self {
        let bin = etcd_binary();
        let dir = tempfile::Builder::new()
            .prefix("rekey-test-etcd-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let client_port = rekey::devdb::free_port().expect("port");
        let peer_port = rekey::devdb::free_port().expect("port");
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(bin);
        cmd.args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &format!("t={peer}"),
                "--initial-cluster-state",
                "new",
            ])
            .args([
                "--unsafe-no-fsync",
                "--log-level",
                "error",
                "--logger",
                "zap",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("etcd.log")).expect("log file"),
            ));
        let tls_files = tls.then(|| {
            let files = write_tls_files(dir.path());
            cmd.arg("--cert-file")
                .arg(dir.path().join("server.crt"))
                .arg("--key-file")
                .arg(dir.path().join("server.key"))
                .arg("--trusted-ca-file")
                .arg(&files.ca_cert)
                .arg("--client-cert-auth");
            files
        });
        let child = cmd.spawn().expect("spawning etcd");
        let me = Self {
            child,
            endpoint,
            dir,
            tls: tls_files,
        };
        me.wait_ready();
        me
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let port: u16 = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `[etcd]` config section for this server.
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.endpoint.clone()],
            ca_cert: self.tls.as_ref().map(|t| t.ca_cert.clone()),
            client_cert: self.tls.as_ref().map(|t| t.client_cert.clone()),
            client_key: self.tls.as_ref().map(|t| t.client_key.clone()),
            ..Default::default()
        }
    }

    /// An `etcdctl` (API v3) command pointed at this server.
    pub fn etcdctl(&self) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint));
        if let Some(t) = &self.tls {
            c.arg(format!("--cacert={}", t.ca_cert.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        c
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn leaf(name: &str, cn: &str, usage: Usage) -> CertificateSpec {
    CertificateSpec {
        name: name.into(),
        issuer: None,
        common_name: Some(cn.into()),
        organizations: vec![],
        dns_names: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
        key: KeyType::EcdsaP256,
        usages: vec![usage],
        lifetime: Duration::from_secs(86_400).into(),
        renew_fraction: None,
        renew_before: None,
        schedule: None,
        sink: SinkSpec::File {
            dir: "/nonexistent".into(),
        },
        adopt: false,
        reload: vec![],
        probe: None,
        probe_grace: None,
    }
}

fn write_tls_files(dir: &Path) -> EtcdTls {
    let now = Utc::now();
    let (ca, _) =
        CertAuthority::generate("etcd test CA", KeyType::EcdsaP256, TimeDelta::days(1), now)
            .expect("CA");
    let server = ca
        .issue(&leaf("etcd-server", "etcd", Usage::Server), now)
        .expect("server cert");
    let client = ca
        .issue(&leaf("etcd-client", "rekey", Usage::Client), now)
        .expect("client cert");
    let w = |name: &str, data: &str| std::fs::write(dir.join(name), data).expect("write tls file");
    w("ca.crt", ca.cert_pem());
    w("server.crt", &server.cert_pem);
    w("server.key", server.key_pem.expose_secret());
    w("client.crt", &client.cert_pem);
    w("client.key", client.key_pem.expose_secret());
    EtcdTls {
        ca_cert: dir.join("ca.crt"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}
