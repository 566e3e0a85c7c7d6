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
    KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, RsaKeySize, SanType, SerialNumber,
};
use secrecy::{ExposeSecret, SecretString};

use super::{
    spec::{CertificateSpec, KeyType, Usage},
    x509::{ca_problem, fingerprint, key_identifier, subject_key_identifier, to_chrono, to_pem},
};

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

/// Which half of a CA a problem is in: the certificate or its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaPart {
    /// The CA certificate (`ca_cert`, `tls.crt`).
    Cert,
    /// The CA's private key (`ca_key`, `tls.key`).
    Key,
}

/// Why a certificate and key cannot be used as an issuing CA. The message
/// reads after the name of the part: "`ca.key` does not match ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CaProblem {
    /// Which part is wrong.
    pub part: CaPart,
    /// What is wrong with it.
    pub message: String,
}

impl CaProblem {
    fn cert(message: impl Into<String>) -> Self {
        Self {
            part: CaPart::Cert,
            message: message.into(),
        }
    }

    fn key(message: impl Into<String>) -> Self {
        Self {
            part: CaPart::Key,
            message: message.into(),
        }
    }
}

/// A certificate authority that signs leaf certificates.
pub struct CertAuthority {
    issuer: rcgen::Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    subject: String,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    fingerprint: String,
    key_type: Option<KeyType>,
    /// The CA certificate has a subjectKeyIdentifier: leaves get the
    /// matching authorityKeyIdentifier (without one there is nothing to
    /// point at, and the extension is left out).
    has_ski: bool,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("subject", &self.subject)
            .field("fingerprint", &self.fingerprint)
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
    /// The certificates that follow the leaf in `tls.crt`: the CA that
    /// signed it (PEM; empty when unknown, e.g. a signer that returned the
    /// leaf alone and is not in the trust bundle).
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

/// The key type of a certificate's public key, when it is one rekey issues.
fn key_type_of(x: &x509_parser::certificate::X509Certificate<'_>) -> Option<KeyType> {
    use x509_parser::{oid_registry as oids, public_key::PublicKey};
    let spki = x.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == oids::OID_SIG_ED25519 {
        return Some(KeyType::Ed25519);
    }
    match spki.parsed().ok()? {
        PublicKey::RSA(rsa) => match rsa.key_size() {
            2048 => Some(KeyType::Rsa2048),
            3072 => Some(KeyType::Rsa3072),
            4096 => Some(KeyType::Rsa4096),
            _ => None,
        },
        PublicKey::EC(ec) => match ec.key_size() {
            256 => Some(KeyType::EcdsaP256),
            384 => Some(KeyType::EcdsaP384),
            _ => None,
        },
        _ => None,
    }
}

/// Key usages of a leaf with this key: digitalSignature, and
/// keyEncipherment for RSA (TLS 1.2 RSA key exchange).
pub fn leaf_key_usages(key: KeyType) -> Vec<KeyUsagePurpose> {
    let mut out = vec![KeyUsagePurpose::DigitalSignature];
    if matches!(key, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096) {
        out.push(KeyUsagePurpose::KeyEncipherment);
    }
    out
}

impl CertAuthority {
    /// Its subjectKeyIdentifier, hex (what a leaf's authorityKeyIdentifier
    /// names); `None` for a CA certificate without one.
    pub fn key_id_hex(&self) -> Option<String> {
        let (_, x) = x509_parser::parse_x509_certificate(&self.cert_der).ok()?;
        subject_key_identifier(&x).map(hex::encode)
    }

    /// The common name of its subject, if it has one.
    pub fn common_name(&self) -> Option<String> {
        let (_, x) = x509_parser::parse_x509_certificate(&self.cert_der).ok()?;
        let cn = x
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        Some(cn)
    }

    /// Creates a new self-signed CA; returns it and its private key PEM.
    /// Its subjectKeyIdentifier is RFC 7093 method 1 ([`key_identifier`]).
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
        // Whole seconds: X.509 times have no fractions.
        let now = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
        params.not_before = to_offset(now - MAX_BACKDATE);
        params.not_after = to_offset(now + validity);
        params.serial_number = Some(random_serial());
        params.key_identifier_method =
            KeyIdMethod::PreSpecified(key_identifier(key_pair.der_bytes()));
        let cert = params.self_signed(&key_pair).map_err(rc)?;
        let key_pem = super::x509::key_pem(&key_pair);
        let cert_pem = cert.pem();
        let cert_der = cert.der().to_vec();
        let issuer = rcgen::Issuer::new(params, key_pair);
        Ok((
            Self {
                issuer,
                fingerprint: fingerprint(&cert_der),
                cert_pem,
                cert_der,
                subject: format!("CN={common_name}, O=rekey"),
                not_before: now - MAX_BACKDATE,
                not_after: now + validity,
                key_type: Some(key),
                has_ski: true,
            },
            key_pem,
        ))
    }

