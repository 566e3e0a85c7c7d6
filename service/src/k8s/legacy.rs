//! Legacy long-lived service-account tokens.
//!
//! Secrets of type `kubernetes.io/service-account-token` hold tokens that
//! never expire. rekey cannot rotate them; it finds them (metadata only: the
//! token itself is never read) and records each as a credential of kind
//! `service_account_token`, source `discovered`, unmanaged, with no
//! `not_after`, which `rekey status` shows as `no-expiry` (a warning).

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::json;

use tokio_util::sync::CancellationToken;

use super::{
    error::{K8sError, call},
    objects::to_chrono,
};
use crate::{
    schedule::jobs::every,
    store::{
        Store,
        credentials::{Discovered, kind},
    },
};

/// Prefix of the credential names of discovered legacy tokens.
pub const NAME_PREFIX: &str = "legacy-sa-token/";
/// Page size of the discovery list.
const PAGE: u32 = 500;

/// One legacy token Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyToken {
    /// Namespace.
    pub namespace: String,
    /// Secret name.
    pub secret: String,
    /// The service account it authenticates as.
    pub service_account: String,
    /// When it was created.
    pub created: Option<chrono::DateTime<chrono::Utc>>,
}

impl LegacyToken {
    /// The credential name: `legacy-sa-token/<namespace>/<secret>`.
    pub fn credential_name(&self) -> String {
        format!("{NAME_PREFIX}{}/{}", self.namespace, self.secret)
    }
}

/// Lists legacy token Secrets across all namespaces (metadata only, paged).
pub async fn list(client: &kube::Client) -> Result<Vec<LegacyToken>, K8sError> {
    let api: Api<Secret> = Api::all(client.clone());
    let mut lp = ListParams::default()
        .fields("type=kubernetes.io/service-account-token")
        .limit(PAGE);
    let mut out = Vec::new();
    loop {
        let page = call("list secrets (all namespaces)", api.list_metadata(&lp)).await?;
        for s in page.items {
            let m = s.metadata;
            out.push(LegacyToken {
                namespace: m.namespace.unwrap_or_default(),
                secret: m.name.unwrap_or_default(),
                service_account: m
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kubernetes.io/service-account.name").cloned())
                    .unwrap_or_default(),
                created: m.creation_timestamp.as_ref().map(to_chrono),
            });
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    Ok(out)
}

/// Finds legacy tokens and records them in `credentials`; rows for tokens
/// that no longer exist are marked removed. Returns how many were found.
pub async fn discover(store: &Store, client: &kube::Client) -> Result<usize, K8sError> {
    let found = list(client).await?;
    let rows: Vec<Discovered> = found
        .iter()
        .map(|t| Discovered {
            name: t.credential_name(),
            kind: kind::SERVICE_ACCOUNT_TOKEN,
            spec: json!({
                "legacy": true,
                "namespace": t.namespace,
                "secret": t.secret,
                "service_account": t.service_account,
            }),
            not_before: t.created,
            not_after: None,
        })
        .collect();
    store
        .sync_discovered(kind::SERVICE_ACCOUNT_TOKEN, NAME_PREFIX, &rows)
        .await?;
    if !found.is_empty() {
        tracing::warn!(
            count = found.len(),
            "long-lived service-account token Secrets found; they never expire"
        );
    }
    Ok(found.len())
}

/// Runs [`discover`] every `period` until `shutdown` (on every replica:
/// the writes are idempotent).
pub async fn run(
    store: Store,
    client: kube::Client,
    period: std::time::Duration,
    shutdown: CancellationToken,
) {
    every(period, &shutdown, |_| {
        let (store, client) = (&store, &client);
        async move {
            match discover(store, client).await {
                Ok(n) => tracing::debug!(found = n, "legacy token discovery"),
                Err(e) => tracing::warn!(error = %e, "legacy token discovery failed"),
            }
        }
    })
    .await;
}
