//! Building the client: from a kubeconfig (the `--kubeconfig` flag,
//! `KUBECONFIG`, `[kubernetes].kubeconfig`) or in-cluster.

use std::path::Path;

use super::{error::K8sError, settings::KubernetesConfig};

/// Builds the client, as in production: from `kubeconfig` when given (the
/// `--kubeconfig` flag, `KUBECONFIG`, or `[kubernetes].kubeconfig`), else
/// from the standard inference (`KUBECONFIG`, `~/.kube/config`, in-cluster
/// service account).
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, K8sError> {
    let config = config(kubeconfig, context).await?;
    kube::Client::try_from(config).map_err(|e| K8sError::Config(e.to_string()))
}

/// The client configuration [`client`] builds its client from.
pub async fn config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Config, K8sError> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| K8sError::Config(format!("{}: {e}", path.display())))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| K8sError::Config(e.to_string()))?,
        None => kube::Config::infer().await.map_err(|e| {
            K8sError::Config(format!(
                "{e} (pass --kubeconfig, set KUBECONFIG or [kubernetes].kubeconfig, or run in a pod)"
            ))
        })?,
    };
    Ok(config)
}

/// The CA certificates (DER) the client trusts for the API server: the
/// kubeconfig's `certificate-authority(-data)`, or in a pod the
/// service account's `ca.crt`. In kubeadm and most clusters the same CA
/// signs the `kubernetes.io/*` signers' certificates. Empty when the
/// configuration names none (the system roots are used).
pub fn cluster_ca(config: &kube::Config) -> Vec<Vec<u8>> {
    if let Some(certs) = config.root_cert.as_ref().filter(|c| !c.is_empty()) {
        return certs.clone();
    }
    let Some(pem) = config
        .root_cert_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
    else {
        return Vec::new();
    };
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// The client for a loaded config: `[kubernetes]` when present, else inference.
pub async fn client_for(config: Option<&KubernetesConfig>) -> Result<kube::Client, K8sError> {
    match config {
        Some(k) => client(k.kubeconfig.as_deref(), k.context.as_deref()).await,
        None => client(None, None).await,
    }
}

/// The client configuration for a loaded config (see [`client_for`]).
pub async fn config_for(config: Option<&KubernetesConfig>) -> Result<kube::Config, K8sError> {
    match config {
        Some(k) => self::config(k.kubeconfig.as_deref(), k.context.as_deref()).await,
        None => self::config(None, None).await,
    }
}
