//! `kubernetes-csr` issuers as the engine sees them: the [`CsrSigner`]
//! trait (`k8s` implements it with the CertificateSigningRequest API; this
//! module never talks to Kubernetes), and the pure parts: the request a
//! spec becomes, its name and usages, what the built-in signers accept, and
//! reading the certificate a signer returned.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rcgen::KeyPair;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{
    ca::{IssuedCert, generate_key, leaf_params},
    spec::{CertificateSpec, KeyType, Usage},
    x509::{fingerprint, split_certificates, to_chrono},
};
use crate::store::credentials::AWAITING_APPROVAL;

/// The CertificateSigningRequest API refuses `expirationSeconds` below ten
/// minutes.
pub const MIN_CSR_LIFETIME_SECS: u64 = 600;

/// One certificate to request.
#[derive(Debug, Clone, Copy)]
pub struct CsrRequest<'a> {
    /// What to request.
    pub spec: &'a CertificateSpec,
    /// The version being issued (names the request).
    pub version: i64,
    /// Now.
    pub now: DateTime<Utc>,
    /// How long to wait for approval and signing before giving up for
    /// this attempt (the request stays; a later attempt picks it up).
    pub wait: Duration,
}

/// Why a request did not give a certificate (this attempt).
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Nobody has approved the request yet (rekey may not approve requests
    /// for this signer, or the signer has not signed yet). Shown by
    /// `rekey status` as the state `awaiting-approval`.
    #[error("{AWAITING_APPROVAL}CertificateSigningRequest {csr} (signer {signer}): {detail}")]
    AwaitingApproval {
        /// The request's name.
        csr: String,
        /// Its signerName.
        signer: String,
        /// What it waits for, and how to help.
        detail: String,
    },
    /// Someone denied the request; the next attempt makes a new one.
    #[error("CertificateSigningRequest {csr} was denied ({reason}): {message}")]
    Denied {
        /// The request's name.
        csr: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// The signer refused the request; the next attempt makes a new one.
    #[error("the signer failed CertificateSigningRequest {csr} ({reason}): {message}")]
    Failed {
        /// The request's name.
        csr: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// The Kubernetes API failed or refused (the text of `k8s::K8sError`).
    #[error("{0}")]
    Kubernetes(String),
    /// The request could not be made, or what the signer returned is not
    /// usable.
    #[error("{0}")]
    Invalid(String),
}

/// Issues certificates through a cluster signer (`k8s` implements it).
#[async_trait]
pub trait CsrSigner: Send + Sync {
    /// The signerName of its requests.
    fn signer_name(&self) -> &str;

    /// Requests a certificate for `req.spec` (or picks up a request an
    /// earlier attempt left pending), approves it when rekey may, and waits
    /// up to `req.wait` for the signed certificate.
    async fn issue(&self, req: CsrRequest<'_>) -> Result<IssuedCert, CsrError>;
}

/// The name of the request for version `version` of `credential`:
/// `rekey-<credential, made a DNS label>-<hash>-<version>`, within 253
/// characters. The hash keeps credentials apart whose names differ only in
/// characters the label cannot hold.
pub fn csr_name(credential: &str, version: i64) -> String {
    let hash = &hex::encode(Sha256::digest(credential.as_bytes()))[..8];
    let mut slug: String = credential
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while slug.contains("--") {
        slug = slug.replace("--", "-");
    }
    let suffix = format!("-{hash}-{version}");
    let room = 253 - "rekey-".len() - suffix.len();
    let slug: String = slug.trim_matches('-').chars().take(room).collect();
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        format!("rekey{suffix}")
    } else {
        format!("rekey-{slug}{suffix}")
    }
}

/// The `spec.usages` of the request: `digital signature`, `key
/// encipherment` for RSA keys, and `server auth` / `client auth`.
pub fn csr_usages(spec: &CertificateSpec) -> Vec<String> {
    let mut out = vec!["digital signature".to_string()];
    if matches!(
        spec.key,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096
    ) {
        out.push("key encipherment".into());
    }
    for u in &spec.usages {
        out.push(
            match u {
                Usage::Server => "server auth",
                Usage::Client => "client auth",
            }
            .into(),
        );
    }
    out
}

/// A new key and the PKCS#10 request (PEM) for `spec`: its subject, DNS
/// and IP names. The key stays in memory only.
pub fn build_request(spec: &CertificateSpec) -> Result<(KeyPair, String), rcgen::Error> {
    let key = generate_key(spec.key)?;
    let params = leaf_params(spec)?;
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.pem()?))
}

