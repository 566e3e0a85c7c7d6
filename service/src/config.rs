//! The configuration file (`rekey.toml`) and its environment overrides.
//!
//! Parsing is strict: unknown fields are errors, durations are human
//! (`24h`, `90d`), and every error names the field (`certificate[1].lifetime`)
//! and, where it can, the line. Environment variables override scalar fields:
//! `REKEY_<SECTION>_<FIELD>` (e.g. `REKEY_API_LISTEN`, `REKEY_BACKUP_KEEP`),
//! and `DATABASE_URL` overrides `database.url`.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::units::HumanDuration;

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

/// Default share of a credential's lifetime after which it is renewed.
pub const DEFAULT_RENEW_FRACTION: f64 = 2.0 / 3.0;

/// The TokenRequest API refuses `expirationSeconds` below ten minutes.
pub const MIN_TOKEN_LIFETIME_SECS: u64 = 600;

/// A configuration error: which field, what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{path}: {message}{}", source_prefix(.file), line_suffix(.line))]
pub struct ConfigError {
    /// The file the error is in, if any.
    pub file: Option<PathBuf>,
    /// The field path, e.g. `certificate[0].renew_fraction`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
}

fn source_prefix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

fn line_suffix(line: &Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: None,
            path: path.into(),
            message: message.into(),
            line: None,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the inventory lives.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The internal CA that signs leaf certificates.
    pub issuer: Option<IssuerConfig>,
    /// How the rotation engine claims and runs work.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Certificates rekey issues and rotates.
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<CertificateSpec>,
    /// Service-account tokens rekey requests and rotates.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenSpec>,
    /// Directories of certificates rekey did not issue, tracked for expiry.
    #[serde(default, rename = "scan")]
    pub scans: Vec<ScanConfig>,
    /// How to reach the Kubernetes API (in-cluster config when absent).
    pub kubernetes: Option<KubernetesConfig>,
    /// Bootstrap-token revocation policy.
    pub bootstrap_tokens: Option<crate::k8s::BootstrapTokensConfig>,
    /// The admin API.
    pub api: Option<crate::api::ApiConfig>,
    /// The Prometheus endpoint.
    pub metrics: Option<MetricsConfig>,
    /// etcd access for encryption checks and backups.
    pub etcd: Option<crate::etcd::EtcdConfig>,
    /// Encrypted etcd backups.
    pub backup: Option<crate::backup::BackupConfig>,
}

/// `[database]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host/db`; `DATABASE_URL` overrides it.
    #[serde(default, serialize_with = "redact_opt")]
    pub url: Option<SecretString>,
    /// A file holding the URL (e.g. a mounted Secret), read at start-up;
    /// `url` and `DATABASE_URL` win over it.
    pub url_file: Option<PathBuf>,
    /// Pool size (default 16).
    pub max_connections: Option<u32>,
}

fn redact_opt<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

impl DatabaseConfig {
    /// The URL, or an error saying how to give one.
    pub fn url(&self) -> Result<&str, ConfigError> {
        self.url.as_ref().map(|u| u.expose_secret()).ok_or_else(|| {
            ConfigError::new(
                "database.url",
                "not set: give it in the config file or as DATABASE_URL",
            )
        })
    }
}

/// `[issuer]`: the CA, as written by `rekey ca init --out DIR`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// PEM CA certificate.
    pub ca_cert: PathBuf,
    /// PEM CA private key (PKCS#8).
    pub ca_key: PathBuf,
}

