//! Pure X.509 helpers shared by the CA, the trust bundles and the CSR
//! issuer: key identifiers, fingerprints, PEM splitting, and the checks a
//! CA certificate must pass before rekey signs with it.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use x509_parser::{certificate::X509Certificate, pem::Pem};

/// The key identifier of a public key by RFC 7093 section 2, method 1: the
/// leftmost 160 bits of the SHA-256 hash of the subjectPublicKey BIT STRING
/// (its value, without tag, length and unused-bits octet). Used for the
/// subjectKeyIdentifier of every certificate rekey makes and so for the
/// authorityKeyIdentifier of the leaves its CAs sign.
///
/// `raw_public_key` is what `rcgen::PublicKeyData::der_bytes` returns and
/// what x509-parser calls `subject_public_key.data`.
pub fn key_identifier(raw_public_key: &[u8]) -> Vec<u8> {
    Sha256::digest(raw_public_key)[..20].to_vec()
}

/// The start of an Ed25519 key in PKCS#8 v2 (RFC 5958, with the public
/// key), as ring and aws-lc write it, up to the 32-byte seed.
const ED25519_PKCS8_V2: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The same in PKCS#8 v1 (RFC 8410 section 7: version 0, no public key).
const ED25519_PKCS8_V1: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The PKCS#8 PEM of a key pair in the form every consumer reads. Ed25519
/// keys are written in the v1 form of RFC 8410: OpenSSL 3.0 (Debian 12's,
/// and so nginx, HAProxy and `openssl` there) refuses the v2 form with the
/// public key that rcgen's backends write, while Go, rustls and OpenSSL
/// 3.2+ read both. Other key types are written as rcgen writes them.
pub fn key_pem(key: &rcgen::KeyPair) -> secrecy::SecretString {
    use base64::Engine;
    let der = zeroize::Zeroizing::new(key.serialize_der());
    if der.len() == 83 && der[..16] == ED25519_PKCS8_V2 {
        let mut v1 = zeroize::Zeroizing::new(Vec::with_capacity(48));
        v1.extend_from_slice(&ED25519_PKCS8_V1);
        v1.extend_from_slice(&der[16..48]);
        let b64 = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*v1));
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        return secrecy::SecretString::from(pem);
    }
    secrecy::SecretString::from(key.serialize_pem())
}

/// sha256 of DER, lower-case hex: the fingerprint rekey records and shows.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A certificate's time as chrono.
pub fn to_chrono(t: x509_parser::time::ASN1Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or_default()
}

/// Every `CERTIFICATE` block of a PEM text, as (PEM text of the block, DER).
/// Other blocks are skipped; a malformed block is an error.
pub fn split_certificates(pem: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("bad PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block
            .parse_x509()
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        out.push((to_pem(&block.contents), block.contents));
    }
    Ok(out)
}

/// PEM text of one certificate's DER.
pub fn to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
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

/// Why a certificate cannot be an issuing CA (the message names what is
/// missing, for `issuer[NAME].FIELD: ...`).
pub fn ca_problem(x: &X509Certificate<'_>, now: DateTime<Utc>) -> Option<String> {
    let bc = x.basic_constraints().ok().flatten().map(|e| e.value);
    if !bc.is_some_and(|b| b.ca) {
        return Some("is not a CA certificate (basicConstraints CA:TRUE missing)".into());
    }
    match x.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => {}
        Ok(Some(_)) => {
            return Some("may not sign certificates (keyUsage without keyCertSign)".into());
        }
        Ok(None) => {
            return Some(
                "may not sign certificates (no keyUsage extension with keyCertSign)".into(),
            );
        }
        Err(e) => return Some(format!("has an unreadable keyUsage extension: {e}")),
    }
    let not_after = to_chrono(x.validity().not_after);
    if not_after <= now {
        return Some(format!(
            "expired at {}: every certificate it signed is invalid",
            not_after.to_rfc3339()
        ));
    }
    None
}

/// The subjectKeyIdentifier of a certificate, if it has one.
pub fn subject_key_identifier(x: &X509Certificate<'_>) -> Option<Vec<u8>> {
    x.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_keys_are_written_in_the_rfc_8410_form_and_read_back() {
        use base64::Engine;
        use secrecy::ExposeSecret;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let pem = key_pem(&key);
        let body: String = pem
            .expose_secret()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(der[..16], ED25519_PKCS8_V1);
        let back = rcgen::KeyPair::from_pem(pem.expose_secret()).unwrap();
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        // Other key types as rcgen writes them.
        let ec = rcgen::KeyPair::generate().unwrap();
        assert_eq!(key_pem(&ec).expose_secret(), &ec.serialize_pem());
    }

    #[test]
    fn pem_round_trip() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let two = format!("{}{}", cert.pem(), cert.pem());
        let split = split_certificates(&two).unwrap();
        assert_eq!(split.len(), 2);
        assert_eq!(split[0].1, cert.der().to_vec());
        assert_eq!(split[0].0, cert.pem().replace("\r\n", "\n"));
        assert!(
            split_certificates("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert_eq!(key_identifier(b"abc").len(), 20);
    }
}
