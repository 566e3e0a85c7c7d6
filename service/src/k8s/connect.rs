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
    kube::Client::try_from(config).map_err(|e| K8sError::Config(e.to_string()))
}

/// The client for a loaded config: `[kubernetes]` when present, else inference.
pub async fn client_for(config: Option<&KubernetesConfig>) -> Result<kube::Client, K8sError> {
    match config {
        Some(k) => client(k.kubeconfig.as_deref(), k.context.as_deref()).await,
        None => client(None, None).await,
    }
}