/// What the built-in `kubernetes.io/*` signers of kube-controller-manager
/// accept, checked before a request is made: an error is `(field,
/// message)` relative to the certificate (`usages`, `organizations`,
/// `common_name`, `lifetime`). Other signers are not second-guessed, but
/// every request needs `lifetime` of at least ten minutes.
pub fn validate_for_signer(spec: &CertificateSpec, signer: &str) -> Result<(), (String, String)> {
    if spec.lifetime.get().as_secs() < MIN_CSR_LIFETIME_SECS {
        return Err((
            "lifetime".into(),
            format!(
                "{} is below the CertificateSigningRequest API's minimum expirationSeconds (10m) for signer {signer}",
                spec.lifetime
            ),
        ));
    }
    let has = |u: Usage| spec.usages.contains(&u);
    let node_subject = || {
        let cn_ok = spec
            .common_name
            .as_deref()
            .is_some_and(|c| c.starts_with("system:node:") && c.len() > "system:node:".len());
        if !cn_ok {
            return Err((
                "common_name".to_string(),
                format!("signer {signer} signs only subjects `system:node:<name>`"),
            ));
        }
        if spec.organizations != ["system:nodes"] {
            return Err((
                "organizations".to_string(),
                format!("signer {signer} signs only organizations = [\"system:nodes\"]"),
            ));
        }
        Ok(())
    };
    match signer {
        "kubernetes.io/kube-apiserver-client" | "kubernetes.io/kube-apiserver-client-kubelet"
            if has(Usage::Server) || !has(Usage::Client) =>
        {
            Err((
                "usages".into(),
                format!(
                    "signer {signer} issues client certificates only: set usages = [\"client\"]"
                ),
            ))
        }
        "kubernetes.io/kubelet-serving" if has(Usage::Client) || !has(Usage::Server) => Err((
            "usages".into(),
            format!("signer {signer} issues serving certificates only: set usages = [\"server\"]"),
        )),
        "kubernetes.io/kube-apiserver-client-kubelet" | "kubernetes.io/kubelet-serving" => {
            node_subject()
        }
        _ => Ok(()),
    }
}

