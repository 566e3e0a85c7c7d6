//! One full verification: the library entry point behind `rekey etcd
//! verify`, `POST /v1/etcd/verify` and the scheduled check.
//!
//! ```text
//!   read file ─► encryption::parse ─┬─ invalid ─► Report { valid: false, scan: null, exit 2 }
//!                                   └─ valid ─► Keyring ─► scan ─► policy ─► Report (exit 0/1)
//! ```

use std::path::PathBuf;

use chrono::Utc;

use super::{
    client::{ConnectError, connect},
    db::{self, Scope, Trigger},
    encryption::{self, ConfigKind, GroupResource},
    policy::{self, KeyAge},
    report::{ConfigReport, Report},
    scan::{self, DEFAULT_MAX_LISTED, ScanError, ScanOptions},
    settings::{DEFAULT_PREFIX, EtcdConfig},
    values::Keyring,
};
use crate::{
    store::{Store, StoreError},
    units::HumanDuration,
};

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The API server's EncryptionConfiguration file.
    pub encryption_config: PathBuf,
    /// How to reach etcd (endpoints, TLS).
    pub etcd: EtcdConfig,
    /// Key prefix scanned, e.g. `/registry/secrets/`.
    pub prefix: String,
    /// Resource whose rules apply (default: inferred from the prefix).
    pub resource: Option<String>,
    /// Open only this many values (None: all; 0: classification only).
    pub sample: Option<u64>,
    /// A write key older than this is an error.
    pub max_key_age: Option<HumanDuration>,
    /// Keys listed per category in the report.
    pub max_listed: usize,
}

impl VerifyOptions {
    /// Options from an `[etcd]` section (scheduled checks); `None` without
    /// `encryption_config`.
    pub fn from_config(etcd: &EtcdConfig) -> Option<Self> {
        Some(Self {
            encryption_config: etcd.encryption_config.clone()?,
            etcd: etcd.clone(),
            prefix: etcd.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into()),
            resource: etcd.resource.clone(),
            sample: etcd.sample,
            max_key_age: etcd.max_key_age,
            max_listed: DEFAULT_MAX_LISTED,
        })
    }

    /// The resource: given, or inferred from the prefix: the segment after
    /// `/registry/` (`/registry/secrets/kube-system/` is `secrets`), else a
    /// `secrets` segment, else the last segment. `--resource` is exact.
    pub fn resource_name(&self) -> String {
        if let Some(r) = &self.resource {
            return r.clone();
        }
        let segments: Vec<&str> = self.prefix.split('/').filter(|s| !s.is_empty()).collect();
        let inferred = match segments.as_slice() {
            ["registry", resource, ..] => Some(*resource),
            _ if segments.contains(&"secrets") => Some("secrets"),
            [.., last] => Some(*last),
            [] => None,
        };
        inferred.unwrap_or("secrets").to_string()
    }
}

/// The body of `POST /v1/etcd/verify`: overrides of the `[etcd]` defaults
/// for one check (all optional; unknown fields are refused).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Key prefix to scan.
    pub prefix: Option<String>,
    /// Resource whose rules apply.
    pub resource: Option<String>,
    /// Open only this many values (0: classify only).
    pub sample: Option<u64>,
    /// Keys listed per category.
    pub max_listed: Option<usize>,
}

impl VerifyRequest {
    /// Applies the request to options built from the config; errors name
    /// the bad field (for a 400).
    pub fn apply(&self, mut opts: VerifyOptions) -> Result<VerifyOptions, (String, String)> {
        if let Some(r) = &self.resource {
            if r.is_empty() || r.chars().any(|c| c.is_uppercase() || c.is_whitespace()) {
                return Err(("resource".into(), format!("`{r}` is not a resource name")));
            }
            opts.resource = Some(r.clone());
            if self.prefix.is_none() {
                opts.prefix = format!("/registry/{}/", GroupResource::parse(r).resource);
            }
        }
        if let Some(p) = &self.prefix {
            if !p.starts_with('/') {
                return Err(("prefix".into(), format!("`{p}` must start with `/`")));
            }
            opts.prefix = p.clone();
        }
        if let Some(n) = self.sample {
            opts.sample = Some(n);
        }
        if let Some(n) = self.max_listed {
            opts.max_listed = n;
        }
        Ok(opts)
    }
}

