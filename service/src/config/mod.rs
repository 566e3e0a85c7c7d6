//! The configuration file (`rekey.toml`): the sections the capabilities
//! own, composed into one [`Config`], with the checks that span sections.
//!
//! Parsing is strict: unknown fields are errors, durations are human
//! (`24h`, `90d`), and every error names the field (`certificate[1].lifetime`)
//! and, where it can, the line. Environment variables override scalar fields:
//! `REKEY_<SECTION>_<FIELD>` (e.g. `REKEY_API_LISTEN`, `REKEY_BACKUP_KEEP`),
//! and `DATABASE_URL` overrides `database.url`.
//!
//! - here: [`Config`] and [`Config::validate`] (each section's own checks,
//!   prefixed with its path, plus uniqueness of names and sinks);
//! - [`load`]: reading, parsing, paths, `database.url_file`, error lines;
//! - [`env`]: the environment overrides;
//! - [`error`]: the [`ConfigError`] type.
//!
//! Each section type lives with the capability that owns it:
//! `store::DatabaseConfig`, `issue::{IssuerConfig, CertificateSpec}`,
//! `rotate::{EngineConfig, TokenSpec}`, `scan::ScanConfig`,
//! `k8s::{KubernetesConfig, BootstrapTokensConfig}`, `api::ApiConfig`,
//! `telemetry::MetricsConfig`, `etcd::EtcdConfig`, `backup::BackupConfig`.

pub mod env;
pub mod error;
pub mod load;

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Serialize};

pub use error::ConfigError;

use crate::{
    api::ApiConfig,
    backup::BackupConfig,
    etcd::EtcdConfig,
    issue::{self, IssuerConfig, IssuerKind, IssuerSection},
    k8s::{BootstrapTokensConfig, KubernetesConfig, MIN_TOKEN_LIFETIME_SECS},
    rotate::{EngineConfig, TokenSpec},
    scan::ScanConfig,
    sink,
    store::{DatabaseConfig, credentials::validate_name},
    telemetry::MetricsConfig,
};

/// The whole configuration file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the inventory lives.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// Who signs certificates: `[issuer]` (the issuer `default`) or `[[issuer]]`.
    pub issuer: Option<IssuerSection>,
    /// How the rotation engine claims and runs work.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Certificates rekey issues and rotates.
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<issue::CertificateSpec>,
    /// Service-account tokens rekey requests and rotates.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenSpec>,
    /// Trust bundles published alone (`[[bundle]]`), for consumers that only verify.
    #[serde(default, rename = "bundle")]
    pub bundles: Vec<sink::trust::BundleTargetSpec>,
    /// Directories of certificates rekey did not issue, tracked for expiry.
    #[serde(default, rename = "scan")]
    pub scans: Vec<ScanConfig>,
    /// How to reach the Kubernetes API (in-cluster config when absent).
    pub kubernetes: Option<KubernetesConfig>,
    /// Bootstrap-token revocation policy.
    pub bootstrap_tokens: Option<BootstrapTokensConfig>,
    /// The admin API.
    pub api: Option<ApiConfig>,
    /// The Prometheus endpoint.
    pub metrics: Option<MetricsConfig>,
    /// etcd access for encryption checks and backups.
    pub etcd: Option<EtcdConfig>,
    /// Encrypted etcd backups.
    pub backup: Option<BackupConfig>,
}

