//! What a storage migration is asked to do, what it reports, and the pure
//! decisions: which resources, where their values live, which values need a
//! rewrite, which object an etcd key is.

use std::{collections::BTreeMap, path::PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    backup::progress::Progress,
    etcd::{
        client::ConnectError,
        db::Trigger,
        encryption::{EncryptionConfiguration, GroupResource, ProviderKind},
        report::Problem,
        scan::ScanError,
        settings::EtcdConfig,
        values::{Format, Verdict},
    },
    k8s::K8sError,
    store::StoreError,
};

/// The default `--max-rate`: objects rewritten per second.
pub const DEFAULT_MAX_RATE: f64 = 100.0;

/// Rewrites in flight at once (each a GET and a PUT).
pub const CONCURRENCY: usize = 8;

/// What to migrate and how.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The API server's EncryptionConfiguration file.
    pub encryption_config: PathBuf,
    /// How to reach etcd.
    pub etcd: EtcdConfig,
    /// Resources to migrate (empty: every resource the configuration names).
    pub resources: Vec<String>,
    /// Objects rewritten per second at most (None: no limit).
    pub max_rate: Option<f64>,
    /// Only plan: scan, count, write nothing.
    pub dry_run: bool,
    /// What started it (recorded).
    pub trigger: Trigger,
    /// Who asked (recorded and audited).
    pub requested_by: String,
    /// Rewrites in flight at once.
    pub concurrency: usize,
    /// Objects done, for a progress bar.
    pub progress: Progress,
    /// An API request's audit ticket: the migration's audit event is the
    /// request's own (its caller and request id), written once.
    pub audit: Option<std::sync::Arc<crate::store::audit::Ticket>>,
}

impl MigrateOptions {
    /// Options from an `[etcd]` section (the scheduled job); `None` without
    /// `encryption_config`.
    pub fn from_config(etcd: &EtcdConfig, trigger: Trigger, requested_by: &str) -> Option<Self> {
        Some(Self {
            encryption_config: etcd.encryption_config.clone()?,
            etcd: etcd.clone(),
            resources: etcd.migrate_resources.clone(),
            max_rate: rate(etcd.migrate_max_rate.unwrap_or(DEFAULT_MAX_RATE)),
            dry_run: false,
            trigger,
            requested_by: requested_by.into(),
            concurrency: CONCURRENCY,
            progress: Progress::hidden(),
            audit: None,
        })
    }
}

/// `--max-rate N` as a limit: 0 means none.
pub fn rate(n: f64) -> Option<f64> {
    (n > 0.0).then_some(n)
}

/// The body of `POST /v1/etcd/migrate`: overrides of the `[etcd]` defaults
/// (all optional; unknown fields are refused).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// Resources to migrate, e.g. `["secrets", "configmaps"]`.
    pub resources: Option<Vec<String>>,
    /// Objects rewritten per second at most (0: no limit).
    pub max_rate: Option<f64>,
    /// Only plan.
    pub dry_run: Option<bool>,
}

impl MigrateRequest {
    /// Applies the request; errors name the bad field (for a 400).
    pub fn apply(&self, mut opts: MigrateOptions) -> Result<MigrateOptions, (String, String)> {
        if let Some(r) = &self.resources {
            for name in r {
                check_resource_name(name).map_err(|m| ("resources".to_string(), m))?;
            }
            opts.resources = r.clone();
        }
        if let Some(n) = self.max_rate {
            if !n.is_finite() || n < 0.0 {
                return Err(("max_rate".into(), format!("{n} is not a rate (0 or more)")));
            }
            opts.max_rate = rate(n);
        }
        if let Some(d) = self.dry_run {
            opts.dry_run = d;
        }
        Ok(opts)
    }
}

/// A resource name as the API server's configuration spells it.
pub fn check_resource_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.contains('*')
        || name.chars().any(|c| c.is_uppercase() || c.is_whitespace())
    {
        return Err(format!(
            "`{name}` is not a resource name (lower case, e.g. `secrets` or `deployments.apps`)"
        ));
    }
    Ok(())
}

/// One resource to migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePlan {
    /// As given, e.g. `secrets`.
    pub resource: String,
    /// Parsed.
    pub gr: GroupResource,
    /// Where its values live, e.g. `/registry/secrets/`.
    pub prefix: String,
    /// The write transformer every value must end up under, e.g. `aesgcm:new`.
    pub write_key: String,
    /// Fingerprint of the write key (None for identity and kms).
    pub write_fingerprint: Option<String>,
}

