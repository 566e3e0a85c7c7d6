//! The `kubernetes-secret` sink: one Secret per credential.
//!
//! Certificates are `kubernetes.io/tls` (`tls.crt`, `tls.key`, `ca.crt`),
//! tokens `Opaque` (`token`). Every publish carries the annotations
//! `rekey.io/version` (the commit point recovery reads) and
//! `rekey.io/not-after`. Writes use optimistic concurrency: read, then
//! replace with the resourceVersion read; a 409 re-reads and tries again.
//! A Secret without the `rekey.io/version` annotation belongs to someone
//! else and is never overwritten unless the credential says `adopt = true`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use secrecy::ExposeSecret;

use super::model::{BundleOutcome, BundleUpdate, Material, Publication, Sink, SinkError};
use crate::issue::bundle::fingerprint_of_pem;
use crate::k8s::{
    self, CREDENTIAL_ANNOTATION, K8sError, MANAGED_BY, NOT_AFTER_ANNOTATION, VERSION_ANNOTATION,
    VERSION_NUMBER_ANNOTATION,
};

/// How many read-modify-write rounds a publish tries before giving up on conflicts.
const MAX_ATTEMPTS: usize = 8;

/// A Secret sink.
#[derive(Clone)]
pub struct KubernetesSecretSink {
    client: kube::Client,
    namespace: String,
    name: String,
}

impl std::fmt::Debug for KubernetesSecretSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn remote(target: &str, e: K8sError) -> SinkError {
    SinkError::Remote {
        target: target.to_string(),
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

/// The type and data of the Secret for some material (pure).
pub fn secret_payload(m: &Material) -> (&'static str, BTreeMap<String, ByteString>) {
    let b = |s: &str| ByteString(s.as_bytes().to_vec());
    match m {
        Material::Certificate {
            chain_pem,
            key_pem,
            ca_pem,
        } => (
            "kubernetes.io/tls",
            BTreeMap::from([
                ("tls.crt".to_string(), b(chain_pem)),
                ("tls.key".to_string(), b(key_pem.expose_secret())),
                ("ca.crt".to_string(), b(ca_pem)),
            ]),
        ),
        Material::Token { token } => (
            "Opaque",
            BTreeMap::from([("token".to_string(), b(token.expose_secret()))]),
        ),
    }
}

/// The version rekey recorded on a Secret, if rekey published it.
pub fn version_of(s: &Secret) -> Option<i64> {
    s.metadata
        .annotations
        .as_ref()?
        .get(VERSION_ANNOTATION)?
        .parse()
        .ok()
}

/// Whether rekey owns a Secret (it carries the version annotation).
pub fn owned_by_rekey(s: &Secret) -> bool {
    s.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(VERSION_ANNOTATION))
}

impl KubernetesSecretSink {
    /// A sink writing `namespace/name`.
    pub fn new(client: kube::Client, namespace: String, name: String) -> Self {
        Self {
            client,
            namespace,
            name,
        }
    }

    fn target(&self) -> String {
        format!("secret {}/{}", self.namespace, self.name)
    }

    /// The Secret to write, on top of `existing` (keeping others' labels and annotations).
    fn desired(&self, p: &Publication<'_>, existing: Option<&Secret>) -> Secret {
        let (ty, data) = secret_payload(p.material);
        let mut meta = existing
            .map(|s| s.metadata.clone())
            .unwrap_or_else(|| ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            });
        meta.managed_fields = None;
        let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
        ann.insert(VERSION_ANNOTATION.into(), p.version.to_string());
        ann.insert(VERSION_NUMBER_ANNOTATION.into(), p.number.to_string());
        ann.insert(
            NOT_AFTER_ANNOTATION.into(),
            p.not_after
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        ann.insert(CREDENTIAL_ANNOTATION.into(), p.credential.to_string());
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
        Secret {
            metadata: meta,
            type_: Some(ty.into()),
            data: Some(data),
            immutable: None,
            string_data: None,
        }
    }

    /// One read-modify-write round; `Ok(false)` means "read again".
    /// `carried` keeps the labels and annotations of a Secret deleted to change its type.
    async fn publish_once(
        &self,
        api: &Api<Secret>,
        p: &Publication<'_>,
        carried: &mut Option<Secret>,
    ) -> Result<bool, SinkError> {
        let target = self.target();
        let existing = k8s::call(format!("get {target}"), api.get_opt(&self.name))
            .await
            .map_err(|e| remote(&target, e))?;
        let Some(existing) = existing else {
            let mut obj = self.desired(p, carried.as_ref());
            obj.metadata.uid = None;
            obj.metadata.resource_version = None;
            obj.metadata.creation_timestamp = None;
            return match k8s::call(
                format!("create {target}"),
                api.create(&PostParams::default(), &obj),
            )
            .await
            {
                Ok(_) => Ok(true),
                Err(e) if e.is_conflict() => Ok(false),
                Err(e) => Err(remote(&target, e)),
            };
        };
        if !owned_by_rekey(&existing) && !p.adopt {
            return Err(SinkError::NotOwned(target));
        }
        let (ty, _) = secret_payload(p.material);
        if existing.type_.as_deref().unwrap_or("Opaque") != ty || existing.immutable == Some(true) {
            // Type and immutable Secrets cannot change in place: replace the object.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: existing.metadata.uid.clone(),
                    resource_version: existing.metadata.resource_version.clone(),
                }),
                ..Default::default()
            };
            return match k8s::call(format!("delete {target}"), api.delete(&self.name, &dp)).await {
                Ok(_) | Err(K8sError::Api { code: 404, .. }) => {
                    *carried = Some(existing);
                    Ok(false)
                }
                Err(e) if e.is_conflict() => Ok(false),
                Err(e) => Err(remote(&target, e)),
            };
        }
        let obj = self.desired(p, Some(&existing));
        match k8s::call(
            format!("replace {target}"),
            api.replace(&self.name, &PostParams::default(), &obj),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_conflict() || e.is_not_found() => {
                tracing::debug!(target = %target, error = %e, "secret changed under us; re-reading");
                Ok(false)
            }
            Err(e) => Err(remote(&target, e)),
        }
    }
}

