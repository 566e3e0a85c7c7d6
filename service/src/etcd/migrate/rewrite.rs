//! The storage-migration procedure for one object, through the Kubernetes
//! API: GET it, PUT it back unchanged with its resourceVersion. The API
//! server stores it again under its current write key; a value already
//! under that key is left alone by the server (an unchanged object is not
//! written).
//!
//! ```text
//!   GET ── 404 ──► Gone
//!    └─► PUT (same object, same resourceVersion)
//!          ├─ 200, new resourceVersion ──► Rewritten
//!          ├─ 200, same resourceVersion ─► Unchanged (the server saw nothing stale)
//!          ├─ 409 ──► Conflict (someone else wrote it meanwhile: just as good)
//!          └─ 404 ──► Gone
//! ```
//!
//! Timeouts, transport errors, 429 and 5xx are retried with backoff; other
//! errors (403: RBAC) end the migration.

use std::time::Duration;

use kube::{
    Api,
    api::{ApiResource, DynamicObject, PostParams},
};

use crate::{
    etcd::encryption::GroupResource,
    k8s::{K8sError, call},
};

/// Attempts per request before a retryable error ends the migration.
const ATTEMPTS: u32 = 6;
/// First backoff; doubled each retry, at most [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written again (under the API server's write key).
    Rewritten,
    /// 409: someone else rewrote it meanwhile.
    Conflict,
    /// 404: it was deleted meanwhile.
    Gone,
    /// The server wrote nothing: to it, the value was not stale.
    Unchanged,
}

/// Rewrites objects of one resource.
#[derive(Clone)]
pub struct Rewriter {
    client: kube::Client,
    ar: ApiResource,
    what: String,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("what", &self.what)
            .finish()
    }
}

/// The kind of a core resource, for the few the API serves (others are
/// only used in URLs, where the plural is what counts).
fn core_kind(plural: &str) -> String {
    match plural {
        "secrets" => "Secret".into(),
        "configmaps" => "ConfigMap".into(),
        "serviceaccounts" => "ServiceAccount".into(),
        "services" => "Service".into(),
        "endpoints" => "Endpoints".into(),
        other => {
            let singular = other.strip_suffix('s').unwrap_or(other);
            let mut c = singular.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        }
    }
}

impl Rewriter {
    /// The rewriter for `gr`: core resources are `v1`; a resource of a
    /// named group is looked up by discovery (its preferred version).
    pub async fn resolve(client: &kube::Client, gr: &GroupResource) -> Result<Self, K8sError> {
        let ar = if gr.group.is_empty() {
            ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: core_kind(&gr.resource),
                plural: gr.resource.clone(),
            }
        } else {
            let discovery = call(
                format!("discover API group {}", gr.group),
                kube::Discovery::new(client.clone())
                    .filter(&[gr.group.as_str()])
                    .run(),
            )
            .await?;
            discovery
                .groups()
                .flat_map(|g| g.recommended_resources())
                .map(|(ar, _)| ar)
                .find(|ar| ar.plural == gr.resource)
                .ok_or_else(|| {
                    K8sError::Invalid(format!(
                        "the API server does not serve `{}` in group `{}`",
                        gr.resource, gr.group
                    ))
                })?
        };
        Ok(Self {
            client: client.clone(),
            what: if gr.group.is_empty() {
                gr.resource.clone()
            } else {
                format!("{}.{}", gr.resource, gr.group)
            },
            ar,
        })
    }

    fn api(&self, ns: Option<&str>) -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &self.ar),
            None => Api::all_with(self.client.clone(), &self.ar),
        }
    }

    /// GET and unchanged PUT of one object.
    pub async fn rewrite(&self, ns: Option<&str>, name: &str) -> Result<Outcome, K8sError> {
        let api = self.api(ns);
        let shown = match ns {
            Some(ns) => format!("{} {ns}/{name}", self.what),
            None => format!("{} {name}", self.what),
        };
        let obj = match retried(|| call(format!("get {shown}"), api.get(name))).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Ok(Outcome::Gone),
            Err(e) => return Err(e),
        };
        let before = obj.metadata.resource_version.clone();
        let pp = PostParams::default();
        match retried(|| call(format!("update {shown}"), api.replace(name, &pp, &obj))).await {
            Ok(after) if after.metadata.resource_version == before => Ok(Outcome::Unchanged),
            Ok(_) => Ok(Outcome::Rewritten),
            Err(e) if e.is_conflict() => Ok(Outcome::Conflict),
            Err(e) if e.is_not_found() => Ok(Outcome::Gone),
            Err(e) => Err(e),
        }
    }
}

/// Runs `op` until it succeeds, fails for good, or [`ATTEMPTS`] are used;
/// a 409 or 404 is an answer, not a failure to retry.
async fn retried<T, F, Fut>(mut op: F) -> Result<T, K8sError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, K8sError>>,
{
    let mut wait = BACKOFF;
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if attempt < ATTEMPTS && e.is_retryable() && !e.is_conflict() => {
                tracing::debug!(error = %e, attempt, "retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_kinds() {
        assert_eq!(core_kind("secrets"), "Secret");
        assert_eq!(core_kind("configmaps"), "ConfigMap");
        assert_eq!(core_kind("pods"), "Pod");
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_errors_are_retried_and_conflicts_are_answers() {
        let mut n = 0;
        let r = retried(|| {
            n += 1;
            let e = K8sError::Api {
                what: "x".into(),
                code: if n < 3 { 503 } else { 409 },
                reason: String::new(),
                message: String::new(),
            };
            async move { Err::<(), _>(e) }
        })
        .await;
        assert_eq!((n, r.unwrap_err().code()), (3, Some(409)));
        let mut n = 0;
        let r = retried(|| {
            n += 1;
            async { Err::<(), _>(K8sError::Invalid("no".into())) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(n, 1);
    }
}