/// The resources to migrate: those asked for (each must be covered by the
/// configuration), or every resource a rule names (wildcard rules cannot be
/// enumerated: they need `--resources`).
pub fn plan_resources(
    config: &EncryptionConfiguration,
    requested: &[String],
) -> Result<Vec<ResourcePlan>, String> {
    let names: Vec<String> = if requested.is_empty() {
        let mut all = Vec::new();
        for rule in &config.rules {
            for r in &rule.resources {
                if r.contains('*') {
                    return Err(format!(
                        "the configuration covers `{r}`, which cannot be listed: name the resources to migrate with --resources"
                    ));
                }
                all.push(r.clone());
            }
        }
        all
    } else {
        requested.to_vec()
    };
    let mut out: Vec<ResourcePlan> = Vec::new();
    for name in names {
        check_resource_name(&name)?;
        let gr = GroupResource::parse(&name);
        let transformers = config.transformers_for(&gr);
        let Some(write) = transformers.first() else {
            return Err(format!(
                "`{name}` is not covered by the EncryptionConfiguration: nothing to migrate it to"
            ));
        };
        if out.iter().any(|p| p.gr == gr) {
            continue;
        }
        out.push(ResourcePlan {
            prefix: format!("/registry/{}/", gr.resource),
            write_key: write.label(),
            write_fingerprint: write.key.map(|k| k.fingerprint()),
            resource: name,
            gr,
        });
    }
    if out.is_empty() {
        return Err("the EncryptionConfiguration names no resource".into());
    }
    Ok(out)
}

/// Identifies a plan across runs (a stopped run is resumed by one with the
/// same plan): SHA-256 of each resource and its write key's fingerprint.
pub fn plan_id(plans: &[ResourcePlan]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in plans {
        h.update(format!(
            "{}={}@{}\n",
            p.resource,
            p.write_key,
            p.write_fingerprint.as_deref().unwrap_or("-")
        ));
    }
    hex::encode(h.finalize())
}

/// Whether a value (judged without opening it) must be rewritten to end up
/// under `write_key`: stale, or plaintext while the write provider encrypts.
pub fn needs_rewrite(v: &Verdict, write_key: &str) -> bool {
    if v.problem.is_some() {
        return false;
    }
    v.stale
        || (matches!(v.format, Format::Plaintext(_))
            && write_key != ProviderKind::Identity.as_str())
}

/// The object an etcd key holds: `(namespace, name)` for
/// `<prefix><namespace>/<name>`, `(None, name)` for `<prefix><name>`.
pub fn object_of(prefix: &str, key: &[u8]) -> Option<(Option<String>, String)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [name] if !name.is_empty() => Some((None, (*name).to_string())),
        [ns, name] if !ns.is_empty() && !name.is_empty() => {
            Some((Some((*ns).to_string()), (*name).to_string()))
        }
        _ => None,
    }
}

/// What happened to one resource.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceReport {
    /// The resource.
    pub resource: String,
    /// Where its values live.
    pub prefix: String,
    /// The write key every value must end up under.
    pub write_key: String,
    /// Values scanned before rewriting.
    pub total: u64,
    /// Values that needed a rewrite (stale or plaintext) before it started.
    pub to_rewrite: u64,
    /// Those values by the key they were under.
    pub by_key: BTreeMap<String, u64>,
    /// KMS values among them (only the API server's plugin opens them).
    pub not_verifiable: u64,
    /// PUT answered with a new resourceVersion.
    pub rewritten: u64,
    /// 409: someone else rewrote it meanwhile (just as good).
    pub conflicts: u64,
    /// 404: deleted meanwhile.
    pub gone: u64,
    /// The API server wrote nothing (it does not consider the value stale:
    /// is it running with this configuration's write key?).
    pub unchanged: u64,
    /// The last etcd key whose page is done (resumption point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Every page is done.
    #[serde(default)]
    pub done: bool,
    /// Stale (or plaintext) values the re-scan still counted (must be 0).
    pub stale_after: Option<u64>,
    /// The `etcd_checks` row of the re-scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_id: Option<i64>,
}

/// The outcome (the `--json` document of `rekey etcd migrate`, the body of
/// `POST /v1/etcd/migrate`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MigrateReport {
    /// The `etcd_migrations` row (None without a database, or with `--dry-run`).
    pub migration_id: Option<i64>,
    /// This run continued a stopped one (same row; counters are the whole
    /// migration's).
    pub resumed: bool,
    /// Nothing was written.
    pub dry_run: bool,
    /// The EncryptionConfiguration file.
    pub encryption_config: String,
    /// Objects per second at most (null: no limit).
    pub max_rate: Option<f64>,
    /// Per resource.
    pub resources: Vec<ResourceReport>,
    /// Values that needed a rewrite.
    pub planned: u64,
    /// Rewritten by this run.
    pub rewritten: u64,
    /// Rewritten by someone else (409).
    pub conflicts: u64,
    /// Deleted meanwhile (404).
    pub gone: u64,
    /// The API server wrote nothing.
    pub unchanged: u64,
    /// Stale values the re-scan counted over all resources (0 when done;
    /// null with `--dry-run`).
    pub stale_after: Option<u64>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Wall time.
    pub duration_ms: u64,
    /// Rewrites (PUTs that wrote) per second.
    pub rewrites_per_second: f64,
    /// 0 done (re-scan at zero); 1 failed or stale values remain.
    pub exit_code: u8,
    /// Why it failed.
    pub error: Option<String>,
}

