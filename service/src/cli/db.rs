//! Finding the database from `--config` or `--database-url`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Args;

use crate::{
    config::Config,
    error::{BadInput, BadInputExt},
    store::Store,
};

/// Where the database is: a config file, or a URL.
#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// The configuration file (its `[database]` section).
    #[arg(long, env = "REKEY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Postgres URL (overrides the config file).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DbArgs {
    /// Loads the config file, if one was given.
    pub fn load_config(&self) -> anyhow::Result<Option<Config>> {
        self.config
            .as_deref()
            .map(Config::load)
            .transpose()
            .bad_input()
    }

    /// Connects to the database named by the flags, applying migrations.
    pub async fn connect(&self) -> anyhow::Result<Store> {
        let config = self.load_config()?;
        let url = match (&self.database_url, &config) {
            (Some(u), _) => u.clone(),
            (None, Some(c)) => c.database.url().bad_input()?.to_string(),
            (None, None) => {
                return Err(BadInput::msg(
                    "no database: pass --database-url (or DATABASE_URL) or --config FILE",
                )
                .into());
            }
        };
        let store = Store::connect_patiently(&url, 4, Duration::from_secs(10))
            .await
            .map_err(|e| match e {
                e @ crate::store::StoreError::BadUrl(_) => anyhow::Error::new(BadInput::new(e)),
                e => anyhow::Error::new(e),
            })?;
        store.migrate().await.context("applying migrations")?;
        Ok(store)
    }
}

/// `rekey migrate`
pub async fn migrate(args: DbArgs) -> anyhow::Result<ExitCode> {
    args.connect().await?;
    println!(
        "migrations applied ({} in all)",
        crate::store::MIGRATOR.iter().count()
    );
    Ok(ExitCode::SUCCESS)
}