/// `[engine]`: work claiming and concurrency.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Rotations run at once by this replica.
    pub concurrency: usize,
    /// Credentials claimed per query.
    pub batch_size: i64,
    /// How long a claim is held before another replica may take it over.
    pub lease: HumanDuration,
    /// How often to look for due work when nothing is known to be due sooner.
    pub poll_interval: HumanDuration,
    /// Upper bound of the random jitter subtracted from lifetime-based due times.
    pub max_jitter: HumanDuration,
    /// Share of the lifetime the jitter may take, whichever is smaller.
    pub jitter_fraction: f64,
    /// Identifies this replica in leases and audit records (default: hostname + pid).
    pub replica_id: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            batch_size: 100,
            lease: std::time::Duration::from_secs(60).into(),
            poll_interval: std::time::Duration::from_secs(1).into(),
            max_jitter: std::time::Duration::from_secs(300).into(),
            jitter_fraction: 0.05,
            replica_id: None,
        }
    }
}

/// Key algorithm of a leaf certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256 (default).
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    /// Ed25519.
    #[serde(rename = "ed25519")]
    Ed25519,
    /// RSA 2048 with SHA-256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA 3072 with SHA-256.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA 4096 with SHA-256.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyType {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        }
    }
}

/// Where a credential is published.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkSpec {
    /// A directory: `tls.crt`, `tls.key`, `ca.crt` (or `token`).
    File {
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// A Kubernetes Secret.
    KubernetesSecret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
}

/// A `[[certificate]]` rekey issues from its CA and keeps fresh.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// Unique name, e.g. `cert/default/web-tls`.
    pub name: String,
    /// Subject common name (default: the first DNS name, else the name).
    pub common_name: Option<String>,
    /// Subject organizations (O=), e.g. `system:masters` for client certs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    #[serde(default)]
    pub ip_addresses: Vec<IpAddr>,
    /// Key algorithm.
    #[serde(default)]
    pub key: KeyType,
    /// Extended key usages: `server`, `client` (default both).
    #[serde(default = "default_usages")]
    pub usages: Vec<Usage>,
    /// Validity of each issued certificate.
    pub lifetime: HumanDuration,
    /// Renew after this share of the lifetime (default 2/3).
    pub renew_fraction: Option<f64>,
    /// Renew at the latest this long before expiry.
    pub renew_before: Option<HumanDuration>,
    /// Optional cron schedule (`sec min hour dom mon dow`).
    pub schedule: Option<String>,
    /// Where to publish.
    pub sink: SinkSpec,
    /// Overwrite a Secret that rekey did not create.
    #[serde(default, skip_serializing_if = "is_false")]
    pub adopt: bool,
    /// Workloads to roll after publishing: `deployment/ns/name`, `statefulset/..`, `daemonset/..`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<String>,
}

/// Extended key usage of a leaf certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Usage {
    /// TLS web server authentication.
    Server,
    /// TLS web client authentication.
    Client,
}

fn default_usages() -> Vec<Usage> {
    vec![Usage::Server, Usage::Client]
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A `[[token]]`: a service-account token from the TokenRequest API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Unique name, e.g. `sa-token/ci/deployer`.
    pub name: String,
    /// Namespace of the service account.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// Token audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `expirationSeconds` of each token (at least 10 minutes).
    pub lifetime: HumanDuration,
    /// Renew after this share of the lifetime (default 2/3).
    pub renew_fraction: Option<f64>,
    /// Renew at the latest this long before expiry.
    pub renew_before: Option<HumanDuration>,
    /// Optional cron schedule.
    pub schedule: Option<String>,
    /// Bind each token to a per-version Secret, so that deleting it revokes the token.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bound: bool,
    /// How long a superseded token stays valid for consumers to reload (bound tokens only).
    pub grace: Option<HumanDuration>,
    /// Where to publish.
    pub sink: SinkSpec,
    /// Overwrite a Secret that rekey did not create.
    #[serde(default, skip_serializing_if = "is_false")]
    pub adopt: bool,
    /// Workloads to roll after publishing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reload: Vec<String>,
}

/// `[[scan]]`: a directory of PEM certificates and kubeconfigs to track.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    /// The directory (scanned recursively).
    pub dir: PathBuf,
}

