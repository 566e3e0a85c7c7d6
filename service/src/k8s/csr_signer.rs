//! `kubernetes-csr` issuers: certificates requested through the
//! CertificateSigningRequest API (`certificates.k8s.io/v1`), the
//! implementation of `issue::CsrSigner`. rekey never sees the signer's CA
//! key.
//!
//! ```text
//!  attempt ─► a request of ours pending for this credential? ──no──► create CSR
//!     │            (in memory: its name and key; a restart makes a new one)   │
//!     ▼◄───────────────────────────────────────────────────────────────────────┘
//!  GET CSR ─► certificate? done ─ Denied/Failed? error (next attempt: new CSR)
//!     │ not approved: may rekey approve this signer? (SelfSubjectAccessReview)
//!     │     yes ─► PUT …/approval (condition Approved, reason RekeyApproved)
//!     ▼
//!  watch it until signed or `wait` runs out ─► AwaitingApproval (retried soon)
//! ```
//!
//! rekey approves its own request only where RBAC lets it `approve` the
//! signer (`signers` in `certificates.k8s.io`, resourceName the signerName
//! or `<domain>/*`), exactly what the API server's approval admission asks;
//! otherwise someone else approves (`kubectl certificate approve NAME`) and
//! rekey waits, saying so in `rekey status`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    ByteString,
    api::{
        authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        },
        certificates::v1::{
            CertificateSigningRequest, CertificateSigningRequestCondition,
            CertificateSigningRequestSpec,
        },
    },
};
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::{
    error::{K8sError, call},
    objects::{CREDENTIAL_ANNOTATION, MANAGED_BY, VERSION_ANNOTATION, from_chrono},
};
use crate::issue::{
    CsrError, CsrRequest, CsrSigner, IssuedCert,
    csr::{build_request, csr_name, csr_usages, issued_from_signer},
};

/// The reason rekey writes on the Approved condition it sets.
pub const APPROVAL_REASON: &str = "RekeyApproved";

/// A request of ours the signer has not answered yet.
struct Pending {
    csr: String,
    key: SecretString,
    /// Hash of the spec it was made for: a changed spec makes a new request.
    spec: String,
}

/// Requests certificates from one signer.
pub struct KubeCsrSigner {
    client: kube::Client,
    signer: String,
    pending: Mutex<HashMap<String, Pending>>,
}

impl KubeCsrSigner {
    /// The signer `signer_name`, asked through `client`.
    pub fn new(client: kube::Client, signer_name: &str) -> Self {
        Self {
            client,
            signer: signer_name.to_string(),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn api(&self) -> Api<CertificateSigningRequest> {
        Api::all(self.client.clone())
    }

    /// Whether RBAC lets rekey `approve` requests for this signer: by its
    /// name, or by `<domain>/*`.
    async fn may_approve(&self) -> Result<bool, K8sError> {
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let mut names = vec![self.signer.clone()];
        if let Some((domain, _)) = self.signer.split_once('/') {
            names.push(format!("{domain}/*"));
        }
        for name in names {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some("certificates.k8s.io".into()),
                        resource: Some("signers".into()),
                        verb: Some("approve".into()),
                        name: Some(name),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = call(
                "create selfsubjectaccessreview",
                api.create(&PostParams::default(), &review),
            )
            .await?;
            if answer.status.is_some_and(|s| s.allowed) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn create(
        &self,
        req: &CsrRequest<'_>,
        spec_hash: String,
    ) -> Result<(String, SecretString), CsrError> {
        let spec = req.spec;
        let (key, pem) = build_request(spec).map_err(|e| {
            CsrError::Invalid(format!("building the request for {}: {e}", spec.name))
        })?;
        let name = csr_name(&spec.name, req.version);
        let obj = CertificateSigningRequest {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGED_BY.to_string(),
                )])),
                annotations: Some(BTreeMap::from([
                    (CREDENTIAL_ANNOTATION.to_string(), spec.name.clone()),
                    (VERSION_ANNOTATION.to_string(), req.version.to_string()),
                ])),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(pem.into_bytes()),
                signer_name: self.signer.clone(),
                expiration_seconds: Some(
                    i32::try_from(spec.lifetime.get().as_secs()).unwrap_or(i32::MAX),
                ),
                usages: Some(csr_usages(spec)),
                ..Default::default()
            },
            status: None,
        };
        call(
            format!("create certificatesigningrequest {name}"),
            self.api().create(&PostParams::default(), &obj),
        )
        .await
        .map_err(|e| CsrError::Kubernetes(e.to_string()))?;
        let key = crate::issue::x509::key_pem(&key);
        self.pending.lock().expect("pending requests").insert(
            spec.name.clone(),
            Pending {
                csr: name.clone(),
                key: key.clone(),
                spec: spec_hash,
            },
        );
        tracing::info!(credential = %spec.name, csr = %name, signer = %self.signer, "certificate requested");
        Ok((name, key))
    }

    fn forget(&self, credential: &str) {
        self.pending
            .lock()
            .expect("pending requests")
            .remove(credential);
    }

    /// Sets the Approved condition through the `approval` subresource.
    async fn approve(
        &self,
        mut csr: CertificateSigningRequest,
        credential: &str,
    ) -> Result<(), K8sError> {
        let name = csr.metadata.name.clone().unwrap_or_default();
        let status = csr.status.get_or_insert_with(Default::default);
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some(APPROVAL_REASON.into()),
                message: Some(format!(
                    "rekey approved its own request for {credential} (RBAC allows it to approve signer {})",
                    self.signer
                )),
                last_update_time: Some(from_chrono(chrono::Utc::now())),
                last_transition_time: None,
            });
        call(
            format!("approve certificatesigningrequest {name}"),
            self.api()
                .replace_subresource("approval", &name, &PostParams::default(), &csr),
        )
        .await?;
        tracing::info!(credential, csr = %name, signer = %self.signer, "request approved by rekey");
        Ok(())
    }

    /// Waits until request `name` changes after `rv`, or `left` runs out.
    async fn wait_for_change(&self, name: &str, rv: &str, left: Duration) {
        let api = self.api();
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(left.as_secs().clamp(1, 290) as u32);
        let watched = async {
            let stream = api.watch(&wp, rv).await?;
            let mut stream = stream.boxed();
            while let Some(ev) = stream.try_next().await? {
                if matches!(
                    ev,
                    WatchEvent::Modified(_) | WatchEvent::Deleted(_) | WatchEvent::Error(_)
                ) {
                    break;
                }
            }
            Ok::<(), kube::Error>(())
        };
        if let Ok(Err(e)) = tokio::time::timeout(left, watched).await {
            tracing::debug!(csr = name, error = %e, "watch of the request ended; looking again");
            // Do not spin on a failing watch.
            tokio::time::sleep(left.min(Duration::from_millis(500))).await;
        }
    }
}

