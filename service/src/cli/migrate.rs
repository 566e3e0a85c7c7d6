//! `rekey migrate`: apply the database migrations.

use std::process::ExitCode;

use super::db::DbArgs;

/// Runs `rekey migrate`.
pub async fn run(args: DbArgs) -> anyhow::Result<ExitCode> {
    args.connect().await?;
    println!(
        "migrations applied ({} in all)",
        crate::store::MIGRATOR.iter().count()
    );
    Ok(ExitCode::SUCCESS)
}
