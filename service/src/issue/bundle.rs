//! Trust bundles: the CA certificates a consumer of an issuer must trust
//! right now (one normally; the old and the new CA during a rotation), as
//! published in every sink's `ca.crt` and by `[[bundle]]` targets.
//!
//! A bundle is identified by its **fingerprint**: the lower-case hex SHA-256
//! of the sorted, de-duplicated SHA-256 digests (32 raw bytes each) of its
//! certificates' DER. It depends on the set of CAs only, not on their order
//! or on the PEM text around them, so "this sink holds the new bundle" is a
//! comparison of two strings (`credentials.bundle_fingerprint`,
//! `bundle_targets.bundle_fingerprint`).
//!
//! Where a bundle comes from is a [`TrustBundles`] source: the registry of
//! named issuers ([`super::Issuers`]) implements it.

use sha2::{Digest, Sha256};

use super::{
    ca::CertAuthority,
    x509::{fingerprint, split_certificates, to_chrono, to_pem},
};

/// One CA certificate of a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleCert {
    /// PEM (one block, `\n` line ends).
    pub pem: String,
    /// DER.
    pub der: Vec<u8>,
    /// sha256 of the DER, lower-case hex.
    pub fingerprint: String,
    /// Subject DN.
    pub subject: String,
    /// End of validity.
    pub not_after: chrono::DateTime<chrono::Utc>,
}

/// The CA certificates an issuer's consumers must trust right now, in
/// order (the signing CA first). Published as `ca.crt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    certs: Vec<BundleCert>,
    certificates: Vec<String>,
    pem: String,
    fingerprint: String,
}

/// Why PEM text is not a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// No `CERTIFICATE` block in the text.
    #[error("no PEM certificate in the trust bundle")]
    Empty,
    /// A block is not an X.509 certificate.
    #[error("certificate {index} of the trust bundle: {message}")]
    Invalid {
        /// Position in the text (0-based).
        index: usize,
        /// What is wrong.
        message: String,
    },
}

impl TrustBundle {
    /// A bundle of these certificates (DER), in order; duplicates dropped.
    pub fn new(ders: impl IntoIterator<Item = Vec<u8>>) -> Result<Self, BundleError> {
        let mut certs: Vec<BundleCert> = Vec::new();
        for (index, der) in ders.into_iter().enumerate() {
            let (_, x) =
                x509_parser::parse_x509_certificate(&der).map_err(|e| BundleError::Invalid {
                    index,
                    message: format!("not an X.509 certificate: {e}"),
                })?;
            let cert = BundleCert {
                pem: to_pem(&der),
                fingerprint: fingerprint(&der),
                subject: x.subject().to_string(),
                not_after: to_chrono(x.validity().not_after),
                der: der.clone(),
            };
            if !certs.iter().any(|c| c.fingerprint == cert.fingerprint) {
                certs.push(cert);
            }
        }
        if certs.is_empty() {
            return Err(BundleError::Empty);
        }
        let certificates: Vec<String> = certs.iter().map(|c| c.fingerprint.clone()).collect();
        Ok(Self {
            pem: certs.iter().map(|c| c.pem.as_str()).collect(),
            fingerprint: set_fingerprint(&certificates),
            certificates,
            certs,
        })
    }

    /// The bundle of DER certificates, in order (duplicates dropped).
    pub fn from_der(ders: &[Vec<u8>]) -> Result<Self, BundleError> {
        Self::new(ders.iter().cloned())
    }

    /// The bundle of one CA.
    pub fn of_ca(ca: &CertAuthority) -> Self {
        Self::new([ca.cert_der().to_vec()]).expect("a loaded CA parses")
    }