    /// Loads a CA from PEM files, checked as [`Self::from_pem`] checks it;
    /// the error names the file.
    pub fn load(cert_path: &Path, key_path: &Path, now: DateTime<Utc>) -> Result<Self, IssueError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| IssueError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = SecretString::from(read(key_path)?);
        Self::from_pem(&cert_pem, &key_pem, now).map_err(|p| IssueError::Invalid {
            path: match p.part {
                CaPart::Cert => cert_path.to_path_buf(),
                CaPart::Key => key_path.to_path_buf(),
            },
            message: p.message,
        })
    }

    /// Builds a CA from PEM text, checked: the certificate is a CA
    /// (basicConstraints CA:TRUE, keyUsage keyCertSign), the key is a
    /// private key rekey can sign with and matches the certificate, and the
    /// certificate has not expired at `now`. Only the first certificate of
    /// `cert_pem` is used.
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &SecretString,
        now: DateTime<Utc>,
    ) -> Result<Self, CaProblem> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| CaProblem::cert(format!("is not a PEM certificate: {e}")))?;
        let x509 = pem
            .parse_x509()
            .map_err(|e| CaProblem::cert(format!("is not an X.509 certificate: {e}")))?;
        if let Some(problem) = ca_problem(&x509, now) {
            return Err(CaProblem::cert(problem));
        }
        let key_pair = KeyPair::from_pem(key_pem.expose_secret())
            .map_err(|e| CaProblem::key(format!("is not a PEM private key rekey can use: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key_pair.der_bytes() {
            return Err(CaProblem::key("does not match the CA certificate"));
        }
        let cert_pem = to_pem(&pem.contents);
        let issuer = rcgen::Issuer::from_ca_cert_der(&pem.contents.clone().into(), key_pair)
            .map_err(|e| CaProblem::cert(format!("cannot be used as an issuer: {e}")))?;
        Ok(Self {
            issuer,
            subject: x509.subject().to_string(),
            not_before: to_chrono(x509.validity().not_before),
            not_after: to_chrono(x509.validity().not_after),
            fingerprint: fingerprint(&pem.contents),
            key_type: key_type_of(&x509),
            has_ski: subject_key_identifier(&x509).is_some(),
            cert_pem,
            cert_der: pem.contents.clone(),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// sha256 of the CA certificate's DER, lower-case hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The CA's subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the CA became valid.
    pub fn not_before(&self) -> DateTime<Utc> {
        self.not_before
    }

    /// When the CA itself expires.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.not_after
    }

    /// The CA key's type, when it is one rekey issues (a rotation makes the
    /// new CA with the same type unless configured otherwise).
    pub fn key_type(&self) -> Option<KeyType> {
        self.key_type
    }

    /// Issues a leaf certificate for `spec`, valid from `now` (back-dated by
    /// a tenth of the lifetime, at most [`MAX_BACKDATE`]) for `spec.lifetime`.
    /// The leaf carries basicConstraints CA:FALSE, a subjectKeyIdentifier
    /// (RFC 7093 method 1) and the CA's key identifier as its
    /// authorityKeyIdentifier.
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

        let mut params = leaf_params(spec).map_err(rc)?;
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_identifier_method =
            KeyIdMethod::PreSpecified(key_identifier(key_pair.der_bytes()));
        params.use_authority_key_identifier_extension = self.has_ski;
        let cert = params.signed_by(&key_pair, &self.issuer).map_err(rc)?;
        Ok(IssuedCert {
            fingerprint: fingerprint(cert.der()),
            cert_pem: cert.pem(),
            key_pem: super::x509::key_pem(&key_pair),
            ca_pem: self.cert_pem.clone(),
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

/// What a leaf's subject, names and usages are, from its spec: CN (the
/// `common_name`, else the first DNS name, else the credential name), O,
/// DNS and IP SANs, keyUsage by key type, extendedKeyUsage from `usages`.
/// Validity, serial and identifiers are the signer's to set.
pub fn leaf_params(spec: &CertificateSpec) -> Result<CertificateParams, rcgen::Error> {
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
        sans.push(SanType::DnsName(d.clone().try_into()?));
    }
    sans.extend(spec.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    params.key_usages = leaf_key_usages(spec.key);
    params.extended_key_usages = spec
        .usages
        .iter()
        .map(|u| match u {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        })
        .collect();
    Ok(params)
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
            issuer: None,
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
        let (crt, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        let loaded = CertAuthority::load(&crt, &key, now).unwrap();
        assert_eq!(loaded.fingerprint(), a.fingerprint());
        assert_eq!(loaded.key_type(), Some(KeyType::EcdsaP256));
        std::fs::write(&key, b_key.expose_secret()).unwrap();
        let err = CertAuthority::load(&crt, &key, now).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");
        let err = CertAuthority::load(&dir.path().join("missing.crt"), &key, now).unwrap_err();
        assert!(err.to_string().contains("missing.crt"), "{err}");
    }

    fn self_signed(ca: bool, usages: Vec<KeyUsagePurpose>) -> (String, SecretString) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "x");
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p.key_usages = usages;
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), SecretString::from(key.serialize_pem()))
    }

    #[test]
    fn only_a_valid_ca_with_its_key_is_accepted() {
        let now = Utc::now();
        let (leaf, leaf_key) = self_signed(false, vec![KeyUsagePurpose::DigitalSignature]);
        let e = CertAuthority::from_pem(&leaf, &leaf_key, now).unwrap_err();
        assert_eq!(e.part, CaPart::Cert);
        assert!(e.message.contains("basicConstraints CA:TRUE"), "{e}");
        let (no_sign, k) = self_signed(true, vec![KeyUsagePurpose::DigitalSignature]);
        let e = CertAuthority::from_pem(&no_sign, &k, now).unwrap_err();
        assert!(e.message.contains("keyCertSign"), "{e}");
        let (no_ku, k) = self_signed(true, vec![]);
        let e = CertAuthority::from_pem(&no_ku, &k, now).unwrap_err();
        assert!(e.message.contains("keyCertSign"), "{e}");
        let (ok, ok_key) = self_signed(true, vec![KeyUsagePurpose::KeyCertSign]);
        CertAuthority::from_pem(&ok, &ok_key, now).unwrap();
        let e = CertAuthority::from_pem(&ok, &k, now).unwrap_err();
        assert_eq!(e.part, CaPart::Key);
        let e = CertAuthority::from_pem(&ok, &SecretString::from("junk"), now).unwrap_err();
        assert_eq!(e.part, CaPart::Key);
        assert!(
            !e.message.contains("junk"),
            "no key material in errors: {e}"
        );
        let (old, old_key) =
            CertAuthority::generate("old", KeyType::EcdsaP256, TimeDelta::days(1), now).unwrap();
        let e = CertAuthority::from_pem(old.cert_pem(), &old_key, now + TimeDelta::days(2))
            .unwrap_err();
        assert!(e.message.contains("expired"), "{e}");
    }

    #[test]
    fn identifiers_are_rfc7093_method_1_and_chain() {
        let now = Utc::now();
        let (ca, ca_key) =
            CertAuthority::generate("ids", KeyType::EcdsaP384, TimeDelta::days(1), now).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let x = pem.parse_x509().unwrap();
        let ski = subject_key_identifier(&x).unwrap();
        assert_eq!(
            ski,
            key_identifier(&x.public_key().subject_public_key.data),
            "SHA-256 of the subjectPublicKey, leftmost 160 bits"
        );
        // Loaded from its PEM, the CA keeps its identifier.
        let loaded = CertAuthority::from_pem(ca.cert_pem(), &ca_key, now).unwrap();
        for signer in [&ca, &loaded] {
            let leaf = signer.issue(&spec(KeyType::Ed25519), now).unwrap();
            let (_, lp) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
            let l = lp.parse_x509().unwrap();
            let aki = l
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                        a.key_identifier.as_ref().map(|k| k.0.to_vec())
                    }
                    _ => None,
                })
                .expect("leaf has an authorityKeyIdentifier");
            assert_eq!(aki, ski);
            assert_eq!(
                subject_key_identifier(&l).unwrap(),
                key_identifier(&l.public_key().subject_public_key.data)
            );
            assert!(!l.is_ca());
            assert!(
                l.basic_constraints().unwrap().is_some(),
                "CA:FALSE is explicit"
            );
        }
    }
}
