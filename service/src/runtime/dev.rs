//! `rekey dev`: the main job on embedded defaults.

use std::{path::PathBuf, process::ExitCode};

/// `rekey dev`
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where everything it creates lives.
    #[arg(long, default_value = ".rekey-dev")]
    pub state_dir: PathBuf,
    /// Use this Postgres instead of starting a throwaway one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Runs `rekey dev`.
pub async fn run(_args: DevArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("dev: not wired yet")
}
