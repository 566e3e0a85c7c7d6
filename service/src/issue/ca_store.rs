//! Where a `ca` issuer's CA material lives: a [`CaStore`] reads it (files
//! here; a Kubernetes Secret in `k8s::ca_secret`), and [`load_ca`] turns
//! what it read into a checked [`CertAuthority`], every problem named by
//! issuer and field (`issuer[cluster].ca_key: ...`).
//!
//! Besides the current CA a store has two more slots for a CA rotation:
//! `next` (the CA the rotation moves to, written when it starts) and
//! `previous` (the CA it replaced, kept when the rotation promotes `next`
//! to current). Files: `<ca_cert>.next` / `<ca_key>.next` and `.previous`;
//! a Secret: the keys `next.crt`, `next.key`, `previous.crt`, `previous.key`.
//! Every write is atomic per file (temporary file, fsync, rename) or one
//! Secret update; promotion is resumable (see [`FileCaStore`]).

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

    /// Reads the `next` CA, if one is stored.
    async fn read_next(&self) -> Result<Option<CaMaterial>, String>;

    /// Stores `ca` as the `next` CA (replacing one stored before).
    async fn write_next(&self, ca: &CaMaterial) -> Result<(), String>;

    /// Forgets the `next` CA (an aborted rotation); nothing stored is fine.
    async fn discard_next(&self) -> Result<(), String>;

    /// Makes the `next` CA the current one and keeps the current one as
    /// `previous`. Idempotent: with no `next` stored it does nothing, and a
    /// promotion interrupted half-way is finished by the next call.
    async fn promote_next(&self) -> Result<(), String>;
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

    fn slot(path: &Path, slot: &str) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".");
        name.push(slot);
        PathBuf::from(name)
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename,
/// directory fsync) with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let e = |what: &str, err: std::io::Error| format!("{what} {}: {err}", path.display());
    let tmp = FileCaStore::slot(path, "tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|err| e("cannot write", err))?;
    f.write_all(bytes).map_err(|err| e("cannot write", err))?;
    f.sync_all().map_err(|err| e("cannot write", err))?;
    std::fs::rename(&tmp, path).map_err(|err| e("cannot replace", err))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|err| format!("cannot sync {}: {err}", dir.display()))?;
    }
    Ok(())
}

fn read_opt(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn remove_opt(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("the file thread failed: {e}")))
}

impl FileCaStore {
    /// Promotion, in an order every crash point of which [`CaStore::read_current`]
    /// and [`CaStore::read_next`] read consistently:
    /// 1. the current pair copied to `.previous` (skipped when it already
    ///    is the next CA: a repeated promotion);
    /// 2. `<ca_key>.next` renamed onto `ca_key`;
    /// 3. `<ca_cert>.next` renamed onto `ca_cert`.
    ///
    /// Between 2 and 3 the key is new and the certificate old: while
    /// `<ca_cert>.next` exists without `<ca_key>.next`, the current
    /// certificate is `<ca_cert>.next` (and so is the next).
    fn promote_blocking(&self) -> Result<(), String> {
        let (cert_next, key_next) = (
            Self::slot(&self.cert, "next"),
            Self::slot(&self.key, "next"),
        );
        let Some(next_cert) = read_opt(&cert_next)? else {
            return Ok(());
        };
        if key_next.exists() {
            let current_cert = read_opt(&self.cert)?;
            if current_cert.as_deref() != Some(next_cert.as_str())
                && let Some(c) = current_cert
            {
                let key = std::fs::read(&self.key)
                    .map_err(|e| format!("cannot read {}: {e}", self.key.display()))?;
                let key = zeroize::Zeroizing::new(key);
                write_atomic(&Self::slot(&self.key, "previous"), &key, 0o600)?;
                write_atomic(&Self::slot(&self.cert, "previous"), c.as_bytes(), 0o644)?;
            }
            std::fs::rename(&key_next, &self.key).map_err(|e| {
                format!(
                    "cannot rename {} to {}: {e}",
                    key_next.display(),
                    self.key.display()
                )
            })?;
            sync_dir(&self.key)?;
        }
        crate::crash::point("ca-mid-promote");
        std::fs::rename(&cert_next, &self.cert).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                cert_next.display(),
                self.cert.display()
            )
        })?;
        sync_dir(&self.cert)
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
        let (cert_next, key_next) = (Self::slot(&cert, "next"), Self::slot(&key, "next"));
        let read = |field: &str, p: &Path| {
            std::fs::read_to_string(p).map_err(|e| {
                (
                    field.to_string(),
                    format!("cannot read {}: {e}", p.display()),
                )
            })
        };
        tokio::task::spawn_blocking(move || {
            // A promotion may run meanwhile (another replica): the pair read
            // is consistent when the promotion's state (which `.next` files
            // exist) is the same before and after reading it. Between its two
            // renames the key is already the next CA's, and so is the
            // certificate to read (see `promote_blocking`).
            let state = || (cert_next.exists(), key_next.exists());
            let mut attempt = 0;
            loop {
                let before = state();
                let cert_path = if before == (true, false) {
                    &cert_next
                } else {
                    &cert
                };
                let read_pair = || {
                    Ok::<_, (String, String)>(CaMaterial {
                        cert_pem: read("ca_cert", cert_path)?,
                        key_pem: SecretString::from(read("ca_key", &key)?),
                    })
                };
                let result = read_pair();
                attempt += 1;
                if state() == before || attempt >= 5 {
                    return result;
                }
            }
        })
        .await
        .unwrap_or_else(|e| Err(("ca_cert".into(), format!("reading thread failed: {e}"))))
    }

    async fn read_next(&self) -> Result<Option<CaMaterial>, String> {
        let (cert_next, key_next, key) = (
            Self::slot(&self.cert, "next"),
            Self::slot(&self.key, "next"),
            self.key.clone(),
        );
        blocking(move || {
            let Some(cert_pem) = read_opt(&cert_next)? else {
                return Ok(None);
            };
            // Half-promoted: the next key is already the current key.
            let key_pem = match read_opt(&key_next)? {
                Some(k) => k,
                None => read_opt(&key)?.ok_or_else(|| format!("{} is missing", key.display()))?,
            };
            Ok(Some(CaMaterial {
                cert_pem,
                key_pem: SecretString::from(key_pem),
            }))
        })
        .await
    }

    async fn write_next(&self, ca: &CaMaterial) -> Result<(), String> {
        use secrecy::ExposeSecret;
        let (cert_next, key_next) = (
            Self::slot(&self.cert, "next"),
            Self::slot(&self.key, "next"),
        );
        let cert = ca.cert_pem.clone();
        let key = zeroize::Zeroizing::new(ca.key_pem.expose_secret().as_bytes().to_vec());
        blocking(move || {
            // The key first: a certificate without its key is never `next`.
            remove_opt(&cert_next)?;
            write_atomic(&key_next, &key, 0o600)?;
            write_atomic(&cert_next, cert.as_bytes(), 0o644)
        })
        .await
    }

    async fn discard_next(&self) -> Result<(), String> {
        let (cert_next, key_next) = (
            Self::slot(&self.cert, "next"),
            Self::slot(&self.key, "next"),
        );
        blocking(move || {
            if !key_next.exists() && cert_next.exists() {
                return Err(format!(
                    "{} is half-promoted (its key is already current); refusing to discard it",
                    cert_next.display()
                ));
            }
            remove_opt(&cert_next)?;
            remove_opt(&key_next)
        })
        .await
    }

    async fn promote_next(&self) -> Result<(), String> {
        let me = self.clone();
        blocking(move || me.promote_blocking()).await
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
