//! `rekey etcd rotate-key --retire KEYNAME`: gathers the proof (a census of
//! what etcd stores now, the retained backups' recorded keys) and hands it
//! to the pure decision in [`etcd::retire`](crate::etcd::retire); writes the
//! configuration without the key only when nothing needs it.
//!
//! Exit codes: 0 retired; 1 still needed (naming the key, how many values,
//! which backups), or it is a write key; 2 an unknown key name, an unreadable
//! or invalid configuration, no database to check the backups.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

use super::{db::DbArgs, etcd_flags::etcd_from_flags};
use crate::{
    backup,
    error::BadInput,
    etcd::{
        census,
        retire::{self, BackupKeys, RetireError},
        rotate,
    },
};

/// What `--retire` needs from the command line.
#[derive(Debug)]
pub struct RetireArgs<'a> {
    /// The key's name.
    pub name: &'a str,
    /// The API servers' configuration (replaced unless `out` is given).
    pub encryption_config: &'a PathBuf,
    /// A directory to write the new configuration into instead.
    pub out: Option<&'a PathBuf>,
    /// etcd endpoints.
    pub endpoints: &'a [String],
    /// etcd CA.
    pub cacert: Option<&'a PathBuf>,
    /// etcd client certificate and key.
    pub cert_key: (Option<&'a PathBuf>, Option<&'a PathBuf>),
    /// The database (the backups' records).
    pub db: &'a DbArgs,
}

fn retire_error(e: RetireError) -> anyhow::Error {
    if e.is_bad_input() {
        BadInput::new(e).into()
    } else {
        e.into()
    }
}

/// Runs `rekey etcd rotate-key --retire`.
pub async fn run(a: RetireArgs<'_>) -> anyhow::Result<ExitCode> {
    let loaded = a.db.load_config()?;
    let config = rotate::load(a.encryption_config).map_err(|e| match e {
        e @ rotate::RotateKeyError::Read { .. } => {
            anyhow::Error::new(BadInput::msg(format!("--encryption-config {e}")))
        }
        e => anyhow::Error::new(BadInput::new(e)),
    })?;
    let targets = retire::find(&config, a.name).map_err(retire_error)?;
    let wants_db =
        a.db.database_url.is_some() || loaded.as_ref().is_some_and(|c| c.database.url.is_some());
    if !wants_db {
        return Err(BadInput::msg(
            "--retire needs the database (--database-url or --config) to check which retained \
             backups still need the key",
        )
        .into());
    }
    let store = a.db.connect().await.context("connecting to the database")?;
    let from = loaded
        .as_ref()
        .and_then(|c| c.etcd.clone())
        .unwrap_or_default();
    let etcd = etcd_from_flags(a.endpoints, a.cacert, a.cert_key, &from)?;
    let client = crate::etcd::client::connect(&etcd).await?;
    let counted = census::count(&client, &config, &census::prefixes(&config), None).await?;
    let backups: Vec<BackupKeys> = backup::db::retained(&store)
        .await?
        .into_iter()
        .map(|b| BackupKeys {
            id: b.id,
            location: b.location,
            started_at: b.started_at,
            keys: b.encryption_keys.map(|k| k.0),
        })
        .collect();
    retire::decide(&targets, &counted.by_key, &backups).map_err(retire_error)?;
    let text =
        zeroize::Zeroizing::new(retire::render_without(&config, a.name).map_err(retire_error)?);
    let path = match a.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join(
                a.encryption_config
                    .file_name()
                    .unwrap_or(std::ffi::OsStr::new("encryption-config.yaml")),
            )
        }
        None => a.encryption_config.clone(),
    };
    retire::write_config(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "retired {}: wrote {} (etcd at revision {}: no value under it in {}; {} retained backup(s) checked). \
         Roll it out to every API server and restart them.",
        targets
            .iter()
            .map(|t| t.label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        path.display(),
        counted.revision,
        counted.prefixes.join(" "),
        backups.len()
    );
    Ok(ExitCode::SUCCESS)
}
