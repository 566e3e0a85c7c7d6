//! `rekey status`

use std::process::ExitCode;

use super::db::DbArgs;

/// `rekey status`
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

/// Runs `rekey status`.
pub async fn run(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("status: not wired yet")
}
