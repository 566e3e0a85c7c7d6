//! Building the issuer registry from the configuration: each `ca` issuer's
//! CA read from its files or Secret and checked, each `kubernetes-csr`
//! issuer given its signer and trust bundle. Any problem is bad input
//! (exit 2) naming the issuer and the field, found before anything runs.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::{
    config::Config,
    error::BadInput,
    issue::{
        CaStore, FileCaStore, Issuer, IssuerConfig, IssuerError, IssuerKind, Issuers, TrustBundle,
        load_ca, settings::CaSource,
    },
    k8s::wiring::Kube,
};

/// Builds every configured issuer, checked at `now`.
pub async fn load_issuers(
    config: &Config,
    kube: Option<&Kube>,
    now: DateTime<Utc>,
) -> anyhow::Result<Issuers> {
    let mut out = Vec::new();
    for c in config.issuers() {
        let issuer = match c.kind {
            IssuerKind::Ca => load_ca_issuer(&c, kube, now).await,
            IssuerKind::KubernetesCsr => csr_issuer(&c, kube),
        }
        .map_err(BadInput::new)?;
        out.push(issuer);
    }
    Ok(Issuers::new(out))
}

async fn load_ca_issuer(
    c: &IssuerConfig,
    kube: Option<&Kube>,
    now: DateTime<Utc>,
) -> Result<Issuer, IssuerError> {
    let name = c.name();
    let store: Arc<dyn CaStore> = match c.ca_source() {
        Some(CaSource::Files { cert, key }) => Arc::new(FileCaStore::new(cert, key)),
        Some(CaSource::Secret(secret)) => match kube {
            Some(k) => k.ca_store(secret),
            None => {
                return Err(IssuerError::new(
                    name,
                    "secret",
                    "a CA in a Secret needs the Kubernetes API ([kubernetes] or in-cluster)",
                ));
            }
        },
        None => return Err(IssuerError::new(name, "ca_cert", "missing")),
    };
    let ca = load_ca(name, store.as_ref(), now).await?;
    if let Some(before) = c.rotate_before {
        let lifetime = ca.not_after() - ca.not_before();
        if before.chrono() * 2 > lifetime {
            return Err(IssuerError::new(
                name,
                "rotate_before",
                format!(
                    "{before} is more than half the CA's validity ({} days): a new CA like it would be due for rotation at once",
                    lifetime.num_days()
                ),
            ));
        }
    }
    tracing::info!(
        issuer = name, source = %store.describe(), subject = ca.subject(),
        fingerprint = ca.fingerprint(), not_after = %ca.not_after().to_rfc3339(),
        "issuer CA loaded"
    );
    Ok(Issuer::ca(c, store, ca))
}

fn csr_issuer(c: &IssuerConfig, kube: Option<&Kube>) -> Result<Issuer, IssuerError> {
    let name = c.name();
    let signer_name = c
        .signer_name
        .as_deref()
        .ok_or_else(|| IssuerError::new(name, "signer_name", "missing"))?;
    let Some(kube) = kube else {
        return Err(IssuerError::new(
            name,
            "kind",
            "a kubernetes-csr issuer needs the Kubernetes API ([kubernetes] or in-cluster)",
        ));
    };
    let bundle = match &c.ca_bundle {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                IssuerError::new(
                    name,
                    "ca_bundle",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            TrustBundle::from_pem(&text).map_err(|e| {
                IssuerError::new(name, "ca_bundle", format!("{}: {e}", path.display()))
            })?
        }
        None if kube.cluster_ca().is_empty() => {
            return Err(IssuerError::new(
                name,
                "ca_bundle",
                "missing: the Kubernetes client configuration names no cluster CA, so the CA of signer \
                 consumers must trust is unknown; give it as a PEM file",
            ));
        }
        None => TrustBundle::new(kube.cluster_ca().iter().cloned())
            .map_err(|e| IssuerError::new(name, "ca_bundle", format!("the cluster CA: {e}")))?,
    };
    Ok(Issuer::kubernetes_csr(
        c,
        kube.csr_signer(signer_name),
        bundle,
    ))
}
