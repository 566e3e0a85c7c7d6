//! The internal CA and leaf-certificate issuance (rcgen on aws-lc-rs): what
//! a `[[certificate]]` spec becomes.
//!
//! Issuing is pure CPU: no I/O, no clock (the caller passes `now`), so the
//! engine can run it on blocking threads and tests can pin time.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use chrono::{DateTime, TimeDelta, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, RsaKeySize, SanType, SerialNumber,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::spec::{CertificateSpec, KeyType, Usage};

/// How far a leaf's `not_before` is back-dated for clock skew, at most.
pub const MAX_BACKDATE: TimeDelta = TimeDelta::seconds(60);

/// How far the `not_before` of a leaf with this lifetime is back-dated: a
/// tenth of the lifetime, at most [`MAX_BACKDATE`].
pub fn backdate(lifetime: TimeDelta) -> TimeDelta {
    (lifetime / 10).min(MAX_BACKDATE)
}

/// Errors loading a CA or issuing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// A CA file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A CA file is not what it should be.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file exists and `--force` was not given.
    #[error("{} already exists (pass --force to overwrite)", .0.display())]
    Exists(PathBuf),
    /// Writing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen refused the parameters or failed to generate a key.
    #[error("issuing `{name}`: {source}")]
    Rcgen {
        /// The credential.
        name: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
}

/// A certificate authority that signs leaf certificates.
pub struct CertAuthority {
    issuer: rcgen::Issuer<'static, KeyPair>,
    cert_pem: String,
    subject: String,
    not_after: DateTime<Utc>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A freshly issued leaf certificate and its private key.
pub struct IssuedCert {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: SecretString,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// sha256 of the leaf DER, lower-case hex.
    pub fingerprint: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("fingerprint", &self.fingerprint)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn to_offset(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte: always 16 bytes long
    SerialNumber::from_slice(&bytes)
}

/// Generates a key pair of the given type.
pub fn generate_key(key: KeyType) -> Result<KeyPair, rcgen::Error> {
    match key {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    }
}

impl CertAuthority {
    /// Creates a new self-signed CA; returns it and its private key PEM.
    pub fn generate(
        common_name: &str,
        key: KeyType,
        validity: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<(Self, SecretString), IssueError> {
        let rc = |source| IssueError::Rcgen {
            name: common_name.to_string(),
            source,
        };
        let key_pair = generate_key(key).map_err(rc)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "rekey");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - MAX_BACKDATE);
        params.not_after = to_offset(now + validity);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key_pair).map_err(rc)?;
        let key_pem = SecretString::from(key_pair.serialize_pem());
        let cert_pem = cert.pem();
        let issuer = rcgen::Issuer::new(params, key_pair);
        Ok((
            Self {
                issuer,
                cert_pem,
                subject: common_name.to_string(),
                not_after: now + validity,
            },
            key_pem,
        ))
    }