#[async_trait]
impl Sink for KubernetesSecretSink {
    async fn publish(&self, p: &Publication<'_>) -> Result<(), SinkError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut carried = None;
        for _ in 0..MAX_ATTEMPTS {
            if self.publish_once(&api, p, &mut carried).await? {
                return Ok(());
            }
        }
        Err(SinkError::Remote {
            target: self.target(),
            message: format!("still conflicting after {MAX_ATTEMPTS} attempts"),
            retryable: true,
        })
    }

    async fn published_version(&self) -> Result<Option<i64>, SinkError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let target = self.target();
        let s = k8s::call(format!("get {target}"), api.get_opt(&self.name))
            .await
            .map_err(|e| remote(&target, e))?;
        Ok(s.as_ref().and_then(version_of))
    }

    /// `ca.crt` replaced in place: the Secret must carry `update.version`;
    /// the replace carries the resourceVersion read, so a concurrent writer
    /// makes it fail (409) and it is read and checked again. Nothing else
    /// changes: not the certificate, the key, nor the annotations.
    async fn publish_bundle(&self, u: &BundleUpdate<'_>) -> Result<BundleOutcome, SinkError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let target = self.target();
        for _ in 0..MAX_ATTEMPTS {
            let existing = k8s::call(format!("get {target}"), api.get_opt(&self.name))
                .await
                .map_err(|e| remote(&target, e))?;
            let Some(mut secret) = existing else {
                return Ok(BundleOutcome::NotCurrent { found: None });
            };
            let found = version_of(&secret);
            if found != Some(u.version) {
                return Ok(BundleOutcome::NotCurrent { found });
            }
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            if !data.contains_key("tls.crt") {
                return Ok(BundleOutcome::NotApplicable);
            }
            let held = data
                .get("ca.crt")
                .and_then(|b| fingerprint_of_pem(&String::from_utf8_lossy(&b.0)));
            if held.as_deref() == Some(u.bundle.fingerprint()) {
                return Ok(BundleOutcome::Unchanged);
            }
            data.insert(
                "ca.crt".into(),
                ByteString(u.bundle.pem().as_bytes().to_vec()),
            );
            secret.metadata.managed_fields = None;
            match k8s::call(
                format!("replace {target}"),
                api.replace(&self.name, &PostParams::default(), &secret),
            )
            .await
            {
                Ok(_) => return Ok(BundleOutcome::Published),
                Err(e) if e.is_conflict() => {
                    tracing::debug!(target = %target, "secret changed under us; re-reading before replacing ca.crt");
                }
                Err(e) if e.is_not_found() => return Ok(BundleOutcome::NotCurrent { found: None }),
                Err(e) => return Err(remote(&target, e)),
            }
        }
        Err(SinkError::Remote {
            target: target.clone(),
            message: format!("still conflicting after {MAX_ATTEMPTS} attempts"),
            retryable: true,
        })
    }

    async fn published_bundle(&self) -> Result<Option<String>, SinkError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let target = self.target();
        let s = k8s::call(format!("get {target}"), api.get_opt(&self.name))
            .await
            .map_err(|e| remote(&target, e))?;
        Ok(s.as_ref()
            .and_then(|s| s.data.as_ref()?.get("ca.crt").cloned())
            .and_then(|b| fingerprint_of_pem(&String::from_utf8_lossy(&b.0))))
    }

    fn describe(&self) -> String {
        format!("kubernetes-secret:{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn payloads() {
        let m = Material::Certificate {
            chain_pem: "C".into(),
            key_pem: SecretString::from("K"),
            ca_pem: "A".into(),
        };
        let (ty, data) = secret_payload(&m);
        assert_eq!(ty, "kubernetes.io/tls");
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["ca.crt", "tls.crt", "tls.key"]
        );
        let t = Material::Token {
            token: SecretString::from("T"),
        };
        let (ty, data) = secret_payload(&t);
        assert_eq!(ty, "Opaque");
        assert_eq!(data["token"].0, b"T");
    }

    #[test]
    fn ownership_and_version() {
        let mut s = Secret::default();
        assert!(!owned_by_rekey(&s));
        s.metadata.annotations = Some(BTreeMap::from([(
            VERSION_ANNOTATION.to_string(),
            "12".to_string(),
        )]));
        assert!(owned_by_rekey(&s));
        assert_eq!(version_of(&s), Some(12));
    }
}