/// `[kubernetes]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Path to a kubeconfig (default: `KUBECONFIG`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig.
    pub context: Option<String>,
    /// Restarts of consumer workloads allowed per minute across the fleet.
    pub reload_per_minute: Option<u32>,
    /// Burst of restarts allowed at once.
    pub reload_burst: Option<u32>,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Plain-HTTP listen address for `/metrics`, `/healthz`, `/readyz`.
    pub listen: String,
}

/// How a credential's renewal is scheduled (shared by certificates and tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct RenewalPolicy {
    /// Validity of each version.
    pub lifetime: chrono::TimeDelta,
    /// Renew after this share of the lifetime.
    pub renew_fraction: f64,
    /// Renew at the latest this long before expiry.
    pub renew_before: Option<chrono::TimeDelta>,
    /// Cron schedule, already parsed.
    pub schedule: Option<cron::Schedule>,
}

impl CertificateSpec {
    /// The renewal policy (assumes the spec was validated).
    pub fn policy(&self) -> RenewalPolicy {
        policy(
            self.lifetime,
            self.renew_fraction,
            self.renew_before,
            self.schedule.as_deref(),
        )
    }
}

impl TokenSpec {
    /// The renewal policy (assumes the spec was validated).
    pub fn policy(&self) -> RenewalPolicy {
        policy(
            self.lifetime,
            self.renew_fraction,
            self.renew_before,
            self.schedule.as_deref(),
        )
    }
}

fn policy(
    lifetime: HumanDuration,
    renew_fraction: Option<f64>,
    renew_before: Option<HumanDuration>,
    schedule: Option<&str>,
) -> RenewalPolicy {
    RenewalPolicy {
        lifetime: lifetime.chrono(),
        renew_fraction: renew_fraction.unwrap_or(DEFAULT_RENEW_FRACTION),
        renew_before: renew_before.map(HumanDuration::chrono),
        schedule: schedule.and_then(|s| parse_cron(s).ok()),
    }
}

/// Longest `database.url_file` read: a URL is short, and a path like
/// `/dev/zero` must not make `parse` read forever.
pub const MAX_URL_FILE: u64 = 64 * 1024;

/// Reads `database.url_file` (at most [`MAX_URL_FILE`] bytes) into a wiped buffer.
fn read_url_file(file: &Path) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    use std::io::Read;
    let fail = |m: String| ConfigError::new("database.url_file", m);
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_URL_FILE + 1).read_to_string(&mut text))
        .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
    if text.len() as u64 > MAX_URL_FILE {
        return Err(fail(format!(
            "{} is larger than {} KiB: not a database URL",
            file.display(),
            MAX_URL_FILE / 1024
        )));
    }
    Ok(text)
}

pub use crate::schedule::parse_cron;

