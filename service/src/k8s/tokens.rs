//! Service-account tokens from the TokenRequest API.
//!
//! Each version is a fresh token with `expirationSeconds` = the spec's
//! lifetime and its audiences. Plain TokenRequest tokens cannot be revoked
//! one by one: a superseded token stays valid until it expires. With
//! `bound = true` each version is bound (`boundObjectRef`) to a Secret made
//! for it, `<service-account>-rekey-token-<version>`; deleting that Secret
//! ([`retire`]) invalidates the token at once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    error::{K8sError, call},
    objects::{CREDENTIAL_ANNOTATION, MANAGED_BY, VERSION_ANNOTATION, to_chrono},
};
use crate::rotate::tokens::{IssuedToken, TokenSpec};

/// sha256 hex of a token.
pub fn fingerprint(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The name of the Secret a bound token's version `version` is bound to.
pub fn bound_secret_name(spec: &TokenSpec, version: i64) -> String {
    let suffix = format!("-rekey-token-{version}");
    let mut base: String = spec
        .service_account
        .chars()
        .take(253 - suffix.len())
        .collect();
    while base.ends_with(['-', '.']) {
        base.pop();
    }
    format!("{base}{suffix}")
}

/// The TokenRequest body for a spec (pure, for tests).
pub fn token_request(spec: &TokenSpec, bound: Option<(&str, &str)>) -> TokenRequest {
    TokenRequest {
        metadata: ObjectMeta::default(),
        spec: Some(TokenRequestSpec {
            attestations: None,
            audiences: (!spec.audiences.is_empty()).then(|| spec.audiences.clone()),
            expiration_seconds: Some(spec.lifetime.get().as_secs() as i64),
            bound_object_ref: bound.map(|(name, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
            }),
        }),
        status: None,
    }
}

/// Issues version `version` of a token: creates its bound Secret when the
/// spec asks for one, then calls TokenRequest.
pub async fn issue(
    client: &kube::Client,
    spec: &TokenSpec,
    version: i64,
    now: DateTime<Utc>,
) -> Result<IssuedToken, K8sError> {
    let ns = spec.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut bound: Option<(String, String)> = None;
    if spec.bound {
        let name = bound_secret_name(spec, version);
        let obj = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGED_BY.to_string(),
                )])),
                annotations: Some(BTreeMap::from([
                    (CREDENTIAL_ANNOTATION.to_string(), spec.name.clone()),
                    (VERSION_ANNOTATION.to_string(), version.to_string()),
                ])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let what = format!("create secret {ns}/{name}");
        let created = match call(&what, secrets.create(&PostParams::default(), &obj)).await {
            Ok(s) => s,
            // A retry of the same version: reuse the Secret if it is ours.
            Err(e) if e.code() == Some(409) => {
                let existing = call(format!("get secret {ns}/{name}"), secrets.get(&name)).await?;
                let ours = existing.metadata.annotations.as_ref().is_some_and(|a| {
                    a.get(CREDENTIAL_ANNOTATION) == Some(&spec.name)
                        && a.get(VERSION_ANNOTATION) == Some(&version.to_string())
                });
                if !ours {
                    return Err(K8sError::Invalid(format!(
                        "secret {ns}/{name} exists and was not made by rekey for {} version {version}",
                        spec.name
                    )));
                }
                existing
            }
            Err(e) => return Err(e),
        };
        let uid = created.metadata.uid.unwrap_or_default();
        bound = Some((name, uid));
    }
    let tr = token_request(spec, bound.as_ref().map(|(n, u)| (n.as_str(), u.as_str())));
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let what = format!("create serviceaccounts/token {ns}/{}", spec.service_account);
    let answer: Result<TokenRequest, K8sError> = call(
        &what,
        sas.create_subresource("token", &spec.service_account, &PostParams::default(), &tr),
    )
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            if let Some((name, uid)) = &bound
                && let Err(cleanup) = delete_bound(&secrets, ns, name, uid).await
            {
                tracing::warn!(error = %cleanup, "could not delete the bound secret of a failed token request");
            }
            return Err(e);
        }
    };
    let status = answer
        .status
        .ok_or_else(|| K8sError::Invalid(format!("{what}: the answer has no status")))?;
    let token = SecretString::from(
        status
            .token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| K8sError::Invalid(format!("{what}: the answer has no token")))?,
    );
    let expires = status.expiration_timestamp.as_ref().ok_or_else(|| {
        K8sError::Invalid(format!("{what}: the answer has no expirationTimestamp"))
    })?;
    let details = match &bound {
        Some((name, uid)) => json!({"bound_secret": {"namespace": ns, "name": name, "uid": uid}}),
        None => json!({}),
    };
    Ok(IssuedToken {
        fingerprint: fingerprint(token.expose_secret()),
        token,
        not_before: now,
        not_after: to_chrono(expires),
        details,
    })
}

async fn delete_bound(
    secrets: &Api<Secret>,
    ns: &str,
    name: &str,
    uid: &str,
) -> Result<(), K8sError> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: (!uid.is_empty()).then(|| uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match call(
        format!("delete secret {ns}/{name}"),
        secrets.delete(name, &dp),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Retires a superseded version: deletes its bound Secret (which revokes the
/// token); a no-op for unbound tokens, which simply expire.
pub async fn retire(
    client: &kube::Client,
    spec: &TokenSpec,
    details: &serde_json::Value,
) -> Result<(), K8sError> {
    let b = &details["bound_secret"];
    let Some(name) = b["name"].as_str() else {
        return Ok(());
    };
    let ns = b["namespace"].as_str().unwrap_or(&spec.namespace);
    let uid = b["uid"].as_str().unwrap_or("");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    delete_bound(&secrets, ns, name, uid).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkSpec;

    fn spec() -> TokenSpec {
        TokenSpec {
            name: "sa-token/ci/deployer".into(),
            namespace: "ci".into(),
            service_account: "deployer".into(),
            audiences: vec!["vault".into()],
            lifetime: std::time::Duration::from_secs(3600).into(),
            renew_fraction: None,
            renew_before: None,
            schedule: None,
            bound: true,
            grace: None,
            sink: SinkSpec::KubernetesSecret {
                namespace: "ci".into(),
                name: "deployer-token".into(),
            },
            adopt: false,
            reload: vec![],
        }
    }

    #[test]
    fn request_body_and_names() {
        let s = spec();
        let tr = token_request(&s, Some(("deployer-rekey-token-7", "u1")))
            .spec
            .unwrap();
        assert_eq!(tr.expiration_seconds, Some(3600));
        assert_eq!(tr.audiences, Some(vec!["vault".to_string()]));
        let b = tr.bound_object_ref.unwrap();
        assert_eq!(b.kind.as_deref(), Some("Secret"));
        assert_eq!(b.uid.as_deref(), Some("u1"));
        assert_eq!(bound_secret_name(&s, 7), "deployer-rekey-token-7");
        let long = TokenSpec {
            service_account: "a".repeat(253),
            ..s
        };
        assert!(bound_secret_name(&long, 123).len() <= 253);
    }
}
