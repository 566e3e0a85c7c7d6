//! The `kubeconfig` sink: one kubeconfig file with the client certificate,
//! its key and the issuer's trust bundle embedded (`client-certificate-data`,
//! `client-key-data`, `certificate-authority-data`), for external
//! integrations and kubeadm-style conf files (`admin.conf`, `kubelet.conf`).
//!
//! ```yaml
//! apiVersion: v1
//! kind: Config
//! clusters:  [{name: kubernetes, cluster: {server: ..., certificate-authority-data: ...}}]
//! users:     [{name: <the certificate's CN>, user: {client-certificate-data: ..., client-key-data: ...}}]
//! contexts:  [{name: <user>@kubernetes, context: {cluster: kubernetes, user: <user>}}]
//! current-context: <user>@kubernetes
//! preferences:
//!   extensions: [{name: rekey.io/version, extension: {version: "42", credential: ...}}]
//! ```
//!
//! Names default as kubeadm writes them: cluster `kubernetes`, user the
//! certificate's common name, context `<user>@<cluster>`; the sink's
//! `cluster`, `user` and `context` fields override them. The version marker
//! recovery reads is inside the file (a named extension under
//! `preferences`, which `kubectl` and client-go keep), so certificate, key,
//! bundle and marker change together: the file is written whole to a temp
//! file beside it (mode 0600), fsynced, renamed over the old one, and the
//! directory fsynced, under an exclusive `flock` on the directory.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::{
    blocking::{OwnedBundleUpdate, OwnedPublication},
    model::{BundleOutcome, BundleUpdate, Material, Publication, Sink, SinkError},
};
use crate::issue::bundle::fingerprint_of_pem;

/// The name of the extension holding the version marker.
pub const VERSION_EXTENSION: &str = "rekey.io/version";

/// The cluster name when the sink names none (kubeadm's).
pub const DEFAULT_CLUSTER: &str = "kubernetes";

/// A kubeconfig sink.
#[derive(Debug, Clone)]
pub struct KubeconfigSink {
    path: PathBuf,
    server: String,
    cluster: Option<String>,
    user: Option<String>,
    context: Option<String>,
}

/// What the file holds (PEM text, not base64).
struct Contents {
    credential: String,
    version: i64,
    chain_pem: String,
    key_pem: SecretString,
    ca_pem: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> SinkError {
    SinkError::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, message.into()),
    }
}

