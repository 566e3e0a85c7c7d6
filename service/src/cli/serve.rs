//! `rekey serve --config FILE`: load the configuration, apply the
//! `--kubeconfig`/`--context` override, start everything and wait.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use super::kube::KubeArgs;
use crate::{config::Config, error::BadInputExt, runtime};

/// `rekey serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(long, env = "REKEY_CONFIG")]
    pub config: PathBuf,
    /// How to reach Kubernetes (overrides `[kubernetes]` in the file).
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Runs `rekey serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(&args.config).bad_input()?;
    args.kube.to_override().apply(&mut config);
    let shutdown = runtime::shutdown_on_signals();
    let running = runtime::start(config, shutdown).await?;
    running.wait().await?;
    Ok(ExitCode::SUCCESS)
}