/// Why a verification could not run (a report with findings is not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The EncryptionConfiguration file could not be read.
    #[error("--encryption-config {path}: cannot read: {source}")]
    ReadConfig {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// etcd could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The scan failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// Reading key history or recording the result failed.
    #[error("etcd_checks: {0}")]
    Store(#[from] StoreError),
}

impl VerifyError {
    /// True when the caller's input is at fault (exit 2, HTTP 400).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::ReadConfig { .. } | Self::Connect(ConnectError::Read { .. })
        )
    }
}

/// Runs a verification. With `history`, the write key's age can come from
/// earlier recorded checks; nothing is written (see [`verify_and_record`]).
pub async fn verify(opts: &VerifyOptions, history: Option<&Store>) -> Result<Report, VerifyError> {
    let path = opts.encryption_config.display().to_string();
    // The file holds the keys (base64): wiped on drop.
    let text = std::fs::read_to_string(&opts.encryption_config)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| VerifyError::ReadConfig {
            path: path.clone(),
            source,
        })?;
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    };
    let config = match encryption::parse(&text) {
        Ok(c) => c,
        Err(errors) => {
            let config = ConfigReport {
                path,
                sha256: Some(sha256),
                valid: false,
                kind: None,
                write: None,
                write_fingerprint: None,
                findings: policy::invalid(&errors.0),
            };
            let exit_code = Report::compute_exit_code(&config, None);
            return Ok(Report {
                config,
                scan: None,
                checked_at: Utc::now(),
                exit_code,
            });
        }
    };
    let resource = opts.resource_name();
    let gr = GroupResource::parse(&resource);
    let ring = Keyring::new(&config, &gr);
    let transformers = config.transformers_for(&gr);
    let write_key = transformers.first().and_then(|t| t.key);
    let write_label = ring.write_label();
    let write_fingerprint = write_key.map(|k| k.fingerprint());

    let age = match (write_key, opts.max_key_age) {
        (Some(k), Some(_)) => match (k.created_at, history) {
            (Some(t), _) => KeyAge::Annotation(t),
            (None, Some(store)) => match db::first_seen_writing(store, &k.fingerprint()).await? {
                Some(t) => KeyAge::History(t),
                None => KeyAge::Unknown,
            },
            (None, None) => KeyAge::Unknown,
        },
        _ => KeyAge::Unknown,
    };

    let client = connect(&opts.etcd).await?;
    let scan_opts = ScanOptions {
        prefix: opts.prefix.clone(),
        resource: resource.clone(),
        sample: opts.sample,
        max_listed: opts.max_listed,
        revision: None,
    };
    let scan = scan::scan(&client, &ring, &scan_opts).await?;
    let budget = match (write_key, transformers.first()) {
        (Some(k), Some(t)) if t.provider.kind == encryption::ProviderKind::Aesgcm => {
            let first = match history {
                Some(store) => db::first_version_sum(store, &k.fingerprint(), &opts.prefix).await?,
                None => None,
            };
            Some(write_estimate(&write_label, &scan, first))
        }
        _ => None,
    };

    let now = Utc::now();
    let mut findings = policy::config_findings(
        &config,
        &gr,
        opts.max_key_age.map(HumanDuration::chrono),
        &age,
        now,
    );
    findings.extend(policy::scan_findings(&scan, ring.reads_plaintext()));
    findings.extend(budget.as_ref().and_then(policy::write_budget));
    let config_report = ConfigReport {
        path,
        sha256: Some(sha256),
        valid: true,
        kind: Some(
            match config.kind {
                ConfigKind::Current => "EncryptionConfiguration",
                ConfigKind::Legacy => "EncryptionConfig",
            }
            .into(),
        ),
        write: Some(write_label),
        write_fingerprint,
        findings,
    };
    let exit_code = Report::compute_exit_code(&config_report, Some(&scan));
    Ok(Report {
        config: config_report,
        scan: Some(scan),
        checked_at: now,
        exit_code,
    })
}

