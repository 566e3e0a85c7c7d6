//! Policy findings beyond what the API server checks.
//!
//! Pure functions of the parsed configuration, the scan's numbers and the
//! clock (passed in). Each finding has a stable id, a severity and a one-line
//! fix; ids are part of the `--json` contract:
//!
//! | id | severity | when |
//! |----|----------|------|
//! | `invalid-config` | error | the API server would reject the file (one per error) |
//! | `legacy-kind` | warning | `kind: EncryptionConfig` (pre-1.13 format) |
//! | `secrets-not-encrypted` | error | identity writes Secrets, or no rule covers them |
//! | `resource-not-encrypted` | warning | same, for another scanned resource |
//! | `aescbc-not-recommended` | warning | an `aescbc` provider (unauthenticated, padding oracle) |
//! | `aesgcm-needs-rotation` | warning | `aesgcm` writes and no `max_key_age` enforces rotation |
//! | `kms-v1-deprecated` | warning | a KMS v1 provider |
//! | `duplicate-key-name` | warning | two keys of one provider share a name |
//! | `colon-in-key-name` | warning | a key name contains `:` |
//! | `aescbc-short-key` | warning | an `aescbc` key shorter than 32 bytes |
//! | `write-key-too-old` | error | the write key is older than `max_key_age` |
//! | `write-key-age-unknown` | info | `max_key_age` is set but no age is known |
//! | `no-identity-fallback` | error | plaintext values exist and no `identity` provider reads them |
//! | `plaintext-values` | error | values stored unencrypted |
//! | `undecryptable-values` | error | values the API server could not read |
//! | `stale-values` | warning | values not written with the current write key |
//! | `aesgcm-write-budget` | warning / error | an aesgcm write key has written about 150,000 / 200,000 values |
//! | `kms-not-verifiable` | info | KMS values (only the plugin can open them) |

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};

use super::{
    encryption::{
        ConfigKind, EncryptionConfiguration, GroupResource, ProviderKind, ValidationError,
    },
    report::{Finding, ScanReport, Severity},
};

fn finding(id: &str, severity: Severity, message: String, fix: &str) -> Finding {
    Finding {
        id: id.into(),
        severity,
        message,
        fix: fix.into(),
        path: None,
        line: None,
    }
}

fn at(mut f: Finding, path: &str, line: Option<usize>) -> Finding {
    f.path = Some(path.into());
    f.line = line;
    f
}

/// The API server's validation errors as findings.
pub fn invalid(errors: &[ValidationError]) -> Vec<Finding> {
    errors
        .iter()
        .map(|e| {
            at(
                finding(
                    "invalid-config",
                    Severity::Error,
                    e.message.clone(),
                    "fix this field: the API server refuses to start with this file",
                ),
                &e.path,
                e.line,
            )
        })
        .collect()
}

/// Where the write key's age comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAge {
    /// A `# rekey.io/created-at:` comment in the file.
    Annotation(DateTime<Utc>),
    /// The first recorded check (in `etcd_checks`) that saw this key writing.
    History(DateTime<Utc>),
    /// Not known.
    Unknown,
}

