//! Which provider keys the stored values need: a classification of every
//! value the EncryptionConfiguration covers, by `provider:key`.
//!
//! ```text
//!   prefixes(config) ──► scan (classify only, one pinned revision, every prefix)
//!                            │ by_key: {"aescbc:old": 12, "aesgcm:new": 88, "identity": 3}
//!                            ▼
//!   uses(config, counts) ──► [KeyUse { key, fingerprint, values, writing }]
//! ```
//!
//! Used by `backup run` (the keys a snapshot needs, recorded with the backup
//! and escrowed next to it) and by `rotate-key --retire` (no value may still
//! need the key). Only the prefix of each value is read, never opened.

use std::collections::BTreeMap;

use etcd_client::Client;
use serde::{Deserialize, Serialize};

use super::{
    encryption::{EncryptionConfiguration, GroupResource, ProviderKind},
    scan::{self, ScanError, ScanOptions},
    values::Keyring,
};

/// One provider key and how much the stored values need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUse {
    /// `provider:name` (`identity` for plaintext, `kms:v2:name` for KMS).
    pub key: String,
    /// First 16 hex digits of SHA-256 of the key (absent for identity, kms,
    /// and keys the configuration does not hold): tells two keys with the
    /// same name apart without revealing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Values stored under it.
    pub values: u64,
    /// It is the write key of a rule: values written after the count (a
    /// backup's snapshot is taken just after) may be under it too.
    #[serde(default)]
    pub writing: bool,
    /// Its material is in the backup's key escrow.
    #[serde(default)]
    pub escrowed: bool,
}

impl KeyUse {
    /// Whether this use needs the key `label` (with `fingerprint`, when known).
    pub fn needs(&self, label: &str, fingerprint: Option<&str>) -> bool {
        self.key == label
            && (self.values > 0 || self.writing)
            && match (&self.fingerprint, fingerprint) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// What the census counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// The revision every prefix was read at.
    pub revision: i64,
    /// The prefixes read.
    pub prefixes: Vec<String>,
    /// Values per `provider:key` (`unknown` for unrecognised bytes).
    pub by_key: BTreeMap<String, u64>,
    /// Values seen.
    pub total: u64,
}

/// The etcd prefixes holding the resources `config` covers: the whole
/// `/registry/` when a rule covers a wildcard, else `/registry/<resource>/`
/// for each resource named (and `/registry/<group>/<resource>/` for a
/// resource of a named group, where custom resources live).
pub fn prefixes(config: &EncryptionConfiguration) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for rule in &config.rules {
        for r in &rule.resources {
            let gr = GroupResource::parse(r);
            if gr.resource == "*" || gr.group == "*" {
                return vec!["/registry/".into()];
            }
            out.push(format!("/registry/{}/", gr.resource));
            if !gr.group.is_empty() {
                out.push(format!("/registry/{}/{}/", gr.group, gr.resource));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Counts the values under `prefixes` by the key they are stored under, all
/// at one revision (`revision`, or the current one).
pub async fn count(
    client: &Client,
    config: &EncryptionConfiguration,
    prefixes: &[String],
    revision: Option<i64>,
) -> Result<Census, ScanError> {
    let ring = Keyring::census(config);
    let mut census = Census {
        revision: revision.unwrap_or(0),
        prefixes: prefixes.to_vec(),
        ..Default::default()
    };
    for prefix in prefixes {
        let opts = ScanOptions {
            prefix: prefix.clone(),
            resource: "*".into(),
            sample: Some(0),
            max_listed: 0,
            revision: (census.revision > 0).then_some(census.revision),
        };
        let report = scan::scan(client, &ring, &opts).await?;
        census.revision = report.revision;
        census.total += report.total;
        for (k, n) in report.by_key {
            *census.by_key.entry(k).or_default() += n;
        }
    }
    Ok(census)
}

/// The keys the counted values need, joined with the configuration: every
/// label counted, plus every rule's write key (with 0 values when none is
/// stored under it yet). Sorted by label.
pub fn uses(config: &EncryptionConfiguration, by_key: &BTreeMap<String, u64>) -> Vec<KeyUse> {
    let mut out: BTreeMap<String, KeyUse> = by_key
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(label, n)| {
            (
                label.clone(),
                KeyUse {
                    key: label.clone(),
                    fingerprint: fingerprint(config, label),
                    values: *n,
                    writing: false,
                    escrowed: false,
                },
            )
        })
        .collect();
    for rule in &config.rules {
        let Some(p) = rule.providers.first() else {
            continue;
        };
        let label = match (p.keys.first(), &p.kms) {
            (Some(k), _) => format!("{}:{}", p.kind, k.name),
            (None, Some(k)) => format!("kms:{}:{}", k.api_version, k.name),
            (None, None) => p.kind.to_string(),
        };
        out.entry(label.clone())
            .or_insert_with(|| KeyUse {
                key: label.clone(),
                fingerprint: fingerprint(config, &label),
                values: 0,
                writing: false,
                escrowed: false,
            })
            .writing = true;
    }
    out.into_values().collect()
}

/// The fingerprint of the first key of the configuration labelled `label`.
pub fn fingerprint(config: &EncryptionConfiguration, label: &str) -> Option<String> {
    let (provider, name) = label.split_once(':')?;
    config
        .rules
        .iter()
        .flat_map(|r| r.providers.iter())
        .filter(|p| p.kind.as_str() == provider && p.kind != ProviderKind::Kms)
        .flat_map(|p| p.keys.iter())
        .find(|k| k.name == name)
        .map(|k| k.fingerprint())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::encryption::parse;

    const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    fn config(resources: &str) -> EncryptionConfiguration {
        parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [{resources}]\n    providers:\n      - aesgcm:\n          keys:\n            - {{name: new, secret: {K1}}}\n      - aescbc:\n          keys:\n            - {{name: old, secret: {K2}}}\n      - identity: {{}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn prefixes_cover_named_resources_or_everything() {
        assert_eq!(
            prefixes(&config("secrets, configmaps, widgets.example.com")),
            [
                "/registry/configmaps/",
                "/registry/example.com/widgets/",
                "/registry/secrets/",
                "/registry/widgets/"
            ]
        );
        assert_eq!(prefixes(&config("'*.*'")), ["/registry/"]);
    }

    #[test]
    fn uses_join_counts_with_the_configuration() {
        let c = config("secrets");
        let counts: BTreeMap<String, u64> =
            [("aescbc:old".to_string(), 3), ("identity".to_string(), 1)].into();
        let u = uses(&c, &counts);
        let labels: Vec<(&str, u64, bool)> = u
            .iter()
            .map(|k| (k.key.as_str(), k.values, k.writing))
            .collect();
        assert_eq!(
            labels,
            [
                ("aescbc:old", 3, false),
                ("aesgcm:new", 0, true),
                ("identity", 1, false)
            ]
        );
        let old = &u[0];
        assert_eq!(old.fingerprint, fingerprint(&c, "aescbc:old"));
        assert!(old.needs("aescbc:old", old.fingerprint.as_deref()));
        assert!(!old.needs("aescbc:old", Some("0000000000000000")));
        assert!(
            u[1].needs("aesgcm:new", None),
            "a write key is needed even at 0 values"
        );
        assert!(u[2].fingerprint.is_none());
    }
}
