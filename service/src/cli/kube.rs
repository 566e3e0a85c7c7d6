//! `--kubeconfig` and `--context`: how the command line reaches Kubernetes
//! (`rekey serve`, `rekey token revoke | create`).
//!
//! The flags become a [`KubeOverride`], applied to the loaded configuration
//! before anything starts: the runtime only ever sees a `Config`.

use std::path::PathBuf;

use clap::Args;

use crate::{
    config::Config,
    error::BadInput,
    k8s::{self, K8sError},
};

/// How to reach the Kubernetes API.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// kubeconfig file (default: `[kubernetes].kubeconfig` from --config, then
    /// ~/.kube/config, then the in-cluster service account).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig.
    #[arg(long)]
    pub context: Option<String>,
}

/// What the flags change in `[kubernetes]` (they win over the file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeOverride {
    /// The kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// The context in it.
    pub context: Option<String>,
}

impl KubeArgs {
    /// The override the flags ask for. A `KUBECONFIG` that is a
    /// `:`-separated list is not one file: it is left to the client's own
    /// inference.
    pub fn to_override(&self) -> KubeOverride {
        KubeOverride {
            kubeconfig: self
                .kubeconfig
                .clone()
                .filter(|p| !p.as_os_str().is_empty() && !p.to_string_lossy().contains(':')),
            context: self.context.clone(),
        }
    }

    /// The client: flags first, then the config file's `[kubernetes]`, then inference.
    pub async fn client(&self, config: Option<&Config>) -> anyhow::Result<kube::Client> {
        let flags = self.to_override();
        let from_file = config.and_then(|c| c.kubernetes.as_ref());
        let path = flags
            .kubeconfig
            .or_else(|| from_file.and_then(|k| k.kubeconfig.clone()));
        let context = flags
            .context
            .or_else(|| from_file.and_then(|k| k.context.clone()));
        k8s::client(path.as_deref(), context.as_deref())
            .await
            .map_err(|e| match e {
                e @ K8sError::Config(_) => anyhow::Error::new(BadInput::new(e)),
                e => anyhow::Error::new(e),
            })
    }
}

impl KubeOverride {
    /// Puts the override into a loaded config's `[kubernetes]`.
    pub fn apply(&self, config: &mut Config) {
        if self.kubeconfig.is_none() && self.context.is_none() {
            return;
        }
        let k = config.kubernetes.get_or_insert_with(Default::default);
        if let Some(p) = &self.kubeconfig {
            k.kubeconfig = Some(p.clone());
        }
        if let Some(c) = &self.context {
            k.context = Some(c.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kubeconfig: Option<&str>, context: Option<&str>) -> KubeArgs {
        KubeArgs {
            kubeconfig: kubeconfig.map(PathBuf::from),
            context: context.map(String::from),
        }
    }

    #[test]
    fn a_list_of_kubeconfigs_is_left_to_inference() {
        assert_eq!(
            args(Some("/a:/b"), None).to_override(),
            KubeOverride::default()
        );
        assert_eq!(args(Some(""), None).to_override(), KubeOverride::default());
        assert_eq!(
            args(Some("/etc/kube.conf"), Some("admin")).to_override(),
            KubeOverride {
                kubeconfig: Some("/etc/kube.conf".into()),
                context: Some("admin".into()),
            }
        );
    }
}
