//! From a [`SinkSpec`] to the sink that publishes there.

use std::sync::Arc;

use super::{
    file::FileSink,
    kubeconfig::KubeconfigSink,
    kubernetes::KubernetesSecretSink,
    model::{Sink, SinkContext, SinkError},
    spec::SinkSpec,
};

/// Builds the sink a spec describes.
pub fn build(spec: &SinkSpec, ctx: &SinkContext) -> Result<Arc<dyn Sink>, SinkError> {
    match spec {
        SinkSpec::File { dir } => Ok(Arc::new(FileSink::new(dir.clone()))),
        SinkSpec::Kubeconfig {
            path,
            server,
            cluster,
            user,
            context,
        } => Ok(Arc::new(KubeconfigSink::new(
            path.clone(),
            server.clone(),
            cluster.clone(),
            user.clone(),
            context.clone(),
        ))),
        SinkSpec::KubernetesSecret { namespace, name } => match &ctx.kube {
            Some(client) => Ok(Arc::new(KubernetesSecretSink::new(
                client.clone(),
                namespace.clone(),
                name.clone(),
            ))),
            None => Err(SinkError::Unavailable(format!(
                "secret {namespace}/{name}: no Kubernetes client (configure [kubernetes] or run in-cluster)"
            ))),
        },
    }
}