/// Findings from the configuration alone (plus the write key's age).
pub fn config_findings(
    config: &EncryptionConfiguration,
    scanned: &GroupResource,
    max_key_age: Option<TimeDelta>,
    age: &KeyAge,
    now: DateTime<Utc>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if config.kind == ConfigKind::Legacy {
        out.push(finding(
            "legacy-kind",
            Severity::Warning,
            "`kind: EncryptionConfig` (apiVersion v1) is the pre-1.13 format that current API servers no longer read".into(),
            "use `apiVersion: apiserver.config.k8s.io/v1` and `kind: EncryptionConfiguration`",
        ));
    }
    let secrets = GroupResource::parse("secrets");
    let mut resources = vec![secrets.clone()];
    if *scanned != secrets {
        resources.push(scanned.clone());
    }
    for gr in &resources {
        let providers = config.providers_for(gr);
        let first = providers.first();
        let not_encrypted = first.is_none_or(|p| p.kind == ProviderKind::Identity);
        if not_encrypted {
            let name = if gr.group.is_empty() {
                gr.resource.clone()
            } else {
                format!("{}.{}", gr.resource, gr.group)
            };
            let why = match first {
                None => format!("no rule covers `{name}`: they are stored in plaintext"),
                Some(p) => format!(
                    "`identity` is the first provider for `{name}` ({}): new values are stored in plaintext",
                    p.path
                ),
            };
            let (id, sev) = if *gr == secrets {
                ("secrets-not-encrypted", Severity::Error)
            } else {
                ("resource-not-encrypted", Severity::Warning)
            };
            let mut f = finding(
                id,
                sev,
                why,
                "put an aesgcm, secretbox or kms v2 provider first for this resource",
            );
            if let Some(p) = first {
                f = at(f, &p.path, p.line);
            }
            out.push(f);
        }
    }
    let write = config.providers_for(scanned).into_iter().next();
    for rule in &config.rules {
        for (idx, p) in rule.providers.iter().enumerate() {
            match p.kind {
                ProviderKind::Aescbc => {
                    let sev = if idx == 0 {
                        Severity::Warning
                    } else {
                        Severity::Info
                    };
                    out.push(at(
                        finding(
                            "aescbc-not-recommended",
                            sev,
                            "aescbc is unauthenticated and open to padding-oracle attacks; Kubernetes no longer recommends it".into(),
                            "switch the write provider to secretbox or kms v2 (add it first, rewrite all values, then drop aescbc)",
                        ),
                        &p.path,
                        p.line,
                    ));
                    for k in &p.keys {
                        use crate::secret::ExposeSecret;
                        let len = k.secret.expose_secret().len();
                        if len < 32 {
                            out.push(at(
                                finding(
                                    "aescbc-short-key",
                                    Severity::Warning,
                                    format!(
                                        "aescbc key `{}` is {len} bytes; 32 is recommended",
                                        k.name
                                    ),
                                    "generate 32 random bytes: `head -c 32 /dev/urandom | base64`",
                                ),
                                &format!("{}.secret", k.path),
                                k.line,
                            ));
                        }
                    }
                }
                ProviderKind::Aesgcm if idx == 0 && max_key_age.is_none() => {
                    out.push(at(
                        finding(
                            "aesgcm-needs-rotation",
                            Severity::Warning,
                            "aesgcm keys must be rotated before about 200,000 writes (random 96-bit nonces); no max_key_age enforces rotation".into(),
                            "set etcd.max_key_age (or --max-key-age) and rotate with `rekey etcd rotate-key`, or use secretbox / kms v2",
                        ),
                        &p.path,
                        p.line,
                    ));
                }
                ProviderKind::Kms => {
                    if let Some(k) = &p.kms
                        && k.api_version == "v1"
                    {
                        out.push(at(
                            finding(
                                "kms-v1-deprecated",
                                Severity::Warning,
                                format!("KMS v1 provider `{}` is deprecated (disabled by default since Kubernetes 1.29)", k.name),
                                "migrate to a KMS v2 plugin (`apiVersion: v2`)",
                            ),
                            &p.path,
                            p.line,
                        ));
                    }
                }
                _ => {}
            }
            let mut seen: HashMap<&str, &str> = HashMap::new();
            for k in &p.keys {
                if let Some(first) = seen.insert(k.name.as_str(), k.path.as_str()) {
                    out.push(at(
                        finding(
                            "duplicate-key-name",
                            Severity::Warning,
                            format!("key name `{}` is also used by {first}: both write the same prefix, so reads must try each", k.name),
                            "give every key of a provider a distinct name",
                        ),
                        &format!("{}.name", k.path),
                        k.line,
                    ));
                }
                if k.name.contains(':') {
                    out.push(at(
                        finding(
                            "colon-in-key-name",
                            Severity::Warning,
                            format!("key name `{}` contains `:`, the prefix separator: prefixes of different keys can overlap", k.name),
                            "rename the key without `:` (add the new name first, rewrite, then remove the old one)",
                        ),
                        &format!("{}.name", k.path),
                        k.line,
                    ));
                }
            }
        }
    }
    if let (Some(max), Some(w)) = (max_key_age, write)
        && let Some(key) = w.keys.first()
    {
        match age {
            KeyAge::Annotation(t) | KeyAge::History(t) => {
                let source = if matches!(age, KeyAge::Annotation(_)) {
                    "its rekey.io/created-at annotation"
                } else {
                    "the first check that saw it writing"
                };
                let key_age = now - *t;
                if key_age > max {
                    out.push(at(
                        finding(
                            "write-key-too-old",
                            Severity::Error,
                            format!(
                                "write key `{}` is {} days old (since {}, from {source}); the maximum is {} days",
                                key.name,
                                key_age.num_days(),
                                t.format("%Y-%m-%d"),
                                max.num_days()
                            ),
                            "rotate it: `rekey etcd rotate-key --encryption-config FILE --out DIR`",
                        ),
                        &key.path,
                        key.line,
                    ));
                }
            }
            KeyAge::Unknown => out.push(at(
                finding(
                    "write-key-age-unknown",
                    Severity::Info,
                    format!("the age of write key `{}` is unknown", key.name),
                    "add `# rekey.io/created-at: YYYY-MM-DD` above the key, or record checks in a database",
                ),
                &key.path,
                key.line,
            )),
        }
    }
    out
}