    /// The bundle of the certificates in `pem` (every `CERTIFICATE` block,
    /// in order; other blocks and text are left out). The PEM is written
    /// anew, one block per certificate, so the same CAs give the same text.
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let certs = split_certificates(pem)
            .map_err(|message| BundleError::Invalid { index: 0, message })?;
        Self::new(certs.into_iter().map(|(_, der)| der))
    }

    /// The certificates, in order.
    pub fn certs(&self) -> &[BundleCert] {
        &self.certs
    }

    /// The PEM text (the content of `ca.crt`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The bundle's fingerprint (see the module documentation): what a sink
    /// records to say which bundle it holds.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The SHA-256 fingerprint (hex) of each CA certificate, in bundle order.
    pub fn certificates(&self) -> &[String] {
        &self.certificates
    }

    /// Each certificate's fingerprint, in order (`rekey ca status`'s `bundle`).
    pub fn fingerprints(&self) -> Vec<String> {
        self.certificates.clone()
    }

    /// The bundle certificate whose subject is the issuer of `leaf_pem` and
    /// whose key verifies its signature (to complete a chain a signer
    /// returned without its CA).
    pub fn issuer_of(&self, leaf_pem: &str) -> Option<&BundleCert> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(leaf_pem.as_bytes()).ok()?;
        let leaf = pem.parse_x509().ok()?;
        self.certs.iter().find(|c| {
            x509_parser::parse_x509_certificate(&c.der).is_ok_and(|(_, ca)| {
                ca.subject() == leaf.issuer()
                    && leaf.verify_signature(Some(ca.public_key())).is_ok()
            })
        })
    }
}

/// The fingerprint of the bundle in `pem`, or `None` when it holds no
/// certificate (what a sink holds may be anything: this never fails).
pub fn fingerprint_of_pem(pem: &str) -> Option<String> {
    TrustBundle::from_pem(pem)
        .ok()
        .map(|b| b.fingerprint().to_string())
}

fn set_fingerprint(certificates: &[String]) -> String {
    let mut digests: Vec<Vec<u8>> = certificates
        .iter()
        .filter_map(|c| hex::decode(c).ok())
        .collect();
    digests.sort();
    digests.dedup();
    let mut h = Sha256::new();
    for d in &digests {
        h.update(d);
    }
    hex::encode(h.finalize())
}

/// Where the trust bundle of an issuer comes from.
///
/// Called whenever something is published: implementations answer from
/// memory. A bundle changes during a CA rotation; [`TrustBundles::changes`]
/// lets `[[bundle]]` targets follow at once instead of at their next check.
pub trait TrustBundles: Send + Sync {
    /// The current bundle of `issuer`, `None` for an unknown issuer.
    fn bundle(&self, issuer: &str) -> Option<TrustBundle>;

    /// A receiver that changes whenever some issuer's bundle changes (`None`:
    /// bundles never change while the process runs).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, Utc};

    use super::*;
    use crate::issue::KeyType;

    fn ca(name: &str) -> CertAuthority {
        CertAuthority::generate(name, KeyType::EcdsaP256, TimeDelta::days(1), Utc::now())
            .unwrap()
            .0
    }

    #[test]
    fn the_fingerprint_is_the_set_of_cas() {
        let (a, b) = (ca("a"), ca("b"));
        let ab = TrustBundle::from_pem(&format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
        let ba = TrustBundle::from_pem(&format!(
            "junk\n{}\n{}{}",
            b.cert_pem(),
            a.cert_pem(),
            b.cert_pem()
        ))
        .unwrap();
        assert_eq!(ab.fingerprint(), ba.fingerprint());
        assert_eq!(ba.certificates().len(), 2, "duplicates dropped");
        let only_a = TrustBundle::from_pem(a.cert_pem()).unwrap();
        assert_ne!(only_a.fingerprint(), ab.fingerprint());
        assert_eq!(
            TrustBundle::from_pem(only_a.pem()).unwrap(),
            only_a,
            "the PEM written reads back as the same bundle"
        );
        assert_eq!(TrustBundle::from_pem("nothing"), Err(BundleError::Empty));
        assert_eq!(fingerprint_of_pem(""), None);
        assert_eq!(
            fingerprint_of_pem(a.cert_pem()).as_deref(),
            Some(only_a.fingerprint())
        );
    }

    #[test]
    fn the_registry_is_the_source_and_says_when_bundles_change() {
        let a = std::sync::Arc::new(ca("a"));
        let issuers = crate::issue::Issuers::default_ca(a.clone());
        let s: &dyn TrustBundles = &issuers;
        assert_eq!(s.bundle("default"), Some(TrustBundle::of_ca(&a)));
        assert!(s.bundle("other").is_none());
        let changes = s.changes().expect("the registry reports changes");
        assert!(!changes.has_changed().unwrap());
        let both =
            TrustBundle::from_pem(&format!("{}{}", a.cert_pem(), ca("b").cert_pem())).unwrap();
        issuers.get("default").unwrap().set_bundle(both.clone());
        assert!(changes.has_changed().unwrap());
        assert_eq!(s.bundle("default"), Some(both));
    }
}
