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

use super::{K8sError, call, to_chrono};
use crate::store::Store;

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

/// Finds legacy tokens and upserts them into `credentials`; rows for tokens
/// that no longer exist are marked removed. Returns how many were found.
pub async fn discover(store: &Store, client: &kube::Client) -> Result<usize, K8sError> {
    let found = list(client).await?;
    let mut tx = store
        .pool()
        .begin()
        .await
        .map_err(crate::store::StoreError::from)?;
    let mut names = Vec::with_capacity(found.len());
    for t in &found {
        let name = t.credential_name();
        sqlx::query(
            "INSERT INTO credentials (name, kind, source, managed, spec, not_before)
             VALUES ($1, 'service_account_token', 'discovered', false, $2, $3)
             ON CONFLICT (name) DO UPDATE
               SET spec = EXCLUDED.spec, not_before = EXCLUDED.not_before, removed_at = NULL, updated_at = now()
             WHERE credentials.source = 'discovered'",
        )
        .bind(&name)
        .bind(json!({
            "legacy": true,
            "namespace": t.namespace,
            "secret": t.secret,
            "service_account": t.service_account,
        }))
        .bind(t.created)
        .execute(&mut *tx)
        .await
        .map_err(crate::store::StoreError::from)?;
        names.push(name);
    }
    sqlx::query(
        "UPDATE credentials SET removed_at = now(), updated_at = now()
         WHERE source = 'discovered' AND kind = 'service_account_token' AND removed_at IS NULL
           AND starts_with(name, $1) AND NOT (name = ANY($2))",
    )
    .bind(NAME_PREFIX)
    .bind(&names)
    .execute(&mut *tx)
    .await
    .map_err(crate::store::StoreError::from)?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    if !found.is_empty() {
        tracing::warn!(
            count = found.len(),
            "long-lived service-account token Secrets found; they never expire"
        );
    }
    Ok(found.len())
}
