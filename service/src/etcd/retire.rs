//! `rekey etcd rotate-key --retire KEYNAME`: removing a key only with proof
//! that nothing needs it any more.
//!
//! ```text
//!   find(config, name) ── unknown name: bad input (exit 2)
//!        │                 the write key of a rule: refused (exit 1)
//!        ▼
//!   decide(targets, census of etcd now, retained backups' recorded keys)
//!        │── a stored value, or a retained backup, needs it: refused (exit 1),
//!        │   naming the key, the count and the backups
//!        ▼
//!   render(config without it) ──► parsed again (must be valid) ──► written
//! ```
//!
//! Pure: the census and the backups' records are gathered by the caller
//! (the command line), and writing the file is [`write_config`].

use std::{
    fmt::Write as _,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    census::KeyUse,
    encryption::{self, ConfigKind, EncryptionConfiguration, ProviderKind},
    rotate::{key_yaml, provider_yaml, q},
};
use crate::secret::ExposeSecret;

/// One key of the configuration named like the key to retire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetireTarget {
    /// `provider:name`.
    pub label: String,
    /// Its fingerprint (never the key).
    pub fingerprint: String,
    /// The resources of the rules holding it.
    pub resources: Vec<String>,
}

/// A retained backup and the keys it recorded (`None`: taken before rekey
/// recorded keys).
#[derive(Debug, Clone)]
pub struct BackupKeys {
    /// The backup's id.
    pub id: Uuid,
    /// Where it is.
    pub location: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// What its snapshot needs.
    pub keys: Option<Vec<KeyUse>>,
}

/// Why the key was not retired.
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    /// No key of the configuration has this name (bad input).
    #[error("unknown key `{name}`: the configuration's keys are {known}")]
    UnknownKey {
        /// The name asked for.
        name: String,
        /// The keys there are.
        known: String,
    },
    /// It still writes.
    #[error(
        "key `{label}` is the write key for {resources}: make another key the write key first \
         (`rekey etcd rotate-key`), restart the API servers and `rekey etcd migrate`"
    )]
    Writing {
        /// The key.
        label: String,
        /// The rule's resources.
        resources: String,
    },
    /// Stored values or retained backups still need it.
    #[error("key `{label}` is still needed: {}", needs.join("; "))]
    StillNeeded {
        /// The key.
        label: String,
        /// Values stored under it now.
        values: u64,
        /// The backups that need it (ids).
        backups: Vec<Uuid>,
        /// What needs it, one phrase each.
        needs: Vec<String>,
    },
    /// The configuration without the key came out invalid (a bug in rekey).
    #[error("internal error: the configuration without the key is invalid: {0}")]
    Internal(String),
}

impl RetireError {
    /// True when the user's input is at fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::UnknownKey { .. })
    }
}