/// How many values an aesgcm write key has written: the growth of the
/// scanned values' write counts (etcd `version`) since the first recorded
/// check that saw it writing, and never fewer than the values stored under
/// it now (each was written with it at least once).
pub fn write_estimate(
    write_label: &str,
    scan: &crate::etcd::report::ScanReport,
    first: Option<(chrono::DateTime<Utc>, i64)>,
) -> policy::WriteEstimate {
    let under = scan.by_key.get(write_label).copied().unwrap_or(0);
    let (writes, basis) = match first {
        Some((at, v0)) => {
            let grown = scan
                .version_sum
                .saturating_sub(u64::try_from(v0).unwrap_or(0));
            (
                grown.max(under),
                format!(
                    "writes under {} since {}, when a recorded check first saw it writing",
                    scan.prefix,
                    at.format("%Y-%m-%d %H:%M UTC")
                ),
            )
        }
        None => (
            under,
            format!(
                "{under} values are stored under it; no earlier recorded check shows when it began writing"
            ),
        ),
    };
    policy::WriteEstimate {
        key: write_label.into(),
        writes,
        basis,
    }
}

/// Runs a verification and, with a store, records it in `etcd_checks`
/// (the key-age history comes from the same store). Returns the report and
/// the row id when recorded.
pub async fn verify_and_record(
    opts: &VerifyOptions,
    store: Option<&Store>,
    trigger: Trigger,
) -> Result<(Report, Option<i64>), VerifyError> {
    verify_and_record_audited(opts, store, trigger, None).await
}

/// [`verify_and_record`], with the caller's audit event committed in the
/// same transaction as the check's row (`audit` needs a store).
pub async fn verify_and_record_audited(
    opts: &VerifyOptions,
    store: Option<&Store>,
    trigger: Trigger,
    audit: Option<&crate::store::audit::Ticket>,
) -> Result<(Report, Option<i64>), VerifyError> {
    let started = Utc::now();
    let report = verify(opts, store).await?;
    let id = match store {
        Some(s) => {
            let resource = opts.resource_name();
            let scope = Scope {
                endpoints: &opts.etcd.endpoints,
                prefix: &opts.prefix,
                resource: &resource,
            };
            Some(db::record_audited(s, &report, scope, trigger, started, audit).await?)
        }
        None => None,
    };
    Ok((report, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_estimates_use_history_and_never_undercount_stored_values() {
        let mut scan = crate::etcd::report::ScanReport {
            prefix: "/registry/secrets/".into(),
            version_sum: 250_000,
            ..Default::default()
        };
        scan.by_key.insert("aesgcm:k".into(), 1000);
        let at = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            write_estimate("aesgcm:k", &scan, Some((at, 40_000))).writes,
            210_000
        );
        assert_eq!(
            write_estimate("aesgcm:k", &scan, Some((at, 249_900))).writes,
            1000
        );
        assert_eq!(write_estimate("aesgcm:k", &scan, None).writes, 1000);
    }

    #[test]
    fn requests_override_config() {
        let base = VerifyOptions::from_config(&EtcdConfig {
            encryption_config: Some("/e.yaml".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(base.prefix, "/registry/secrets/");
        let req: VerifyRequest =
            serde_json::from_str(r#"{"resource": "configmaps", "sample": 5}"#).unwrap();
        let o = req.apply(base.clone()).unwrap();
        assert_eq!(
            (o.prefix.as_str(), o.resource_name().as_str(), o.sample),
            ("/registry/configmaps/", "configmaps", Some(5))
        );
        let bad = VerifyRequest {
            prefix: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(bad.apply(base.clone()).unwrap_err().0, "prefix");
        assert!(serde_json::from_str::<VerifyRequest>(r#"{"colour": 1}"#).is_err());
    }
}
