//! The CSR signing flow as kube-controller-manager runs it: a signer for
//! configured signer names ([`super::KubeStandIn::add_signer`]) watches
//! CertificateSigningRequests and signs each approved one with the
//! stand-in's CA, or marks it `Failed` when the signer's rules refuse it.
//!
//! What it honours, as the real `csrsigning` controller does:
//! - only requests with the condition `Approved` and no `Failed`, no
//!   certificate yet;
//! - `spec.expirationSeconds` (validated by the API at 600 s minimum), capped
//!   at the cluster signing duration (one year); without it, that duration;
//!   `notBefore` back-dated five minutes (less for short certificates);
//! - the subject and SANs of the request, key usages and extended key
//!   usages from `spec.usages`, basicConstraints CA:FALSE, SKI and AKI;
//! - the rules of the `kubernetes.io/*` signers (allowed usages, node
//!   subjects), refused with `Failed`, reason `SignerValidationFailure`.
//!
//! The approval itself is the API server's `approval` subresource (see
//! `handlers`), with its admission check: `approve` on `signers`.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{TimeDelta, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    Shared,
    store::{ApiError, World, resource_type, timestamp},
};

/// kube-controller-manager's `--cluster-signing-duration` default.
pub const SIGNING_DURATION: TimeDelta = TimeDelta::days(365);

/// The longest back-dating of `notBefore` (the controller's five minutes).
const BACKDATE: TimeDelta = TimeDelta::minutes(5);

/// The CA the stand-in's signer signs with (its serving CA, as kubeadm's
/// controller-manager signs with the cluster CA).
pub(crate) struct SigningCa {
    pub params: rcgen::CertificateParams,
    pub key: rcgen::KeyPair,
}

fn condition(csr: &Value, type_: &str) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == "True")
}

fn key_usages(
    usages: &[String],
) -> (
    Vec<rcgen::KeyUsagePurpose>,
    Vec<rcgen::ExtendedKeyUsagePurpose>,
) {
    use rcgen::{ExtendedKeyUsagePurpose as E, KeyUsagePurpose as K};
    let (mut ku, mut eku) = (Vec::new(), Vec::new());
    for u in usages {
        match u.as_str() {
            "signing" | "digital signature" => ku.push(K::DigitalSignature),
            "content commitment" => ku.push(K::ContentCommitment),
            "key encipherment" => ku.push(K::KeyEncipherment),
            "key agreement" => ku.push(K::KeyAgreement),
            "data encipherment" => ku.push(K::DataEncipherment),
            "server auth" => eku.push(E::ServerAuth),
            "client auth" => eku.push(E::ClientAuth),
            "code signing" => eku.push(E::CodeSigning),
            "email protection" => eku.push(E::EmailProtection),
            "timestamping" => eku.push(E::TimeStamping),
            "ocsp signing" => eku.push(E::OcspSigning),
            _ => {}
        }
    }
    ku.dedup();
    eku.dedup();
    (ku, eku)
}

/// Why a `kubernetes.io/*` signer refuses a request (`None`: it signs).
fn signer_rules(
    signer: &str,
    usages: &[String],
    params: &rcgen::CertificateSigningRequestParams,
    subject: &Subject,
) -> Option<String> {
    let has = |u: &str| usages.iter().any(|x| x == u);
    let only = |allowed: &[&str]| {
        usages
            .iter()
            .find(|u| !allowed.contains(&u.as_str()))
            .cloned()
    };
    let node_subject = || {
        let cn = subject.cn.clone().unwrap_or_default();
        if !cn.starts_with("system:node:") {
            return Some(format!(
                "subject common name must begin with \"system:node:\", got {cn:?}"
            ));
        }
        if subject.o != ["system:nodes"] {
            return Some(format!(
                "subject organization must be \"system:nodes\", got {:?}",
                subject.o
            ));
        }
        None
    };
    match signer {
        "kubernetes.io/kube-apiserver-client" | "kubernetes.io/kube-apiserver-client-kubelet" => {
            if let Some(u) = only(&["digital signature", "key encipherment", "client auth"]) {
                return Some(format!("invalid usage for client certificate: {u}"));
            }
            if !has("client auth") {
                return Some("missing required usage for client certificate: client auth".into());
            }
            if signer.ends_with("-kubelet") {
                if !params.params.subject_alt_names.is_empty() {
                    return Some(
                        "subjectAltNames are not allowed for kubelet client certificates".into(),
                    );
                }
                return node_subject();
            }
            None
        }
        "kubernetes.io/kubelet-serving" => {
            if let Some(u) = only(&["digital signature", "key encipherment", "server auth"]) {
                return Some(format!(
                    "invalid usage for kubelet serving certificate: {u}"
                ));
            }
            if !has("server auth") {
                return Some(
                    "missing required usage for kubelet serving certificate: server auth".into(),
                );
            }
            node_subject()
        }
        "kubernetes.io/legacy-unknown" => Some("the legacy-unknown signer signs nothing".into()),
        _ => None,
    }
}

/// A request's subject: common name and organizations.
struct Subject {
    cn: Option<String>,
    o: Vec<String>,
}