/// A YAML double-quoted scalar (JSON's string syntax is YAML's).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn unb64(s: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The common name of the first certificate in `chain_pem`.
fn common_name(chain_pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

impl KubeconfigSink {
    /// A sink writing `path` for the API server at `server`.
    pub fn new(
        path: PathBuf,
        server: String,
        cluster: Option<String>,
        user: Option<String>,
        context: Option<String>,
    ) -> Self {
        Self {
            path,
            server,
            cluster,
            user,
            context,
        }
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The (cluster, user, context) names for a certificate chain.
    pub fn names(&self, chain_pem: &str, credential: &str) -> (String, String, String) {
        let cluster = self
            .cluster
            .clone()
            .unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
        let user = self
            .user
            .clone()
            .or_else(|| common_name(chain_pem))
            .unwrap_or_else(|| credential.to_string());
        let context = self
            .context
            .clone()
            .unwrap_or_else(|| format!("{user}@{cluster}"));
        (cluster, user, context)
    }

    /// The kubeconfig text (YAML) for `c`.
    fn render(&self, c: &Contents) -> Zeroizing<String> {
        let (cluster, user, context) = self.names(&c.chain_pem, &c.credential);
        Zeroizing::new(format!(
            "# Written by rekey for {credential}: rekey replaces this file at every rotation.\n\
             apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n\
             - name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
             contexts:\n\
             - name: {context}\n  context:\n    cluster: {cluster}\n    user: {user}\n\
             current-context: {context}\n\
             preferences:\n  extensions:\n  - name: {ext}\n    extension:\n      version: {version}\n      credential: {credential_q}\n",
            credential = c.credential.replace('\n', " "),
            cluster = q(&cluster),
            server = q(&self.server),
            ca = q(&b64(&c.ca_pem)),
            user = q(&user),
            cert = q(&b64(&c.chain_pem)),
            key = q(&b64(c.key_pem.expose_secret())),
            context = q(&context),
            ext = q(VERSION_EXTENSION),
            version = q(&c.version.to_string()),
            credential_q = q(&c.credential),
        ))
    }

    /// Reads back what the file holds; `None` when there is no file.
    fn read(&self) -> Result<Option<Contents>, SinkError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&self.path)(e)),
        };
        let kc = kube::config::Kubeconfig::from_yaml(&text)
            .map_err(|e| invalid(&self.path, format!("not a kubeconfig: {e}")))?;
        let marker = kc
            .preferences
            .as_ref()
            .and_then(|p| p.extensions.as_ref())
            .and_then(|x| x.iter().find(|e| e.name == VERSION_EXTENSION));
        let version = marker.and_then(|m| match &m.extension["version"] {
            serde_json::Value::String(s) => s.parse().ok(),
            v => v.as_i64(),
        });
        let credential = marker
            .and_then(|m| m.extension["credential"].as_str())
            .unwrap_or_default()
            .to_string();
        let Some(version) = version else {
            return Ok(Some(Contents {
                credential,
                version: -1,
                chain_pem: String::new(),
                key_pem: SecretString::from(String::new()),
                ca_pem: String::new(),
            }));
        };
        let user = kc.auth_infos.first().and_then(|a| a.auth_info.as_ref());
        let cluster = kc.clusters.first().and_then(|c| c.cluster.as_ref());
        let chain_pem = user
            .and_then(|u| u.client_certificate_data.as_deref())
            .and_then(unb64)
            .unwrap_or_default();
        let key_pem = user
            .and_then(|u| u.client_key_data.as_ref())
            .and_then(|k| unb64(k.expose_secret()))
            .map(SecretString::from)
            .unwrap_or_else(|| SecretString::from(String::new()));
        let ca_pem = cluster
            .and_then(|c| c.certificate_authority_data.as_deref())
            .and_then(unb64)
            .unwrap_or_default();
        Ok(Some(Contents {
            credential,
            version,
            chain_pem,
            key_pem,
            ca_pem,
        }))
    }

    /// Whether an existing file may be overwritten: rekey wrote it (it
    /// carries the version extension), or the credential adopts it.
    fn owned(&self) -> Result<bool, SinkError> {
        Ok(match self.read() {
            Ok(None) => true,
            Ok(Some(c)) => c.version >= 0,
            Err(_) => false,
        })
    }

    /// Writes the file atomically (temp, fsync, rename, fsync the directory).
    fn write(&self, c: &Contents) -> Result<(), SinkError> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "kubeconfig".into());
        let tmp = dir.join(format!(".{file_name}.rekey-tmp"));
        let text = self.render(c);
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, SinkError> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let d = File::open(&dir).map_err(io(&dir))?;
        nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            SinkError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::from(e),
            }
        })
    }

    /// Publishes synchronously.
    pub fn publish_blocking(&self, p: &Publication<'_>) -> Result<(), SinkError> {
        let Material::Certificate {
            chain_pem,
            key_pem,
            ca_pem,
        } = p.material
        else {
            return Err(SinkError::Unavailable(format!(
                "{}: a kubeconfig sink holds a client certificate, not a token",
                self.describe()
            )));
        };
        let _lock = self.lock()?;
        if !p.adopt && !self.owned()? {
            return Err(SinkError::NotOwned(self.describe()));
        }
        self.write(&Contents {
            credential: p.credential.to_string(),
            version: p.version,
            chain_pem: chain_pem.clone(),
            key_pem: key_pem.clone(),
            ca_pem: ca_pem.clone(),
        })
    }

    /// Republishes with a new bundle, synchronously.
    pub fn publish_bundle_blocking(
        &self,
        u: &BundleUpdate<'_>,
    ) -> Result<BundleOutcome, SinkError> {
        if !self.path.exists() {
            return Ok(BundleOutcome::NotCurrent { found: None });
        }
        let _lock = self.lock()?;
        let Some(mut c) = self.read()? else {
            return Ok(BundleOutcome::NotCurrent { found: None });
        };
        if c.version != u.version {
            return Ok(BundleOutcome::NotCurrent {
                found: (c.version >= 0).then_some(c.version),
            });
        }
        if fingerprint_of_pem(&c.ca_pem).as_deref() == Some(u.bundle.fingerprint()) {
            return Ok(BundleOutcome::Unchanged);
        }
        if c.chain_pem.is_empty() || c.key_pem.expose_secret().is_empty() {
            return Err(invalid(
                &self.path,
                "holds the version marker but no client certificate or key",
            ));
        }
        if c.credential.is_empty() {
            c.credential = u.credential.to_string();
        }
        c.ca_pem = u.bundle.pem().to_string();
        self.write(&c)?;
        Ok(BundleOutcome::Published)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(KubeconfigSink) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        super::blocking::run(self.clone(), &self.path, f).await
    }
}

#[async_trait]
impl Sink for KubeconfigSink {
    async fn publish(&self, p: &Publication<'_>) -> Result<(), SinkError> {
        let p = OwnedPublication::of(p);
        self.blocking(move |sink| sink.publish_blocking(&p.get()))
            .await
    }

