//! `rekey migrate`: apply the database migrations.

use std::process::ExitCode;

use super::db::DbArgs;

/// Runs `rekey migrate`.
pub async fn run(args: DbArgs) -> anyhow::Result<ExitCode> {
    let (_, applied) = args.connect_migrated().await?;
    let all = crate::store::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .count();
    if applied == 0 {
        println!("the database schema is up to date ({all} migrations)");
    } else {
        println!("migrations applied: {applied} (the schema is up to date, {all} in all)");
    }
    Ok(ExitCode::SUCCESS)
}