/// The keys named `name` (every keyed provider of every rule), refusing an
/// unknown name and a key that writes.
pub fn find(
    config: &EncryptionConfiguration,
    name: &str,
) -> Result<Vec<RetireTarget>, RetireError> {
    let mut out = Vec::new();
    let mut known = Vec::new();
    for rule in &config.rules {
        for (pi, p) in rule.providers.iter().enumerate() {
            for (ki, k) in p.keys.iter().enumerate() {
                let label = format!("{}:{}", p.kind, k.name);
                if !known.contains(&label) {
                    known.push(label.clone());
                }
                if k.name != name {
                    continue;
                }
                if pi == 0 && ki == 0 {
                    return Err(RetireError::Writing {
                        label,
                        resources: rule.resources.join(", "),
                    });
                }
                match out.iter_mut().find(|t: &&mut RetireTarget| {
                    t.label == label && t.fingerprint == k.fingerprint()
                }) {
                    Some(t) => t.resources.extend(rule.resources.iter().cloned()),
                    None => out.push(RetireTarget {
                        label,
                        fingerprint: k.fingerprint(),
                        resources: rule.resources.clone(),
                    }),
                }
            }
        }
    }
    if out.is_empty() {
        return Err(RetireError::UnknownKey {
            name: name.into(),
            known: if known.is_empty() {
                "none (no aescbc, aesgcm or secretbox provider)".into()
            } else {
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    Ok(out)
}

/// The proof: no stored value (`stored`, a census of etcd now, by label)
/// and no retained backup needs any of `targets`.
pub fn decide(
    targets: &[RetireTarget],
    stored: &std::collections::BTreeMap<String, u64>,
    backups: &[BackupKeys],
) -> Result<(), RetireError> {
    let label = targets[0].label.clone();
    let values: u64 = targets
        .iter()
        .map(|t| t.label.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|l| stored.get(l).copied().unwrap_or(0))
        .sum();
    let mut needs = Vec::new();
    if values > 0 {
        needs.push(format!(
            "{values} stored value(s) are encrypted with it (run `rekey etcd migrate`)"
        ));
    }
    let mut ids = Vec::new();
    for b in backups {
        let why = match &b.keys {
            None => Some("its keys were not recorded (taken before rekey recorded them)"),
            Some(keys) => keys
                .iter()
                .any(|u| {
                    targets
                        .iter()
                        .any(|t| u.needs(&t.label, Some(&t.fingerprint)))
                })
                .then_some("its snapshot holds values under it"),
        };
        if let Some(why) = why {
            ids.push(b.id);
            needs.push(format!(
                "backup {} ({}, {}) needs it: {why}; prune it first (`rekey backup prune`)",
                b.id,
                b.location,
                b.started_at.format("%Y-%m-%d %H:%M UTC")
            ));
        }
    }
    if needs.is_empty() {
        return Ok(());
    }
    Err(RetireError::StillNeeded {
        label,
        values,
        backups: ids,
        needs,
    })
}

/// The configuration without the keys named `name`; a provider left without
/// keys goes too. The result is parsed again and must be valid.
pub fn render_without(config: &EncryptionConfiguration, name: &str) -> Result<String, RetireError> {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Written by `rekey etcd rotate-key --retire {name}` ({}): key `{name}` removed.",
        Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    match config.kind {
        ConfigKind::Current => {
            y.push_str("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n");
        }
        ConfigKind::Legacy => y.push_str("apiVersion: v1\nkind: EncryptionConfig\n"),
    }
    y.push_str("resources:\n");
    for rule in &config.rules {
        y.push_str("  - resources:\n");
        for r in &rule.resources {
            let _ = writeln!(y, "      - {}", q(r));
        }
        y.push_str("    providers:\n");
        for p in &rule.providers {
            let keyed = matches!(
                p.kind,
                ProviderKind::Aescbc | ProviderKind::Aesgcm | ProviderKind::Secretbox
            );
            if !keyed || !p.keys.iter().any(|k| k.name == name) {
                provider_yaml(&mut y, p, None);
                continue;
            }
            let kept: Vec<_> = p.keys.iter().filter(|k| k.name != name).collect();
            if kept.is_empty() {
                continue;
            }
            let _ = writeln!(y, "      - {}:\n          keys:", p.kind);
            for k in kept {
                let secret = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(k.secret.expose_secret()),
                );
                key_yaml(&mut y, &k.name, &secret, k.created_at);
            }
        }
    }
    let y = zeroize::Zeroizing::new(y);
    let parsed = encryption::parse(&y).map_err(|e| RetireError::Internal(e.to_string()))?;
    if parsed
        .rules
        .iter()
        .flat_map(|r| r.providers.iter())
        .flat_map(|p| p.keys.iter())
        .any(|k| k.name == name)
    {
        return Err(RetireError::Internal(format!(
            "key `{name}` is still there"
        )));
    }
    Ok(y.to_string())
}

/// Writes `text` to `path` atomically (a temporary file in the same
/// directory, mode 0600, fsynced, renamed over it; the directory fsynced).
pub fn write_config(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.rekey-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("enc"),
        Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::etcd::encryption::{GroupResource, parse};

    const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    const K3: &str = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

    fn config() -> EncryptionConfiguration {
        parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - {{name: new, secret: {K1}}}\n            - {{name: mid, secret: {K3}}}\n      - aescbc:\n          keys:\n            - {{name: old, secret: {K2}}}\n      - identity: {{}}\n  - resources: [configmaps]\n    providers:\n      - identity: {{}}\n"
        ))
        .unwrap()
    }

    fn labels(text: &str) -> Vec<String> {
        parse(text)
            .unwrap()
            .transformers_for(&GroupResource::parse("secrets"))
            .iter()
            .map(|t| t.label())
            .collect()
    }

    #[test]
    fn unknown_and_writing_keys_are_refused() {
        let c = config();
        let e = find(&c, "nope").unwrap_err();
        assert!(e.is_bad_input());
        assert!(e.to_string().contains("`aescbc:old`"), "{e}");
        let e = find(&c, "new").unwrap_err();
        assert!(
            matches!(e, RetireError::Writing { .. }) && !e.is_bad_input(),
            "{e}"
        );
        let t = find(&c, "old").unwrap();
        assert_eq!(
            (t[0].label.as_str(), t[0].resources.clone()),
            ("aescbc:old", vec!["secrets".to_string()])
        );
    }

    #[test]
    fn values_or_backups_that_need_it_refuse() {
        let c = config();
        let t = find(&c, "old").unwrap();
        let stored: BTreeMap<String, u64> = [("aescbc:old".to_string(), 4)].into();
        let e = decide(&t, &stored, &[]).unwrap_err();
        let RetireError::StillNeeded { values, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(*values, 4);
        assert!(e.to_string().contains("4 stored value(s)"), "{e}");
        let b = |keys| BackupKeys {
            id: Uuid::nil(),
            location: "file:///b/x.rkb".into(),
            started_at: Utc::now(),
            keys,
        };
        let old_use = KeyUse {
            key: "aescbc:old".into(),
            fingerprint: Some(t[0].fingerprint.clone()),
            values: 2,
            writing: false,
            escrowed: true,
        };
        let e = decide(&t, &BTreeMap::new(), &[b(Some(vec![old_use.clone()]))]).unwrap_err();
        assert!(e.to_string().contains("file:///b/x.rkb"), "{e}");
        assert!(
            decide(&t, &BTreeMap::new(), &[b(None)]).is_err(),
            "unrecorded backups may need it"
        );
        let other = KeyUse {
            fingerprint: Some("0000000000000000".into()),
            ..old_use
        };
        assert!(
            decide(&t, &BTreeMap::new(), &[b(Some(vec![other]))]).is_ok(),
            "a different key of the same name"
        );
        assert!(decide(&t, &BTreeMap::new(), &[]).is_ok());
    }

    #[test]
    fn the_key_is_removed_and_its_empty_provider_with_it() {
        let c = config();
        let y = render_without(&c, "old").unwrap();
        assert_eq!(labels(&y), ["aesgcm:new", "aesgcm:mid", "identity"]);
        let y = render_without(&c, "mid").unwrap();
        assert_eq!(labels(&y), ["aesgcm:new", "aescbc:old", "identity"]);
        let again = parse(&y).unwrap();
        assert_eq!(again.rules[1].resources, ["configmaps"]);
    }

    #[test]
    fn the_file_is_replaced_atomically_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("enc.yaml");
        std::fs::write(&p, "old").unwrap();
        write_config(&p, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