    async fn published_version(&self) -> Result<Option<i64>, SinkError> {
        self.blocking(|sink| {
            Ok(sink
                .read()?
                .and_then(|c| (c.version >= 0).then_some(c.version)))
        })
        .await
    }

    async fn publish_bundle(&self, u: &BundleUpdate<'_>) -> Result<BundleOutcome, SinkError> {
        let u = OwnedBundleUpdate::of(u);
        self.blocking(move |sink| sink.publish_bundle_blocking(&u.get()))
            .await
    }

    async fn published_bundle(&self) -> Result<Option<String>, SinkError> {
        self.blocking(|sink| Ok(sink.read()?.and_then(|c| fingerprint_of_pem(&c.ca_pem))))
            .await
    }

    fn describe(&self) -> String {
        format!("kubeconfig:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use chrono::{TimeDelta, Utc};

    use super::*;
    use crate::{
        issue::{CertAuthority, CertificateSpec, KeyType, TrustBundle, Usage},
        sink::SinkSpec,
    };

    fn leaf(ca: &CertAuthority, cn: &str) -> (String, SecretString) {
        let spec = CertificateSpec {
            name: "cert/x".into(),
            issuer: None,
            common_name: Some(cn.into()),
            organizations: vec!["system:masters".into()],
            dns_names: vec![],
            ip_addresses: vec![],
            key: KeyType::EcdsaP256,
            usages: vec![Usage::Client],
            lifetime: std::time::Duration::from_secs(3600).into(),
            renew_fraction: None,
            renew_before: None,
            schedule: None,
            sink: SinkSpec::File { dir: "/x".into() },
            adopt: false,
            reload: vec![],
            probe: None,
            probe_grace: None,
        };
        let c = ca.issue(&spec, Utc::now()).unwrap();
        (format!("{}{}", c.cert_pem, c.ca_pem), c.key_pem)
    }

    #[test]
    fn writes_a_kubeconfig_the_kube_crate_reads_and_republishes_its_bundle() {
        let now = Utc::now();
        let (ca, _) =
            CertAuthority::generate("ca", KeyType::EcdsaP256, TimeDelta::days(1), now).unwrap();
        let (next, _) =
            CertAuthority::generate("next", KeyType::EcdsaP256, TimeDelta::days(1), now).unwrap();
        let (chain, key) = leaf(&ca, "kubernetes-admin");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/admin.conf");
        let sink = KubeconfigSink::new(path.clone(), "https://api:6443".into(), None, None, None);
        let m = Material::Certificate {
            chain_pem: chain.clone(),
            key_pem: key.clone(),
            ca_pem: ca.cert_pem().into(),
        };
        sink.publish_blocking(&Publication {
            credential: "cert/admin",
            version: 12,
            number: 1,
            not_after: now,
            material: &m,
            adopt: false,
        })
        .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        assert_eq!(
            kc.current_context.as_deref(),
            Some("kubernetes-admin@kubernetes")
        );
        assert_eq!(kc.clusters[0].name, "kubernetes");
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://api:6443")
        );
        let c = sink.read().unwrap().unwrap();
        assert_eq!(c.version, 12);
        assert_eq!(c.chain_pem, chain);
        assert_eq!(c.key_pem.expose_secret(), key.expose_secret());

        let both = TrustBundle::from_pem(&format!("{}{}", ca.cert_pem(), next.cert_pem())).unwrap();
        let u = |version| BundleUpdate {
            credential: "cert/admin",
            version,
            bundle: &both,
        };
        assert_eq!(
            sink.publish_bundle_blocking(&u(11)).unwrap(),
            BundleOutcome::NotCurrent { found: Some(12) }
        );
        assert_eq!(
            sink.publish_bundle_blocking(&u(12)).unwrap(),
            BundleOutcome::Published
        );
        assert_eq!(
            sink.publish_bundle_blocking(&u(12)).unwrap(),
            BundleOutcome::Unchanged
        );
        let c = sink.read().unwrap().unwrap();
        assert_eq!((c.version, c.chain_pem.as_str()), (12, chain.as_str()));
        assert_eq!(
            fingerprint_of_pem(&c.ca_pem).as_deref(),
            Some(both.fingerprint())
        );
        assert!(
            std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().contains("rekey-tmp"))
        );

        // A kubeconfig rekey did not write is not overwritten without adopt.
        let foreign = dir.path().join("foreign.conf");
        std::fs::write(&foreign, "apiVersion: v1\nkind: Config\n").unwrap();
        let other = KubeconfigSink::new(foreign, "https://api:6443".into(), None, None, None);
        let err = other
            .publish_blocking(&Publication {
                credential: "cert/admin",
                version: 1,
                number: 1,
                not_after: now,
                material: &m,
                adopt: false,
            })
            .unwrap_err();
        assert!(matches!(err, SinkError::NotOwned(_)), "{err}");
    }
}
