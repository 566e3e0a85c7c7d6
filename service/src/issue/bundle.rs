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
//! Where a bundle comes from is a [`TrustBundles`] source: today the one
//! `[issuer]` (the issuer named `default`, [`SingleIssuer`]); the registry
//! of named issuers implements the same trait.

use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::ca::CertAuthority;

/// The issuer a `[[certificate]]` without `issuer` uses, and the name of the
/// old single `[issuer]` table.
pub const DEFAULT_ISSUER: &str = "default";

/// A trust bundle: PEM text and the fingerprints that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    pem: String,
    certificates: Vec<String>,
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
    /// The bundle of the certificates in `pem` (every `CERTIFICATE` block,
    /// in order; other blocks and text are left out). The PEM is written
    /// anew, one block per certificate, so the same CAs give the same text.
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let mut ders = Vec::new();
        for (index, block) in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).enumerate() {
            let block = block.map_err(|e| BundleError::Invalid {
                index,
                message: format!("not PEM: {e}"),
            })?;
            if block.label != "CERTIFICATE" {
                continue;
            }
            block.parse_x509().map_err(|e| BundleError::Invalid {
                index,
                message: format!("not an X.509 certificate: {e}"),
            })?;
            ders.push(block.contents);
        }
        Self::from_der(&ders)
    }

    /// The bundle of DER certificates, in order (duplicates dropped).
    pub fn from_der(ders: &[Vec<u8>]) -> Result<Self, BundleError> {
        let mut pem = String::new();
        let mut certificates: Vec<String> = Vec::with_capacity(ders.len());
        for der in ders {
            let fp = hex::encode(Sha256::digest(der));
            if certificates.contains(&fp) {
                continue;
            }
            certificates.push(fp);
            pem.push_str(&pem_block(der));
        }
        if certificates.is_empty() {
            return Err(BundleError::Empty);
        }
        let fingerprint = set_fingerprint(&certificates);
        Ok(Self {
            pem,
            certificates,
            fingerprint,
        })
    }

    /// The PEM text (the content of `ca.crt`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The bundle's fingerprint (see the module documentation).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The SHA-256 fingerprint (hex) of each CA certificate, in bundle order.
    pub fn certificates(&self) -> &[String] {
        &self.certificates
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

fn pem_block(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
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

/// Today's one issuer: `[issuer]`, named [`DEFAULT_ISSUER`], whose bundle is
/// its CA certificate.
#[derive(Debug, Clone)]
pub struct SingleIssuer {
    bundle: Option<TrustBundle>,
}

impl SingleIssuer {
    /// The bundle of `ca` (none without a CA, or if its PEM does not parse).
    pub fn new(ca: Option<&Arc<CertAuthority>>) -> Self {
        Self {
            bundle: ca.and_then(|ca| TrustBundle::from_pem(ca.cert_pem()).ok()),
        }
    }
}

impl TrustBundles for SingleIssuer {
    fn bundle(&self, issuer: &str) -> Option<TrustBundle> {
        (issuer == DEFAULT_ISSUER)
            .then(|| self.bundle.clone())
            .flatten()
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
    fn the_single_issuer_is_default() {
        let a = Arc::new(ca("a"));
        let s = SingleIssuer::new(Some(&a));
        assert!(s.bundle("default").is_some());
        assert!(s.bundle("other").is_none());
        assert!(SingleIssuer::new(None).bundle("default").is_none());
        assert!(s.changes().is_none());
    }
}