impl Config {
    /// Reads, overrides from the process environment, and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            path: "(file)".into(),
            message: format!("cannot read: {e}"),
            line: None,
        })?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &env, base).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })
    }

    /// Parses `text`, applies overrides from `env`, resolves relative paths
    /// against `base`, and validates.
    pub fn parse(
        text: &str,
        env: &BTreeMap<String, String>,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                file: None,
                path: "(syntax)".into(),
                message: e.message().trim().to_string(),
                line,
            }
        })?;
        apply_env(&mut table, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = display_path(e.path());
                let line = find_line(text, e.path());
                let message = e.into_inner().message().trim().to_string();
                ConfigError {
                    file: None,
                    path,
                    message,
                    line,
                }
            })?;
        if let Some(url) = env.get("DATABASE_URL").filter(|u| !u.is_empty()) {
            config.database.url = Some(SecretString::from(url.clone()));
        }
        config.resolve_paths(base);
        if config.database.url.is_none()
            && let Some(file) = &config.database.url_file
        {
            // The URL holds a password: the file's text is wiped once copied.
            let url = read_url_file(file)?;
            config.database.url = Some(SecretString::from(url.trim().to_string()));
        }
        config.validate().map_err(|mut e| {
            e.line = e.line.or_else(|| find_line_str(text, &e.path));
            e
        })?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if let Some(i) = &mut self.issuer {
            fix(&mut i.ca_cert);
            fix(&mut i.ca_key);
        }
        for c in &mut self.certificates {
            if let SinkSpec::File { dir } = &mut c.sink {
                fix(dir);
            }
        }
        for t in &mut self.tokens {
            if let SinkSpec::File { dir } = &mut t.sink {
                fix(dir);
            }
        }
        for s in &mut self.scans {
            fix(&mut s.dir);
        }
        if let Some(p) = &mut self.database.url_file {
            fix(p);
        }
        if let Some(b) = &mut self.backup {
            fix(&mut b.kek_file);
        }
        if let Some(e) = &mut self.etcd {
            for p in [
                &mut e.ca_cert,
                &mut e.client_cert,
                &mut e.client_key,
                &mut e.encryption_config,
            ]
            .into_iter()
            .flatten()
            {
                fix(p);
            }
        }
        if let Some(k) = &mut self.kubernetes
            && let Some(p) = &mut k.kubeconfig
        {
            fix(p);
        }
        if let Some(a) = &mut self.api {
            a.resolve_paths(base);
        }
    }

    /// Checks everything serde cannot: ranges, uniqueness, cron syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.engine.concurrency == 0 {
            return Err(e("engine.concurrency", "must be at least 1"));
        }
        if self.engine.batch_size < 1 {
            return Err(e("engine.batch_size", "must be at least 1"));
        }
        if self.engine.lease.get().as_secs() < 5 {
            return Err(e("engine.lease", "must be at least 5s"));
        }
        if !(0.0..=0.5).contains(&self.engine.jitter_fraction) {
            return Err(e("engine.jitter_fraction", "must be between 0 and 0.5"));
        }
        let mut names = HashSet::new();
        let mut sinks = HashSet::new();
        for (i, c) in self.certificates.iter().enumerate() {
            let at = |f: &str| format!("certificate[{i}].{f}");
            validate_name(&c.name).map_err(|m| e(at("name"), m))?;
            if !names.insert(c.name.as_str()) {
                return Err(e(
                    at("name"),
                    format!("duplicate credential name `{}`", c.name),
                ));
            }
            if c.dns_names.is_empty() && c.ip_addresses.is_empty() && c.common_name.is_none() {
                return Err(e(
                    at("dns_names"),
                    "a certificate needs at least one DNS name, IP address or common_name",
                ));
            }
            for (j, d) in c.dns_names.iter().enumerate() {
                validate_dns_name(d).map_err(|m| e(at(&format!("dns_names[{j}]")), m))?;
            }
            if c.usages.is_empty() {
                return Err(e(
                    at("usages"),
                    "must name at least one of `server`, `client`",
                ));
            }
            validate_policy(
                &at,
                c.lifetime,
                c.renew_fraction,
                c.renew_before,
                c.schedule.as_deref(),
                1,
            )?;
            validate_sink(&at, &c.sink)?;
            if !sinks.insert(c.sink.clone()) {
                return Err(e(
                    at("sink"),
                    "another credential already publishes to this sink",
                ));
            }
            validate_reload(&at, &c.reload)?;
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let at = |f: &str| format!("token[{i}].{f}");
            validate_name(&t.name).map_err(|m| e(at("name"), m))?;
            if !names.insert(t.name.as_str()) {
                return Err(e(
                    at("name"),
                    format!("duplicate credential name `{}`", t.name),
                ));
            }
            validate_k8s_name(&t.namespace).map_err(|m| e(at("namespace"), m))?;
            validate_k8s_name(&t.service_account).map_err(|m| e(at("service_account"), m))?;
            validate_policy(
                &at,
                t.lifetime,
                t.renew_fraction,
                t.renew_before,
                t.schedule.as_deref(),
                MIN_TOKEN_LIFETIME_SECS,
            )?;
            validate_sink(&at, &t.sink)?;
            if !sinks.insert(t.sink.clone()) {
                return Err(e(
                    at("sink"),
                    "another credential already publishes to this sink",
                ));
            }
            validate_reload(&at, &t.reload)?;
        }
        for (i, s) in self.scans.iter().enumerate() {
            if s.dir.as_os_str().is_empty() {
                return Err(e(format!("scan[{i}].dir"), "must not be empty"));
            }
        }
        if let Some(b) = &self.bootstrap_tokens {
            b.validate()
                .map_err(|(f, m)| e(format!("bootstrap_tokens.{f}"), m))?;
        }
        if let Some(a) = &self.api {
            a.validate().map_err(|(f, m)| e(format!("api.{f}"), m))?;
        }
        if let Some(x) = &self.etcd {
            x.validate().map_err(|(f, m)| e(format!("etcd.{f}"), m))?;
        }
        if let Some(b) = &self.backup {
            b.validate().map_err(|(f, m)| e(format!("backup.{f}"), m))?;
        }
        Ok(())
    }
}

