//! Environment overrides: `REKEY_<SECTION>_<FIELD>` sets a scalar field of
//! a top-level table (e.g. `REKEY_API_LISTEN`, `REKEY_BACKUP_KEEP`), and
//! `DATABASE_URL` sets `database.url`.

use std::collections::BTreeMap;

use secrecy::SecretString;

use super::error::ConfigError;

/// Variables with the `REKEY_` prefix that are not config overrides.
const RESERVED_ENV: &[&str] = &[
    "REKEY_CONFIG",
    "REKEY_LOG",
    "REKEY_LOG_FORMAT",
    "REKEY_BIN",
    // admin API client flags (`rekey rotate`, `rekey status --server`)
    "REKEY_SERVER",
    "REKEY_CLIENT_CERT",
    "REKEY_CLIENT_KEY",
    "REKEY_CACERT",
    // crash points of debug builds (`crate::crash`)
    "REKEY_CRASH_AT",
];

/// Applies `REKEY_<SECTION>_<FIELD>` overrides to top-level tables.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    const SECTIONS: &[&str] = &[
        "bootstrap_tokens",
        "kubernetes",
        "database",
        "metrics",
        "backup",
        "engine",
        "issuer",
        "etcd",
        "api",
    ];
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("REKEY_") else {
            continue;
        };
        if RESERVED_ENV.contains(&key.as_str()) || rest.is_empty() {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let Some((section, field)) = SECTIONS.iter().find_map(|s| {
            lower
                .strip_prefix(s)
                .and_then(|r| r.strip_prefix('_'))
                .map(|f| (*s, f))
        }) else {
            return Err(ConfigError::new(
                format!("(environment) {key}"),
                format!(
                    "not a known override: use REKEY_<SECTION>_<FIELD> with SECTION one of {}",
                    SECTIONS.join(", ")
                ),
            ));
        };
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(t) = entry.as_table_mut() else {
            return Err(ConfigError::new(section, "must be a table"));
        };
        t.insert(field.to_string(), parsed);
    }
    Ok(())
}

/// `DATABASE_URL`, when set and not empty: it wins over `database.url`.
pub(super) fn database_url(env: &BTreeMap<String, String>) -> Option<SecretString> {
    env.get("DATABASE_URL")
        .filter(|u| !u.is_empty())
        .map(|u| SecretString::from(u.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_land_in_their_section() {
        let mut t = toml::Table::new();
        apply_env(
            &mut t,
            &env(&[
                ("REKEY_ENGINE_CONCURRENCY", "3"),
                ("REKEY_API_LISTEN", "0.0.0.0:8443"),
                ("REKEY_CONFIG", "/etc/rekey/rekey.toml"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(t["engine"]["concurrency"].as_integer(), Some(3));
        assert_eq!(t["api"]["listen"].as_str(), Some("0.0.0.0:8443"));
        assert_eq!(
            t.len(),
            2,
            "reserved and foreign variables are not overrides"
        );
        let e = apply_env(&mut t, &env(&[("REKEY_NOPE_X", "1")])).unwrap_err();
        assert_eq!(e.path, "(environment) REKEY_NOPE_X");
    }

    #[test]
    fn an_empty_database_url_is_no_override() {
        assert!(database_url(&env(&[("DATABASE_URL", "")])).is_none());
        assert!(database_url(&env(&[("DATABASE_URL", "postgres://x/db")])).is_some());
    }
}
