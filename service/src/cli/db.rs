//! `DbArgs`: finding the database from `--config` or `--database-url`
//! (shared by every command that reads or records in Postgres).

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    config::Config,
    error::{BadInput, BadInputExt},
    secret::{ExposeSecret, SecretString},
    store::Store,
};

/// Where the database is: a config file, or a URL.
#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// The configuration file (its `[database]` section).
    #[arg(long, env = "REKEY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Postgres URL (overrides the config file).
    // It may hold a password: kept in a redacting type, so `Debug` of the
    // parsed arguments never shows it (a `//` comment: not `--help` text).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret_arg)]
    pub database_url: Option<SecretString>,
}

/// Parses a flag whose value is secret (a URL with a password, a token).
pub fn secret_arg(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
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
        Ok(self.connect_migrated().await?.0)
    }

    /// [`Self::connect`], with how many migrations it applied.
    pub async fn connect_migrated(&self) -> anyhow::Result<(Store, usize)> {
        let config = self.load_config()?;
        let url = match (&self.database_url, &config) {
            (Some(u), _) => u.clone(),
            (None, Some(c)) => SecretString::from(c.database.url().bad_input()?),
            (None, None) => {
                return Err(BadInput::msg(
                    "no database: pass --database-url (or DATABASE_URL) or --config FILE",
                )
                .into());
            }
        };
        crate::runtime::open_store(url.expose_secret(), 4, Duration::from_secs(10)).await
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        db: DbArgs,
    }

    #[test]
    fn debug_of_the_arguments_hides_the_database_password() {
        let cli = Cli::parse_from([
            "rekey",
            "--database-url",
            "postgres://rekey:hunter2-very-secret@db/rekey",
        ]);
        let shown = format!("{cli:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(
            cli.db.database_url.as_ref().map(|u| u.expose_secret()),
            Some("postgres://rekey:hunter2-very-secret@db/rekey")
        );
    }
}