/// Writes after which an aesgcm key must be rotated (Kubernetes' guidance:
/// random 96-bit nonces; "must be rotated every 200k writes").
pub const AESGCM_WRITE_BUDGET: u64 = 200_000;

/// The share of [`AESGCM_WRITE_BUDGET`] at which the finding starts warning.
pub const AESGCM_WRITE_WARN: u64 = 150_000;

/// How many values an aesgcm write key has written, as far as rekey can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteEstimate {
    /// The write key's label, e.g. `aesgcm:key1`.
    pub key: String,
    /// Estimated writes under it.
    pub writes: u64,
    /// Where the estimate comes from, for the message.
    pub basis: String,
}

/// `aesgcm-write-budget`: an aesgcm write key near or past its budget.
pub fn write_budget(est: &WriteEstimate) -> Option<Finding> {
    let severity = if est.writes >= AESGCM_WRITE_BUDGET {
        Severity::Error
    } else if est.writes >= AESGCM_WRITE_WARN {
        Severity::Warning
    } else {
        return None;
    };
    Some(finding(
        "aesgcm-write-budget",
        severity,
        format!(
            "aesgcm write key `{}` has written about {} values ({}); aesgcm keys must be rotated before {} writes",
            est.key, est.writes, est.basis, AESGCM_WRITE_BUDGET
        ),
        "rotate now: `rekey etcd rotate-key`, restart the API servers, `rekey etcd migrate`, then `rekey etcd rotate-key --retire` the old key",
    ))
}