impl Config {
    /// Checks everything serde cannot: each section's own checks (ranges,
    /// names, cron syntax), then uniqueness of credential names and sinks
    /// across `[[certificate]]` and `[[token]]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine.validate().map_err(within("engine"))?;
        if let Some(i) = &self.issuer {
            i.validate()
                .map_err(|(path, m)| ConfigError::new(path, m))?;
        }
        let issuers = self.issuers();
        let mut names = HashSet::new();
        let mut sinks = HashSet::new();
        for (i, c) in self.certificates.iter().enumerate() {
            let at = format!("certificate[{i}]");
            unique_name(&at, &c.name, &mut names)?;
            c.validate().map_err(within(&at))?;
            unique_sink(&at, &c.sink, &mut sinks)?;
            check_issuer(&at, c, &issuers)?;
        }
        let token_floor = Duration::from_secs(MIN_TOKEN_LIFETIME_SECS);
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("token[{i}]");
            unique_name(&at, &t.name, &mut names)?;
            t.validate(token_floor).map_err(within(&at))?;
            unique_sink(&at, &t.sink, &mut sinks)?;
        }
        let mut bundle_names = HashSet::new();
        let mut bundle_sinks = HashSet::new();
        for (i, b) in self.bundles.iter().enumerate() {
            let at = format!("bundle[{i}]");
            b.validate().map_err(within(&at))?;
            if !bundle_names.insert(b.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("duplicate bundle name `{}`", b.name),
                ));
            }
            if !bundle_sinks.insert(&b.sink) {
                return Err(ConfigError::new(
                    format!("{at}.sink"),
                    "another bundle already publishes to this place",
                ));
            }
            let issuer_names = self.issuer_names();
            if !issuer_names.contains(&b.issuer) {
                return Err(ConfigError::new(
                    format!("{at}.issuer"),
                    format!(
                        "no issuer named `{}` (issuers: {})",
                        b.issuer,
                        match issuer_names.as_slice() {
                            [] => "none: add [issuer]".to_string(),
                            names => names.join(", "),
                        }
                    ),
                ));
            }
        }
        for (i, s) in self.scans.iter().enumerate() {
            s.validate().map_err(within(&format!("scan[{i}]")))?;
        }
        if let Some(b) = &self.bootstrap_tokens {
            b.validate().map_err(within("bootstrap_tokens"))?;
        }
        if let Some(a) = &self.api {
            a.validate().map_err(within("api"))?;
        }
        if let Some(x) = &self.etcd {
            x.validate().map_err(within("etcd"))?;
        }
        if let Some(b) = &self.backup {
            b.validate().map_err(within("backup"))?;
        }
        Ok(())
    }

    /// Every issuer, in file order (`[issuer]` is the one named `default`).
    pub fn issuers(&self) -> Vec<IssuerConfig> {
        self.issuer.as_ref().map(|i| i.list()).unwrap_or_default()
    }

    /// The names of the configured issuers, in file order.
    pub fn issuer_names(&self) -> Vec<String> {
        self.issuers()
            .iter()
            .map(|i| i.name().to_string())
            .collect()
    }

    /// Whether the service needs the Kubernetes API: `[kubernetes]`, a
    /// kubernetes-secret sink, a `[[token]]`, consumers to reload,
    /// `[bootstrap_tokens]`, an issuer in the cluster (a CA in a Secret, a
    /// `kubernetes-csr` signer), or a ConfigMap `[[bundle]]`.
    pub fn needs_kubernetes(&self) -> bool {
        self.kubernetes.is_some()
            || self.bootstrap_tokens.is_some()
            || self
                .etcd
                .as_ref()
                .is_some_and(|e| e.migrate_schedule.is_some())
            || !self.tokens.is_empty()
            || self
                .issuers()
                .iter()
                .any(|i| i.secret.is_some() || i.kind == IssuerKind::KubernetesCsr)
            || self
                .bundles
                .iter()
                .any(|b| matches!(b.sink, sink::trust::BundleSinkSpec::ConfigMap { .. }))
            || self.certificates.iter().any(|c| {
                matches!(c.sink, sink::SinkSpec::KubernetesSecret { .. }) || !c.reload.is_empty()
            })
    }
}

/// Turns a section's `(field, message)` into an error at `section.field`.
fn within(section: &str) -> impl Fn((String, String)) -> ConfigError + '_ {
    move |(field, message)| ConfigError::new(format!("{section}.{field}"), message)
}

/// The certificate's issuer exists, and what it signs fits the signer.
fn check_issuer(
    at: &str,
    c: &issue::CertificateSpec,
    issuers: &[IssuerConfig],
) -> Result<(), ConfigError> {
    let name = c.issuer_name();
    let Some(issuer) = issuers.iter().find(|i| i.name() == name) else {
        let known: Vec<&str> = issuers.iter().map(|i| i.name()).collect();
        let message = match (c.issuer.is_some(), known.is_empty()) {
            (_, true) => format!(
                "issuer `{name}` is not configured: there is no [issuer] (create a CA with `rekey ca init --out DIR` and add [issuer] ca_cert/ca_key)"
            ),
            (true, false) => format!(
                "no issuer named `{name}` (configured: {})",
                known.join(", ")
            ),
            (false, false) => format!(
                "this certificate has no `issuer`, and there is no issuer named `default` (configured: {}): name one",
                known.join(", ")
            ),
        };
        return Err(ConfigError::new(format!("{at}.issuer"), message));
    };
    if let (IssuerKind::KubernetesCsr, Some(signer)) = (issuer.kind, &issuer.signer_name) {
        issue::csr::validate_for_signer(c, signer).map_err(within(at))?;
    }
    Ok(())
}

/// A credential name: valid, and not declared twice.
fn unique_name<'a>(
    at: &str,
    name: &'a str,
    seen: &mut HashSet<&'a str>,
) -> Result<(), ConfigError> {
    validate_name(name).map_err(|m| ConfigError::new(format!("{at}.name"), m))?;
    if name.starts_with(issue::CA_PREFIX) {
        return Err(ConfigError::new(
            format!("{at}.name"),
            format!(
                "`{name}`: names starting with `{}` are the issuers' CA certificates in the inventory",
                issue::CA_PREFIX
            ),
        ));
    }
    if !seen.insert(name) {
        return Err(ConfigError::new(
            format!("{at}.name"),
            format!("duplicate credential name `{name}`"),
        ));
    }
    Ok(())
}

/// A sink: not published to by two credentials.
fn unique_sink<'a>(
    at: &str,
    sink: &'a sink::SinkSpec,
    seen: &mut HashSet<&'a sink::SinkSpec>,
) -> Result<(), ConfigError> {
    if !seen.insert(sink) {
        return Err(ConfigError::new(
            format!("{at}.sink"),
            "another credential already publishes to this sink",
        ));
    }
    Ok(())
}
