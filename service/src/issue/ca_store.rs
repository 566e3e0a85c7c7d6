//! Where a `ca` issuer's CA material lives: a [`CaStore`] reads it (files
//! here; a Kubernetes Secret in `k8s::ca_secret`), and [`load_ca`] turns
//! what it read into a checked [`CertAuthority`], every problem named by
//! issuer and field (`issuer[cluster].ca_key: ...`).
//!
//! The CA-rotation work extends the trait with the `next` and `previous`
//! slots (`<ca_cert>.next`, `next.crt` in the Secret, ...); today only the
//! current CA is read.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::ca::{CaPart, CertAuthority};

/// An issuer's configuration or material is wrong: exit 2, naming the
/// issuer and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("issuer[{issuer}].{field}: {message}")]
pub struct IssuerError {
    /// The issuer's name.
    pub issuer: String,
    /// The field (`ca_cert`, `ca_key`, `secret`, `signer_name`, `ca_bundle`, ...).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl IssuerError {
    /// An error at `issuer[issuer].field`.
    pub fn new(issuer: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A CA certificate and its key, as read from a store (not yet checked).
pub struct CaMaterial {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA's private key, PEM.
    pub key_pem: SecretString,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial").finish_non_exhaustive()
    }
}

/// Where one `ca` issuer's CA lives.
#[async_trait]
pub trait CaStore: Send + Sync + fmt::Debug {
    /// What it is, for messages and `rekey status`: `files /etc/rekey/ca/ca.crt`,
    /// `Secret rekey/rekey-ca`.
    fn describe(&self) -> String;

    /// The configuration field a part of the CA comes from, and how to
    /// name that part in a message: `("ca_key", "/etc/rekey/ca/ca.key")`,
    /// `("secret", "tls.key of Secret rekey/rekey-ca")`.
    fn field_of(&self, part: CaPart) -> (&'static str, String);

    /// Reads the current CA (the one that signs). An error names the field
    /// but not the issuer (the caller knows it): `(field, message)`.
    async fn read_current(&self) -> Result<CaMaterial, (String, String)>;
}

/// A CA in two PEM files (`ca_cert`, `ca_key`).
#[derive(Debug, Clone)]
pub struct FileCaStore {
    cert: PathBuf,
    key: PathBuf,
}

impl FileCaStore {
    /// The store for `ca_cert` and `ca_key`.
    pub fn new(cert: &Path, key: &Path) -> Self {
        Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key
    }
}

#[async_trait]
impl CaStore for FileCaStore {
    fn describe(&self) -> String {
        format!("files {}, {}", self.cert.display(), self.key.display())
    }

    fn field_of(&self, part: CaPart) -> (&'static str, String) {
        match part {
            CaPart::Cert => ("ca_cert", self.cert.display().to_string()),
            CaPart::Key => ("ca_key", self.key.display().to_string()),
        }
    }

    async fn read_current(&self) -> Result<CaMaterial, (String, String)> {
        let (cert, key) = (self.cert.clone(), self.key.clone());
        let read = |field: &str, p: &Path| {
            std::fs::read_to_string(p).map_err(|e| {
                (
                    field.to_string(),
                    format!("cannot read {}: {e}", p.display()),
                )
            })
        };
        tokio::task::spawn_blocking(move || {
            Ok(CaMaterial {
                cert_pem: read("ca_cert", &cert)?,
                key_pem: SecretString::from(read("ca_key", &key)?),
            })
        })
        .await
        .unwrap_or_else(|e| Err(("ca_cert".into(), format!("reading thread failed: {e}"))))
    }
}

/// Reads the current CA of issuer `issuer` from `store` and checks it at
/// `now` (a CA certificate with keyCertSign, its key matching, not
/// expired); every problem names the issuer and the field.
pub async fn load_ca(
    issuer: &str,
    store: &dyn CaStore,
    now: DateTime<Utc>,
) -> Result<CertAuthority, IssuerError> {
    let material = store
        .read_current()
        .await
        .map_err(|(field, message)| IssuerError::new(issuer, &field, message))?;
    CertAuthority::from_pem(&material.cert_pem, &material.key_pem, now).map_err(|p| {
        let (field, what) = store.field_of(p.part);
        let message = match p.part {
            // "the key does not match ca_cert"
            CaPart::Key if p.message.contains("does not match") => {
                let (cert_field, cert) = store.field_of(CaPart::Cert);
                format!("{what} does not match the certificate in {cert} ({cert_field})")
            }
            _ => format!("{what} {}", p.message),
        };
        IssuerError::new(issuer, field, message)
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::issue::KeyType;

    #[tokio::test]
    async fn problems_name_the_issuer_and_the_field() {
        let now = Utc::now();
        let dir = tempfile::tempdir().unwrap();
        let (a, a_key) =
            CertAuthority::generate("a", KeyType::EcdsaP256, TimeDelta::days(1), now).unwrap();
        let (_, b_key) =
            CertAuthority::generate("b", KeyType::EcdsaP256, TimeDelta::days(1), now).unwrap();
        a.write_files(&a_key, dir.path(), false).unwrap();
        let (crt, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let store = FileCaStore::new(&crt, &key);
        let ca = load_ca("cluster", &store, now).await.unwrap();
        assert_eq!(ca.fingerprint(), a.fingerprint());

        std::fs::write(&key, b_key.expose_secret()).unwrap();
        let e = load_ca("cluster", &store, now).await.unwrap_err();
        assert_eq!((e.issuer.as_str(), e.field.as_str()), ("cluster", "ca_key"));
        assert!(e.to_string().starts_with("issuer[cluster].ca_key: "), "{e}");
        assert!(
            e.message.contains("does not match the certificate in"),
            "{e}"
        );

        let e = load_ca("cluster", &store, now + TimeDelta::days(2))
            .await
            .unwrap_err();
        assert_eq!(e.field, "ca_cert");
        assert!(e.message.contains("expired"), "{e}");

        let missing = FileCaStore::new(&dir.path().join("nope.crt"), &key);
        let e = load_ca("x", &missing, now).await.unwrap_err();
        assert_eq!(e.field, "ca_cert");
        assert!(e.message.contains("nope.crt"), "{e}");
    }
}