    /// Loads a CA from PEM files, checking that the key matches the certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IssueError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| IssueError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = SecretString::from(read(key_path)?);
        Self::from_pem(&cert_pem, &key_pem, cert_path, key_path)
    }

    /// Builds a CA from PEM text; the paths are only for error messages.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &SecretString,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, IssueError> {
        let invalid = |path: &Path, message: String| IssueError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let key_pair = KeyPair::from_pem(key_pem.expose_secret()).map_err(|e| {
            invalid(
                key_path,
                format!("not a PEM private key rekey can use: {e}"),
            )
        })?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| invalid(cert_path, format!("not a PEM certificate: {e}")))?;
        let x509 = pem
            .parse_x509()
            .map_err(|e| invalid(cert_path, format!("not an X.509 certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(invalid(
                cert_path,
                "is not a CA certificate (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key_pair.der_bytes() {
            return Err(invalid(
                key_path,
                format!("does not match the certificate in {}", cert_path.display()),
            ));
        }
        let subject = x509.subject().to_string();
        let not_after =
            DateTime::from_timestamp(x509.validity().not_after.timestamp(), 0).unwrap_or_default();
        let issuer = rcgen::Issuer::from_ca_cert_pem(cert_pem, key_pair)
            .map_err(|e| invalid(cert_path, format!("cannot use as issuer: {e}")))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_string(),
            subject,
            not_after,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the CA itself expires.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// Issues a leaf certificate for `spec`, valid from `now` (back-dated by
    /// a tenth of the lifetime, at most [`MAX_BACKDATE`]) for `spec.lifetime`.
    pub fn issue(
        &self,
        spec: &CertificateSpec,
        now: DateTime<Utc>,
    ) -> Result<IssuedCert, IssueError> {
        let rc = |source| IssueError::Rcgen {
            name: spec.name.clone(),
            source,
        };
        let key_pair = generate_key(spec.key).map_err(rc)?;
        let lifetime = spec.lifetime.chrono();
        let backdate = backdate(lifetime);
        // Whole seconds: X.509 times have no fractions.
        let not_before = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now) - backdate;
        let not_after = not_before + lifetime;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let cn = spec
            .common_name
            .clone()
            .or_else(|| spec.dns_names.first().cloned())
            .unwrap_or_else(|| spec.name.clone());
        dn.push(DnType::CommonName, cn);
        for o in &spec.organizations {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        params.distinguished_name = dn;
        let mut sans = Vec::with_capacity(spec.dns_names.len() + spec.ip_addresses.len());
        for d in &spec.dns_names {
            sans.push(SanType::DnsName(d.clone().try_into().map_err(rc)?));
        }
        sans.extend(spec.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if matches!(
            spec.key,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096
        ) {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = spec
            .usages
            .iter()
            .map(|u| match u {
                Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
                Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            })
            .collect();
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key_pair, &self.issuer).map_err(rc)?;
        let fingerprint = hex::encode(Sha256::digest(cert.der()));
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: SecretString::from(key_pair.serialize_pem()),
            ca_pem: self.cert_pem.clone(),
            fingerprint,
            serial: serial_hex,
            not_before,
            not_after,
        })
    }

    /// Writes `ca.crt` (0644) and `ca.key` (0600) into `dir`.
    pub fn write_files(
        &self,
        key_pem: &SecretString,
        dir: &Path,
        force: bool,
    ) -> Result<(), IssueError> {
        std::fs::create_dir_all(dir).map_err(|source| IssueError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if !force {
            for p in [&cert_path, &key_path] {
                if p.exists() {
                    return Err(IssueError::Exists(p.clone()));
                }
            }
        }
        write_new(&key_path, key_pem.expose_secret().as_bytes(), 0o600)?;
        write_new(&cert_path, self.cert_pem.as_bytes(), 0o644)?;
        Ok(())
    }
}

/// Writes a file with `mode` atomically (temp file in the same dir, fsync, rename).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IssueError> {
    let werr = |source| IssueError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkSpec;

    fn spec(key: KeyType) -> CertificateSpec {
        CertificateSpec {
            name: "cert/default/web".into(),
            common_name: None,
            organizations: vec![],
            dns_names: vec!["web.default.svc".into()],
            ip_addresses: vec!["10.0.0.1".parse().unwrap()],
            key,
            usages: vec![Usage::Server, Usage::Client],
            lifetime: std::time::Duration::from_secs(3600).into(),
            renew_fraction: None,
            renew_before: None,
            schedule: None,
            sink: SinkSpec::File {
                dir: "/tmp/x".into(),
            },
            adopt: false,
            reload: vec![],
            probe: None,
            probe_grace: None,
        }
    }

    #[test]
    fn issues_every_key_type_with_the_spec_validity() {
        let now = Utc::now();
        let (ca, _) =
            CertAuthority::generate("test CA", KeyType::EcdsaP256, TimeDelta::days(1), now)
                .unwrap();
        for key in [
            KeyType::EcdsaP256,
            KeyType::EcdsaP384,
            KeyType::Ed25519,
            KeyType::Rsa2048,
        ] {
            let leaf = ca.issue(&spec(key), now).unwrap();
            assert_eq!(leaf.not_after - leaf.not_before, TimeDelta::hours(1));
            assert!(now - leaf.not_before <= MAX_BACKDATE + TimeDelta::seconds(1));
            let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
            let x = pem.parse_x509().unwrap();
            let sans = x.subject_alternative_name().unwrap().unwrap();
            assert_eq!(sans.value.general_names.len(), 2);
            let eku = x.extended_key_usage().unwrap().unwrap();
            assert!(eku.value.server_auth && eku.value.client_auth);
            assert_eq!(
                x.validity().not_after.timestamp(),
                leaf.not_after.timestamp()
            );
            assert!(!format!("{leaf:?}").contains("PRIVATE"));
        }
    }

    #[test]
    fn load_rejects_mismatched_key() {
        let now = Utc::now();
        let dir = tempfile::tempdir().unwrap();
        let (a, a_key) =
            CertAuthority::generate("a", KeyType::EcdsaP256, TimeDelta::days(1), now).unwrap();
        let (_, b_key) =
            CertAuthority::generate("b", KeyType::EcdsaP256, TimeDelta::days(1), now).unwrap();
        a.write_files(&a_key, dir.path(), false).unwrap();
        assert!(matches!(
            a.write_files(&a_key, dir.path(), false),
            Err(IssueError::Exists(_))
        ));
        CertAuthority::load(&dir.path().join("ca.crt"), &dir.path().join("ca.key")).unwrap();
        std::fs::write(dir.path().join("ca.key"), b_key.expose_secret()).unwrap();
        let err = CertAuthority::load(&dir.path().join("ca.crt"), &dir.path().join("ca.key"))
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = CertAuthority::load(&dir.path().join("missing.crt"), &dir.path().join("ca.key"))
            .unwrap_err();
        assert!(err.to_string().contains("missing.crt"), "{err}");
    }
}
