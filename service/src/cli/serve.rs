//! `rekey serve --config FILE`: load the configuration, apply the
//! `--kubeconfig`/`--context` override, start everything, follow the file
//! (reloaded on change and SIGHUP) and wait.

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
    let kube = args.kube.to_override();
    kube.apply(&mut config);
    let shutdown = runtime::shutdown_on_signals();
    let mut running = runtime::start(config, shutdown.clone()).await?;
    // The file, live: credentials added, changed and removed without a
    // restart, until shutdown (polled beside the tasks, on this task).
    let live = running.take_live();
    let reloading = async move {
        if let Some(live) = live {
            runtime::reload::run(live, args.config.clone(), move |c| kube.apply(c), shutdown).await;
        }
    };
    let (result, ()) = tokio::join!(running.wait(), reloading);
    result?;
    Ok(ExitCode::SUCCESS)
}