fn subject_of(pem: &str) -> Result<Subject, String> {
    use x509_parser::prelude::FromDer;
    let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .ok_or("no PEM block")?
        .map_err(|e| e.to_string())?;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
            .map_err(|e| e.to_string())?;
    let name = &req.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(String::from).unwrap_or_default()
    };
    Ok(Subject {
        cn: name.iter_common_name().next().map(text),
        o: name.iter_organization().map(text).collect(),
    })
}

/// What signing an approved request gives: `status.certificate` (PEM), or
/// the `Failed` condition's message.
pub(crate) fn sign(ca: &SigningCa, csr: &Value) -> Result<String, String> {
    let pem = STANDARD
        .decode(csr["spec"]["request"].as_str().unwrap_or(""))
        .map_err(|e| format!("request is not base64: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|e| e.to_string())?;
    let mut req = rcgen::CertificateSigningRequestParams::from_pem(&pem)
        .map_err(|e| format!("unable to parse csr: {e}"))?;
    let usages: Vec<String> = csr["spec"]["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(String::from))
        .collect();
    let signer = csr["spec"]["signerName"].as_str().unwrap_or("");
    let subject = subject_of(&pem).map_err(|e| format!("unable to parse csr: {e}"))?;
    if let Some(why) = signer_rules(signer, &usages, &req, &subject) {
        return Err(why);
    }
    let ttl = csr["spec"]["expirationSeconds"]
        .as_i64()
        .map(TimeDelta::seconds)
        .unwrap_or(SIGNING_DURATION)
        .min(SIGNING_DURATION);
    let now = Utc::now();
    // The controller back-dates by five minutes, but never by more than
    // half of a short certificate's life.
    let backdate = BACKDATE.min(ttl / 2);
    let to = |t: chrono::DateTime<Utc>| {
        time::OffsetDateTime::from_unix_timestamp(t.timestamp()).expect("time")
    };
    let p = &mut req.params;
    p.not_before = to(now - backdate);
    p.not_after = to(now + ttl);
    let (ku, eku) = key_usages(&usages);
    p.key_usages = ku;
    p.extended_key_usages = eku;
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 1;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    let cert = req
        .signed_by(&issuer)
        .map_err(|e| format!("signing failed: {e}"))?;
    Ok(cert.pem())
}

/// Signs or fails one request if it is due (approved, for a configured
/// signer, not yet answered). Returns whether it changed the request.
fn answer(world: &mut World, ca: &SigningCa, signers: &[String], csr: &Value) -> bool {
    let signer = csr["spec"]["signerName"].as_str().unwrap_or("");
    let answered = csr["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
        || condition(csr, "Failed")
        || condition(csr, "Denied");
    if !signers.iter().any(|s| s == signer) || answered || !condition(csr, "Approved") {
        return false;
    }
    let rt = resource_type("certificates.k8s.io", "v1", "certificatesigningrequests").expect("csr");
    let name = csr["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut new = csr.clone();
    match sign(ca, csr) {
        Ok(pem) => new["status"]["certificate"] = json!(STANDARD.encode(pem)),
        Err(why) => {
            let mut conds = new["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conds.push(json!({
                "type": "Failed", "status": "True", "reason": "SignerValidationFailure",
                "message": why, "lastUpdateTime": timestamp(),
            }));
            new["status"]["conditions"] = json!(conds);
        }
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    world.replace(&rt, "", &name, new).is_ok()
}

/// Signs every due request now (at start and after the event log lagged).
fn answer_all(shared: &Shared) {
    let signers = shared.signers.lock().expect("signers").clone();
    if signers.is_empty() {
        return;
    }
    let rt = resource_type("certificates.k8s.io", "v1", "certificatesigningrequests").expect("csr");
    let mut w = shared.world.lock().expect("world");
    let due: Vec<Value> = w.list(&rt, None).into_iter().cloned().collect();
    for csr in due {
        answer(&mut w, &shared.signing_ca, &signers, &csr);
    }
}

/// The controller loop: every CSR change is looked at; runs until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut rx = {
        let w = shared.world.lock().expect("world");
        w.subscribe_after(w.resource_version()).1
    };
    let mut kick = shared.signers_changed.subscribe();
    answer_all(&shared);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = kick.changed() => answer_all(&shared),
            ev = rx.recv() => match ev {
                Ok(e) if e.rt.kind == "CertificateSigningRequest" && e.kind != "DELETED" => {
                    let signers = shared.signers.lock().expect("signers").clone();
                    let mut w = shared.world.lock().expect("world");
                    // The stored object, which may be newer than the event's.
                    let name = e.object["metadata"]["name"].as_str().unwrap_or("");
                    if let Some(csr) = w.get(&e.rt, "", name).cloned() {
                        answer(&mut w, &shared.signing_ca, &signers, &csr);
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => answer_all(&shared),
                Err(_) => return,
            },
        }
    }
}

/// The usages the certificates API knows (`spec.usages` must be among them).
pub const KNOWN_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The forbidden error of the approval admission check.
pub(crate) fn approval_forbidden(name: &str, signer: &str) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "certificatesigningrequests.certificates.k8s.io \"{name}\" is forbidden: user not permitted to approve requests with signerName \"{signer}\""
        ),
    )
}