fn e(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(path, message)
}

fn validate_policy(
    at: &dyn Fn(&str) -> String,
    lifetime: HumanDuration,
    renew_fraction: Option<f64>,
    renew_before: Option<HumanDuration>,
    schedule: Option<&str>,
    min_lifetime_secs: u64,
) -> Result<(), ConfigError> {
    if lifetime.get().as_secs() < min_lifetime_secs {
        let msg = if min_lifetime_secs >= MIN_TOKEN_LIFETIME_SECS {
            format!(
                "{lifetime} is below the TokenRequest minimum of 10m (expirationSeconds >= 600)"
            )
        } else {
            format!("{lifetime} is too short (at least {min_lifetime_secs}s)")
        };
        return Err(e(at("lifetime"), msg));
    }
    if let Some(f) = renew_fraction
        && !(f > 0.0 && f < 1.0)
    {
        return Err(e(
            at("renew_fraction"),
            format!("{f} is not between 0 and 1 (exclusive)"),
        ));
    }
    if let Some(b) = renew_before {
        if b.get().is_zero() {
            return Err(e(at("renew_before"), "must be more than zero"));
        }
        if b >= lifetime {
            return Err(e(
                at("renew_before"),
                format!("{b} is not shorter than the lifetime ({lifetime})"),
            ));
        }
    }
    if let Some(s) = schedule {
        parse_cron(s).map_err(|m| e(at("schedule"), m))?;
    }
    Ok(())
}

fn validate_sink(at: &dyn Fn(&str) -> String, sink: &SinkSpec) -> Result<(), ConfigError> {
    match sink {
        SinkSpec::File { dir } if dir.as_os_str().is_empty() => {
            Err(ConfigError::new(at("sink.dir"), "must not be empty"))
        }
        SinkSpec::File { .. } => Ok(()),
        SinkSpec::KubernetesSecret { namespace, name } => {
            validate_k8s_name(namespace).map_err(|m| ConfigError::new(at("sink.namespace"), m))?;
            validate_k8s_name(name).map_err(|m| ConfigError::new(at("sink.name"), m))
        }
    }
}

fn validate_reload(at: &dyn Fn(&str) -> String, reload: &[String]) -> Result<(), ConfigError> {
    for (j, r) in reload.iter().enumerate() {
        let parts: Vec<&str> = r.split('/').collect();
        let ok = parts.len() == 3
            && matches!(parts[0], "deployment" | "statefulset" | "daemonset")
            && validate_k8s_name(parts[1]).is_ok()
            && validate_k8s_name(parts[2]).is_ok();
        if !ok {
            return Err(ConfigError::new(
                at(&format!("reload[{j}]")),
                format!("`{r}` is not `deployment|statefulset|daemonset/<namespace>/<name>`"),
            ));
        }
    }
    Ok(())
}