/// Why a migration could not run (a report with `exit_code` 1 is not an error).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The configuration file could not be read.
    #[error("--encryption-config {path}: cannot read: {source}")]
    ReadConfig {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is invalid, or a resource cannot be migrated.
    #[error("{0}")]
    BadInput(String),
    /// The configuration does not match what is stored: values it cannot
    /// open (nothing was rewritten).
    #[error(
        "{resource}: {count} stored value(s) cannot be read with this EncryptionConfiguration, so it \
         does not match what the API server uses; nothing was rewritten. {}",
        .examples.iter().map(|p| format!("{}: {}", p.key, p.reason)).collect::<Vec<_>>().join("; ")
    )]
    Mismatch {
        /// The resource.
        resource: String,
        /// How many.
        count: u64,
        /// Some of them, with the reason.
        examples: Vec<Problem>,
    },
    /// Another migration holds the lock.
    #[error(
        "another `rekey etcd migrate` is running (the etcd-migrate lock is held); try again when it has finished"
    )]
    Busy,
    /// etcd could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Reading etcd failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The Kubernetes API failed (before any rewrite).
    #[error(transparent)]
    Kube(#[from] K8sError),
    /// Postgres failed.
    #[error("etcd_migrations: {0}")]
    Store(#[from] StoreError),
}

impl MigrateError {
    /// True when the caller's input is at fault (exit 2, HTTP 400).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::ReadConfig { .. } | Self::BadInput(_) | Self::Connect(ConnectError::Read { .. })
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::{encryption::parse, values::PlainFormat};

    const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn config(extra: &str) -> EncryptionConfiguration {
        parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets, configmaps]\n    providers:\n      - aesgcm:\n          keys:\n            - {{name: new, secret: {K1}}}\n      - identity: {{}}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn resources_default_to_what_the_configuration_names() {
        let c = config("");
        let p = plan_resources(&c, &[]).unwrap();
        let names: Vec<_> = p
            .iter()
            .map(|p| (p.resource.as_str(), p.prefix.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("secrets", "/registry/secrets/"),
                ("configmaps", "/registry/configmaps/")
            ]
        );
        assert_eq!(p[0].write_key, "aesgcm:new");
        assert!(
            plan_resources(&c, &["deployments.apps".into()]).is_err(),
            "not covered"
        );
        assert!(plan_resources(&c, &["Secrets".into()]).is_err());
        let wild = config("  - resources: ['*.*']\n    providers:\n      - identity: {}\n");
        assert!(
            plan_resources(&wild, &[])
                .unwrap_err()
                .contains("--resources")
        );
        assert_eq!(
            plan_resources(&wild, &["leases.coordination.k8s.io".into()]).unwrap()[0].write_key,
            "identity"
        );
        assert_ne!(plan_id(&p), plan_id(&p[..1]));
    }

    #[test]
    fn keys_name_objects() {
        let p = "/registry/secrets/";
        assert_eq!(
            object_of(p, b"/registry/secrets/ns/a"),
            Some((Some("ns".into()), "a".into()))
        );
        assert_eq!(
            object_of(p, b"/registry/secrets/a"),
            Some((None, "a".into()))
        );
        assert_eq!(object_of(p, b"/registry/secrets/a/b/c"), None);
        assert_eq!(object_of(p, b"/registry/configmaps/a/b"), None);
    }

    #[test]
    fn stale_and_plaintext_values_need_a_rewrite() {
        let v = |format, stale, problem: Option<&str>| Verdict {
            format,
            stale,
            problem: problem.map(String::from),
            verified: false,
            not_verifiable: false,
        };
        let plain = Format::Plaintext(PlainFormat::Protobuf);
        let enc = Format::Encrypted {
            provider: ProviderKind::Aescbc,
            version: "v1".into(),
            key: "old".into(),
        };
        assert!(needs_rewrite(&v(enc.clone(), true, None), "aesgcm:new"));
        assert!(!needs_rewrite(&v(enc.clone(), false, None), "aesgcm:new"));
        assert!(!needs_rewrite(&v(enc, true, Some("bad")), "aesgcm:new"));
        assert!(needs_rewrite(&v(plain.clone(), false, None), "aesgcm:new"));
        assert!(!needs_rewrite(&v(plain, false, None), "identity"));
    }

    #[test]
    fn requests_override_and_are_checked() {
        let base = MigrateOptions::from_config(
            &EtcdConfig {
                encryption_config: Some("/e.yaml".into()),
                ..Default::default()
            },
            Trigger::Api,
            "t",
        )
        .unwrap();
        assert_eq!(base.max_rate, Some(DEFAULT_MAX_RATE));
        let r: MigrateRequest =
            serde_json::from_str(r#"{"resources": ["secrets"], "max_rate": 0, "dry_run": true}"#)
                .unwrap();
        let o = r.apply(base.clone()).unwrap();
        assert_eq!(
            (o.resources.as_slice(), o.max_rate, o.dry_run),
            (&["secrets".to_string()][..], None, true)
        );
        let bad: MigrateRequest = serde_json::from_str(r#"{"max_rate": -1}"#).unwrap();
        assert_eq!(bad.apply(base.clone()).unwrap_err().0, "max_rate");
        assert!(serde_json::from_str::<MigrateRequest>(r#"{"colour": 1}"#).is_err());
    }
}