fn spec_hash(spec: &crate::issue::CertificateSpec) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(spec).unwrap_or_default()))
}

fn condition<'a>(
    csr: &'a CertificateSigningRequest,
    type_: &str,
) -> Option<&'a CertificateSigningRequestCondition> {
    csr.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

#[async_trait]
impl CsrSigner for KubeCsrSigner {
    fn signer_name(&self) -> &str {
        &self.signer
    }

    async fn issue(&self, req: CsrRequest<'_>) -> Result<IssuedCert, CsrError> {
        let credential = req.spec.name.as_str();
        let hash = spec_hash(req.spec);
        let known = self
            .pending
            .lock()
            .expect("pending requests")
            .get(credential)
            .filter(|p| p.spec == hash)
            .map(|p| (p.csr.clone(), p.key.clone()));
        let (name, key) = match known {
            Some(k) => k,
            None => self.create(&req, hash).await?,
        };
        let deadline = Instant::now() + req.wait;
        let mut asked: Option<bool> = None;
        let mut refused: Option<String> = None;
        loop {
            let csr = match call(
                format!("get certificatesigningrequest {name}"),
                self.api().get(&name),
            )
            .await
            {
                Ok(c) => c,
                Err(e) if e.is_not_found() => {
                    self.forget(credential);
                    return Err(CsrError::Kubernetes(format!(
                        "CertificateSigningRequest {name} is gone (deleted or garbage-collected); the next attempt makes a new one"
                    )));
                }
                Err(e) => return Err(CsrError::Kubernetes(e.to_string())),
            };
            if let Some(cert) = csr
                .status
                .as_ref()
                .and_then(|s| s.certificate.as_ref())
                .filter(|c| !c.0.is_empty())
            {
                self.forget(credential);
                let pem = String::from_utf8_lossy(&cert.0).into_owned();
                return issued_from_signer(&pem, key);
            }
            for (type_, denied) in [("Denied", true), ("Failed", false)] {
                if let Some(c) = condition(&csr, type_) {
                    self.forget(credential);
                    let (reason, message) = (
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    );
                    return Err(if denied {
                        CsrError::Denied {
                            csr: name,
                            reason,
                            message,
                        }
                    } else {
                        CsrError::Failed {
                            csr: name,
                            reason,
                            message,
                        }
                    });
                }
            }
            let approved = condition(&csr, "Approved").is_some();
            if !approved && asked.is_none() {
                let may = self
                    .may_approve()
                    .await
                    .map_err(|e| CsrError::Kubernetes(e.to_string()))?;
                asked = Some(may);
                if may {
                    match self.approve(csr, credential).await {
                        Ok(()) => {}
                        // Changed meanwhile: look again, and ask again.
                        Err(e) if e.is_conflict() => asked = None,
                        Err(e) => refused = Some(e.to_string()),
                    }
                    continue;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let detail = if approved {
                    "approved; waiting for the signer to issue the certificate".to_string()
                } else if let Some(why) = refused {
                    format!(
                        "rekey may not approve it ({why}); approve it with `kubectl certificate approve {name}`"
                    )
                } else {
                    format!(
                        "rekey may not approve requests for this signer (RBAC: verb `approve` on `signers` named `{}`); approve it with `kubectl certificate approve {name}`",
                        self.signer
                    )
                };
                return Err(CsrError::AwaitingApproval {
                    csr: name,
                    signer: self.signer.clone(),
                    detail,
                });
            }
            let rv = csr.metadata.resource_version.clone().unwrap_or_default();
            self.wait_for_change(&name, &rv, left).await;
        }
    }
}