/// Credential names: printable, no whitespace, at most 253 bytes.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{name}` contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain, optionally with a leading `*.` wildcard label.
pub fn validate_dns_name(name: &str) -> Result<(), String> {
    let body = name.strip_prefix("*.").unwrap_or(name);
    let ok = !body.is_empty()
        && name.len() <= 253
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid DNS name"))
    }
}

/// A Kubernetes object name or namespace (DNS-1123 subdomain, lower case).
pub fn validate_k8s_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid Kubernetes name (lower-case letters, digits, `-`, `.`)"
        ))
    }
}

/// Applies `REKEY_<SECTION>_<FIELD>` overrides to top-level tables.
fn apply_env(table: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
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

fn display_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    if out.is_empty() {
        "(top level)".into()
    } else {
        out
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn find_line(text: &str, path: &serde_path_to_error::Path) -> Option<usize> {
    find_line_str(text, &display_path(path))
}

/// Best-effort line of a field path like `certificate[1].sink.dir` in the
/// source: finds the n-th `[[certificate]]` header, then the first key below it.
fn find_line_str(text: &str, path: &str) -> Option<usize> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let (section, index) = match first.split_once('[') {
        Some((s, rest)) => (s, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (first, None),
    };
    let keys: Vec<&str> = parts.collect();
    let lines: Vec<&str> = text.lines().collect();
    let start = match index {
        Some(n) => {
            let header = format!("[[{section}]]");
            lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.trim() == header)
                .nth(n)?
                .0
        }
        None if !keys.is_empty() => {
            let header = format!("[{section}]");
            lines.iter().position(|l| l.trim() == header)?
        }
        None => {
            return lines
                .iter()
                .position(|l| key_of(l) == Some(section))
                .map(|i| i + 1);
        }
    };
    let key = keys.first().map(|k| k.split('[').next().unwrap_or(k));
    let Some(key) = key else {
        return Some(start + 1);
    };
    lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| key_of(l) == Some(key))
        .map(|(i, _)| i + 1)
        .or(Some(start + 1))
}

fn key_of(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    Some(k.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &BTreeMap::new(), Path::new("/etc/rekey"))
    }

    const GOOD: &str = r#"
[database]
url = "postgres://rekey@localhost/rekey"

[issuer]
ca_cert = "ca/ca.crt"
ca_key = "/etc/rekey/ca/ca.key"

[[certificate]]
name = "cert/default/web-tls"
dns_names = ["web.default.svc"]
ip_addresses = ["10.0.0.1"]
lifetime = "24h"
renew_fraction = 0.66
schedule = "0 0 3 * * *"
sink = { kind = "file", dir = "web" }

