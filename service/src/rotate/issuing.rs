//! A certificate version, issued by its issuer: the registry gives the
//! issuer's signer and trust bundle as one snapshot, a CA signs on a
//! blocking thread or the cluster signs through a CertificateSigningRequest,
//! and the material is `tls.crt` = leaf + the CA that signed it, `ca.crt` =
//! the issuer's bundle.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{error::StepError, item::Issued};
use crate::{
    issue::{CertificateSpec, CsrError, CsrRequest, IssuedCert, Issuers, Signer},
    sink::Material,
    store::engine::VersionFacts,
};

/// Longest a CSR attempt waits for approval and signing (bounded further
/// by a quarter of the lease): a signer answers in well under a second
/// once a request is approved, and an attempt waiting for a person must
/// not hold its batch.
pub const CSR_WAIT: Duration = Duration::from_secs(10);

/// Issues version `version` of certificate `spec` with its issuer.
pub(super) async fn issue_certificate(
    issuers: &Issuers,
    spec: &CertificateSpec,
    (credential_id, version_id): (i64, i64),
    now: DateTime<Utc>,
    lease: Duration,
) -> Result<Issued, StepError> {
    let issuer = issuers
        .get(spec.issuer_name())
        .map_err(StepError::UnknownIssuer)?;
    let state = issuer.current();
    let (mut cert, details) = match &state.signer {
        Signer::Ca(ca) => {
            let (ca, c) = (ca.clone(), spec.clone());
            let cert = match tokio::task::spawn_blocking(move || ca.issue(&c, now)).await {
                Ok(Ok(cert)) => cert,
                Ok(Err(e)) => return Err(StepError::Issue(e)),
                Err(e) => return Err(StepError::IssuingThread(e)),
            };
            let details = serde_json::json!({
                "issuer": issuer.name(),
                "ca_fingerprint": state.signer.ca().map(|ca| ca.fingerprint().to_string()),
            });
            (cert, details)
        }
        Signer::KubernetesCsr(signer) => {
            let req = CsrRequest {
                spec,
                version: version_id,
                now,
                wait: CSR_WAIT.min(lease / 4),
            };
            let cert = signer.issue(req).await.map_err(|e| match e {
                e @ CsrError::AwaitingApproval { .. } => StepError::AwaitingApproval(e),
                e => StepError::Csr(e),
            })?;
            let details = serde_json::json!({
                "issuer": issuer.name(),
                "signer_name": signer.signer_name(),
                "ca_fingerprint": state.bundle.issuer_of(&cert.cert_pem).map(|c| c.fingerprint.clone()),
            });
            (cert, details)
        }
    };
    if cert.ca_pem.is_empty()
        && let Some(ca) = state.bundle.issuer_of(&cert.cert_pem)
    {
        cert.ca_pem = ca.pem.clone();
    }
    let IssuedCert {
        cert_pem,
        key_pem,
        ca_pem,
        fingerprint,
        serial,
        not_before,
        not_after,
    } = cert;
    Ok(Issued {
        facts: VersionFacts {
            version_id,
            credential_id,
            fingerprint,
            serial: Some(serial),
            not_before,
            not_after,
            details: with_bundle(details, state.bundle.fingerprint()),
        },
        material: Some(Material::Certificate {
            chain_pem: format!("{cert_pem}{ca_pem}"),
            key_pem,
            ca_pem: state.bundle.pem().to_string(),
        }),
    })
}

/// The version's details plus the fingerprint of the bundle its `ca.crt`
/// holds (read into `credentials.bundle_fingerprint` at commit).
fn with_bundle(mut details: serde_json::Value, bundle: &str) -> serde_json::Value {
    if let Some(map) = details.as_object_mut() {
        map.insert("bundle_fingerprint".into(), bundle.into());
    }
    details
}