/// Reads what a signer returned (`status.certificate`: the leaf, then any
/// chain) for the request made with `key_pem`: the leaf must hold that key.
pub fn issued_from_signer(chain_pem: &str, key_pem: SecretString) -> Result<IssuedCert, CsrError> {
    let certs = split_certificates(chain_pem)
        .map_err(|e| CsrError::Invalid(format!("the signer returned {e}")))?;
    let Some((leaf_pem, leaf_der)) = certs.first() else {
        return Err(CsrError::Invalid(
            "the signer returned no certificate".into(),
        ));
    };
    let (_, x) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| CsrError::Invalid(format!("the signer returned a bad certificate: {e}")))?;
    let key = KeyPair::from_pem(key_pem.expose_secret())
        .map_err(|e| CsrError::Invalid(format!("the request's key is unusable: {e}")))?;
    if x.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key) {
        return Err(CsrError::Invalid(
            "the signer returned a certificate for another key".into(),
        ));
    }
    Ok(IssuedCert {
        fingerprint: fingerprint(leaf_der),
        serial: x.raw_serial_as_string().replace(':', ""),
        not_before: to_chrono(x.validity().not_before),
        not_after: to_chrono(x.validity().not_after),
        cert_pem: leaf_pem.clone(),
        ca_pem: certs[1..].iter().map(|(p, _)| p.as_str()).collect(),
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkSpec;

    fn spec(usages: Vec<Usage>) -> CertificateSpec {
        CertificateSpec {
            name: "cert/ci/Deployer_Client".into(),
            issuer: Some("apiserver-clients".into()),
            common_name: Some("deployer".into()),
            organizations: vec![],
            dns_names: vec![],
            ip_addresses: vec![],
            key: KeyType::Rsa2048,
            usages,
            lifetime: Duration::from_secs(3600).into(),
            probe: None,
            probe_grace: None,
            renew_fraction: None,
            renew_before: None,
            schedule: None,
            sink: SinkSpec::File {
                dir: "/tmp/x".into(),
            },
            adopt: false,
            reload: vec![],
        }
    }

    #[test]
    fn names_are_dns_subdomains_and_distinct() {
        let a = csr_name("cert/ci/Deployer_Client", 42);
        assert!(a.starts_with("rekey-cert-ci-deployer-client-"), "{a}");
        assert!(a.ends_with("-42"));
        assert!(crate::sink::spec::validate_k8s_name(&a).is_ok(), "{a}");
        assert_ne!(a, csr_name("cert/ci/deployer-client", 42));
        let long = csr_name(&"x/".repeat(300), 1);
        assert!(long.len() <= 253 && crate::sink::spec::validate_k8s_name(&long).is_ok());
        assert!(crate::sink::spec::validate_k8s_name(&csr_name("///", 7)).is_ok());
    }

    #[test]
    fn built_in_signers_are_checked_before_asking() {
        let client = "kubernetes.io/kube-apiserver-client";
        assert!(validate_for_signer(&spec(vec![Usage::Client]), client).is_ok());
        let e = validate_for_signer(&spec(vec![Usage::Server, Usage::Client]), client).unwrap_err();
        assert_eq!(e.0, "usages");
        let e = validate_for_signer(&spec(vec![Usage::Server]), "kubernetes.io/kubelet-serving")
            .unwrap_err();
        assert_eq!(e.0, "common_name");
        let mut short = spec(vec![Usage::Client]);
        short.lifetime = Duration::from_secs(599).into();
        assert_eq!(
            validate_for_signer(&short, "example.com/x").unwrap_err().0,
            "lifetime"
        );
        assert!(validate_for_signer(&spec(vec![Usage::Server]), "example.com/x").is_ok());
        assert_eq!(
            csr_usages(&spec(vec![Usage::Client])),
            ["digital signature", "key encipherment", "client auth"]
        );
    }

    #[test]
    fn a_request_and_what_comes_back() {
        let s = spec(vec![Usage::Client]);
        let (key, pem) = build_request(&s).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE REQUEST"));
        let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        let now = Utc::now();
        let (ca, _) = crate::issue::CertAuthority::generate(
            "signer",
            KeyType::EcdsaP256,
            chrono::TimeDelta::days(1),
            now,
        )
        .unwrap();
        // Sign it the way a test signer would; then read it back.
        let ca_key = KeyPair::generate().unwrap();
        let mut cap = rcgen::CertificateParams::new(vec![]).unwrap();
        cap.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = cap.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(cap, ca_key);
        let leaf = params.signed_by(&issuer).unwrap();
        let chain = format!("{}{}", leaf.pem(), ca_cert.pem());
        let got = issued_from_signer(&chain, SecretString::from(key.serialize_pem())).unwrap();
        assert_eq!(got.fingerprint, fingerprint(leaf.der()));
        assert!(got.ca_pem.contains("BEGIN CERTIFICATE"));
        let other = KeyPair::generate().unwrap();
        let e = issued_from_signer(&chain, SecretString::from(other.serialize_pem())).unwrap_err();
        assert!(e.to_string().contains("another key"), "{e}");
        let _ = ca;
        let e = CsrError::AwaitingApproval {
            csr: "c".into(),
            signer: "s".into(),
            detail: "d".into(),
        };
        assert!(e.to_string().starts_with(AWAITING_APPROVAL));
    }
}