[[token]]
name = "sa-token/ci/deployer"
namespace = "ci"
service_account = "deployer"
audiences = ["https://kubernetes.default.svc"]
lifetime = "1h"
sink = { kind = "kubernetes-secret", namespace = "ci", name = "deployer-token" }
"#;

    #[test]
    fn parses_the_design_example() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.certificates.len(), 1);
        assert_eq!(c.certificates[0].key, KeyType::EcdsaP256);
        assert_eq!(
            c.issuer.unwrap().ca_cert,
            PathBuf::from("/etc/rekey/ca/ca.crt")
        );
        assert_eq!(
            c.certificates[0].sink,
            SinkSpec::File {
                dir: "/etc/rekey/web".into()
            }
        );
        assert_eq!(c.tokens[0].lifetime.get().as_secs(), 3600);
    }

    fn err_of(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    #[test]
    fn unknown_field_names_it() {
        let e = err_of(&GOOD.replace("lifetime = \"24h\"", "lifetime = \"24h\"\ncolour = \"red\""));
        assert_eq!(e.path, "certificate[0].colour", "{e}");
        assert!(e.message.contains("colour"), "{e}");
        assert_eq!(e.line, Some(14), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                "lifetime = \"24h\"",
                "lifetime = \"24x\"",
                "certificate[0].lifetime",
            ),
            (
                "renew_fraction = 0.66",
                "renew_fraction = 1.5",
                "certificate[0].renew_fraction",
            ),
            (
                "schedule = \"0 0 3 * * *\"",
                "schedule = \"61 * * * *\"",
                "certificate[0].schedule",
            ),
            (
                "ip_addresses = [\"10.0.0.1\"]",
                "ip_addresses = [\"10.0.0.300\"]",
                "certificate[0].ip_addresses[0]",
            ),
            (
                "dns_names = [\"web.default.svc\"]",
                "dns_names = [\"web..svc\"]",
                "certificate[0].dns_names[0]",
            ),
            (
                "lifetime = \"1h\"",
                "lifetime = \"5m\"",
                "token[0].lifetime",
            ),
            ("kind = \"file\"", "kind = \"ftp\"", "certificate[0].sink"),
        ];
        for (from, to, path) in cases {
            let e = err_of(&GOOD.replace(from, to));
            assert!(e.path.starts_with(path), "{to}: {e}");
            assert!(e.line.is_some(), "{to}: no line in {e}");
        }
        let e = err_of(&GOOD.replace("renew_fraction = 0.66", "key = \"rsa-1024\""));
        assert_eq!(e.path, "certificate[0].key");
        assert!(e.message.contains("rsa-1024"), "{e}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = err_of("[database]\nurl = \n");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn env_overrides() {
        let mut env = BTreeMap::new();
        env.insert(
            "DATABASE_URL".to_string(),
            "postgres://other/db".to_string(),
        );
        env.insert("REKEY_ENGINE_CONCURRENCY".to_string(), "3".to_string());
        env.insert("REKEY_ISSUER_CA_KEY".to_string(), "/x/ca.key".to_string());
        let c = Config::parse(GOOD, &env, Path::new("/")).unwrap();
        assert_eq!(c.database.url().unwrap(), "postgres://other/db");
        assert_eq!(c.engine.concurrency, 3);
        assert_eq!(c.issuer.unwrap().ca_key, PathBuf::from("/x/ca.key"));

        let mut env = BTreeMap::new();
        env.insert("REKEY_ENGINE_COLOUR".to_string(), "3".to_string());
        let e = Config::parse(GOOD, &env, Path::new("/")).unwrap_err();
        assert!(e.message.contains("colour"), "{e}");
        let mut env = BTreeMap::new();
        env.insert("REKEY_NOPE_X".to_string(), "3".to_string());
        assert!(Config::parse(GOOD, &env, Path::new("/")).is_err());
    }

    #[test]
    fn database_url_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("url"), "postgres://from-file/db\n").unwrap();
        let c = Config::parse(
            "[database]\nurl_file = \"url\"\n",
            &BTreeMap::new(),
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.database.url().unwrap(), "postgres://from-file/db");
        let e = Config::parse(
            "[database]\nurl_file = \"nope\"\n",
            &BTreeMap::new(),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.path, "database.url_file");
        // An endless file is refused after a bounded read, not read forever.
        let e = Config::parse(
            "[database]\nurl_file = \"/dev/zero\"\n",
            &BTreeMap::new(),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.path, "database.url_file");
        assert!(e.message.contains("larger than"), "{e}");
    }

    #[test]
    fn duplicates_are_rejected() {
        let text = format!(
            "{GOOD}\n[[certificate]]\nname = \"cert/default/web-tls\"\ndns_names=[\"a\"]\nlifetime=\"1h\"\nsink={{kind=\"file\", dir=\"x\"}}\n"
        );
        let e = err_of(&text);
        assert_eq!(e.path, "certificate[1].name");
        assert!(e.message.contains("duplicate"));
    }

    #[test]
    fn secrets_do_not_print() {
        let c = parse(GOOD).unwrap();
        assert!(!format!("{c:?}").contains("rekey@localhost"));
        assert!(
            !serde_json::to_string(&c)
                .unwrap()
                .contains("rekey@localhost")
        );
    }
}
