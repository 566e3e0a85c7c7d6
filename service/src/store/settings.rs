//! `[database]`: where the inventory lives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::{ExposeSecret, SecretString, serialize_redacted};

/// `[database]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host/db`; `DATABASE_URL` overrides it.
    #[serde(default, serialize_with = "serialize_redacted")]
    pub url: Option<SecretString>,
    /// A file holding the URL (e.g. a mounted Secret), read at start-up;
    /// `url` and `DATABASE_URL` win over it.
    pub url_file: Option<PathBuf>,
    /// Pool size (default 16).
    pub max_connections: Option<u32>,
}

/// No URL was given: neither `database.url`, `url_file` nor `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("database.url: not set: give it in the config file or as DATABASE_URL")]
pub struct NoDatabaseUrl;

impl DatabaseConfig {
    /// The URL, or an error saying how to give one.
    pub fn url(&self) -> Result<&str, NoDatabaseUrl> {
        self.url
            .as_ref()
            .map(|u| u.expose_secret())
            .ok_or(NoDatabaseUrl)
    }
}
