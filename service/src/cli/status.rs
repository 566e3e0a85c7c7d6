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
    /// Ask a running server's admin API (`--server URL`) instead of the database.
    #[command(flatten)]
    pub client: crate::api::client::ClientArgs,
}

/// Runs `rekey status`.
pub async fn run(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    if _args.client.server.is_some() {
        return crate::api::client::status_command(&_args.client, _args.json).await;
    }
    anyhow::bail!("status: not wired yet")
}