/// Findings from what the scan saw.
pub fn scan_findings(scan: &ScanReport, reads_plaintext: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let c = &scan.counts;
    if c.plaintext > 0 && !reads_plaintext {
        out.push(finding(
            "no-identity-fallback",
            Severity::Error,
            format!("{} plaintext values exist but no `identity` provider is configured: the API server cannot read them", c.plaintext),
            "add `- identity: {}` as the last provider until every value has been rewritten",
        ));
    }
    if c.plaintext > 0 {
        out.push(finding(
            "plaintext-values",
            Severity::Error,
            format!("{} values under {} are stored in plaintext", c.plaintext, scan.prefix),
            "rewrite them with encryption on: `kubectl get secrets -A -o json | kubectl replace -f -`",
        ));
    }
    if c.undecryptable > 0 {
        out.push(finding(
            "undecryptable-values",
            Severity::Error,
            format!("{} values under {} cannot be read with the configured keys", c.undecryptable, scan.prefix),
            "restore the missing key to the configuration, or delete and recreate the affected objects",
        ));
    }
    if c.stale > 0 {
        out.push(finding(
            "stale-values",
            Severity::Warning,
            format!("{} values are not written with the current write key", c.stale),
            "rewrite them with `rekey etcd migrate`, then drop the old key with `rekey etcd rotate-key --retire NAME`",
        ));
    }
    if scan.not_verifiable > 0 {
        out.push(finding(
            "kms-not-verifiable",
            Severity::Info,
            format!("{} values are KMS-encrypted: only the KMS plugin can open them, so they were classified but not decrypted", scan.not_verifiable),
            "none needed; read one through the API server to prove the plugin works",
        ));
    }
    out
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_write_budget_warns_then_fails() {
        let est = |writes| WriteEstimate {
            key: "aesgcm:k".into(),
            writes,
            basis: "test".into(),
        };
        assert!(write_budget(&est(149_999)).is_none());
        let w = write_budget(&est(150_000)).unwrap();
        assert_eq!(
            (w.id.as_str(), w.severity),
            ("aesgcm-write-budget", Severity::Warning)
        );
        assert_eq!(
            write_budget(&est(200_000)).unwrap().severity,
            Severity::Error
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::encryption::parse;

    const K32: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    const K16: &str = "MDEyMzQ1Njc4OWFiY2RlZg==";

    fn cfg(providers: &str) -> EncryptionConfiguration {
        parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n{providers}"
        ))
        .unwrap()
    }

    fn ids(f: &[Finding]) -> Vec<(&str, Severity)> {
        f.iter().map(|f| (f.id.as_str(), f.severity)).collect()
    }

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn identity_first_and_uncovered() {
        let c = cfg(&format!(
            "      - identity: {{}}\n      - aesgcm:\n          keys: [{{name: k, secret: {K32}}}]\n"
        ));
        let f = config_findings(
            &c,
            &GroupResource::parse("secrets"),
            None,
            &KeyAge::Unknown,
            now(),
        );
        assert_eq!(f[0].id, "secrets-not-encrypted");
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(f[0].path.as_deref(), Some("resources[0].providers[0]"));
        let f = config_findings(
            &c,
            &GroupResource::parse("configmaps"),
            None,
            &KeyAge::Unknown,
            now(),
        );
        assert!(ids(&f).contains(&("resource-not-encrypted", Severity::Warning)));
    }

    #[test]
    fn provider_findings() {
        let c = cfg(&format!(
            "      - aescbc:\n          keys:\n            - {{name: 'a:b', secret: {K16}}}\n            - {{name: 'a:b', secret: {K32}}}\n      - kms: {{name: old, endpoint: 'unix:///k'}}\n"
        ));
        let f = config_findings(
            &c,
            &GroupResource::parse("secrets"),
            None,
            &KeyAge::Unknown,
            now(),
        );
        let got = ids(&f);
        for want in [
            ("aescbc-not-recommended", Severity::Warning),
            ("aescbc-short-key", Severity::Warning),
            ("duplicate-key-name", Severity::Warning),
            ("colon-in-key-name", Severity::Warning),
            ("kms-v1-deprecated", Severity::Warning),
        ] {
            assert!(got.contains(&want), "{want:?} missing from {got:?}");
        }
        assert!(!got.iter().any(|(id, _)| *id == "secrets-not-encrypted"));
        let short = f.iter().find(|f| f.id == "aescbc-short-key").unwrap();
        assert_eq!(
            short.path.as_deref(),
            Some("resources[0].providers[0].aescbc.keys[0].secret")
        );
        assert_eq!(short.line, Some(8));
    }

    #[test]
    fn aesgcm_rotation_and_key_age() {
        let c = cfg(&format!(
            "      - aesgcm:\n          keys: [{{name: k, secret: {K32}}}]\n"
        ));
        let gr = GroupResource::parse("secrets");
        let f = config_findings(&c, &gr, None, &KeyAge::Unknown, now());
        assert_eq!(ids(&f), [("aesgcm-needs-rotation", Severity::Warning)]);
        let max = Some(TimeDelta::days(90));
        let f = config_findings(&c, &gr, max, &KeyAge::Unknown, now());
        assert_eq!(ids(&f), [("write-key-age-unknown", Severity::Info)]);
        let young = KeyAge::History(now() - TimeDelta::days(10));
        assert!(config_findings(&c, &gr, max, &young, now()).is_empty());
        let old = KeyAge::Annotation(now() - TimeDelta::days(100));
        let f = config_findings(&c, &gr, max, &old, now());
        assert_eq!(ids(&f), [("write-key-too-old", Severity::Error)]);
        assert!(f[0].message.contains("100 days"), "{}", f[0].message);
    }

    #[test]
    fn scan_based() {
        let mut s = ScanReport {
            prefix: "/registry/secrets/".into(),
            ..Default::default()
        };
        assert!(scan_findings(&s, false).is_empty());
        s.counts.plaintext = 2;
        s.counts.stale = 1;
        s.counts.undecryptable = 1;
        s.not_verifiable = 3;
        let got: Vec<String> = scan_findings(&s, false).into_iter().map(|f| f.id).collect();
        assert_eq!(
            got,
            [
                "no-identity-fallback",
                "plaintext-values",
                "undecryptable-values",
                "stale-values",
                "kms-not-verifiable"
            ]
        );
        assert!(
            !scan_findings(&s, true)
                .iter()
                .any(|f| f.id == "no-identity-fallback")
        );
    }
}
