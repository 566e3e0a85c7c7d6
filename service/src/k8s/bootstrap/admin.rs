//! What an operator does with bootstrap tokens by hand (`rekey token list |
//! create`; revocation is [`super::revoke`]): the tracked tokens with the
//! nodes that joined with each, and a new kubeadm-style token.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use secrecy::SecretString;
use serde::Serialize;

use super::{
    create,
    db::{self, JoinRow, TokenRow},
    model,
};
use crate::{
    k8s::K8sError,
    store::{Store, StoreError},
};

/// A tracked token and the joins recorded for it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedToken {
    /// The token.
    #[serde(flatten)]
    pub token: TokenRow,
    /// Nodes that joined with it, oldest first.
    pub joins: Vec<JoinRow>,
}

/// Every tracked token (`{"tokens": [...]}`, the JSON of `rekey token list --json`).
#[derive(Debug, Clone, Serialize)]
pub struct TokenListing {
    /// By id.
    pub tokens: Vec<ListedToken>,
}

/// Every tracked token with its joins.
pub async fn list(store: &Store) -> Result<TokenListing, StoreError> {
    let tokens = db::tokens(store).await?;
    let joins = db::all_joins(store).await?;
    let tokens = tokens
        .into_iter()
        .map(|token| ListedToken {
            joins: joins
                .iter()
                .filter(|j| j.token_id == token.id)
                .cloned()
                .collect(),
            token,
        })
        .collect();
    Ok(TokenListing { tokens })
}

/// A token just written to the cluster. Show `id.secret` once; the secret
/// never appears in `Debug`.
#[derive(Debug)]
pub struct CreatedToken {
    /// The token id (before the dot).
    pub id: String,
    /// The token secret (after the dot).
    pub secret: SecretString,
    /// The Secret object as created (for [`super::record_created`]).
    pub object: Secret,
}

/// Generates a token and writes its Secret as `kubeadm token create` does.
pub async fn create_new(
    client: &kube::Client,
    spec: &model::NewTokenSpec,
    now: DateTime<Utc>,
) -> Result<CreatedToken, K8sError> {
    let (id, secret) = model::new_token();
    let object = create(client, &id, &secret, spec, now).await?;
    Ok(CreatedToken { id, secret, object })
}
