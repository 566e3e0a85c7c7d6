//! What rekey issues: `[[certificate]]` (a leaf certificate's issuer,
//! subject, key, usages, lifetime and sink), with its checks. Issuers are
//! in [`super::settings`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    schedule::{RenewalPolicy, validate_renewal},
    sink::spec::{SinkSpec, validate_reload},
    store::credentials::validate_name,
    units::HumanDuration,
};

/// The issuer a certificate without `issuer` uses, and the name of the
/// single `[issuer]` table.
pub const DEFAULT_ISSUER: &str = "default";

/// The inventory name of a `ca` issuer's CA certificate is this prefix and
/// the issuer's name (`ca/cluster`); no declared credential may use it.
pub const CA_PREFIX: &str = "ca/";

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

/// A `[[certificate]]` rekey issues from its CA and keeps fresh.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// Unique name, e.g. `cert/default/web-tls`.
    pub name: String,
    /// The issuer that signs it (`[[issuer]] name`); `default` when absent.
    /// Left out of the stored spec when absent, so that specs stored before
    /// issuers had names hash as they did (no re-issue on upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
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
    /// The consumer's TLS endpoint (`host:port`): rekey checks which
    /// certificate it really serves after each publish and every minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// How long the probed consumer may keep serving an older version after
    /// a publish before the credential is `stale-consumer` (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_grace: Option<HumanDuration>,
}

/// The default of `probe_grace`.
pub const DEFAULT_PROBE_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

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

impl CertificateSpec {
    /// The name of the issuer that signs it.
    pub fn issuer_name(&self) -> &str {
        self.issuer.as_deref().unwrap_or(DEFAULT_ISSUER)
    }

    /// The renewal policy (assumes the spec was validated).
    pub fn policy(&self) -> RenewalPolicy {
        RenewalPolicy::new(
            self.lifetime,
            self.renew_fraction,
            self.renew_before,
            self.schedule.as_deref(),
        )
    }

    /// Checks field values; an error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        validate_name(&self.name).map_err(|m| ("name".to_string(), m))?;
        if self.name.starts_with(CA_PREFIX) {
            return Err((
                "name".into(),
                format!(
                    "`{}`: names starting with `{CA_PREFIX}` are the issuers' CA certificates in the inventory",
                    self.name
                ),
            ));
        }
        if self.dns_names.is_empty() && self.ip_addresses.is_empty() && self.common_name.is_none() {
            return Err((
                "dns_names".into(),
                "a certificate needs at least one DNS name, IP address or common_name".into(),
            ));
        }
        for (j, d) in self.dns_names.iter().enumerate() {
            validate_dns_name(d).map_err(|m| (format!("dns_names[{j}]"), m))?;
        }
        if self.usages.is_empty() {
            return Err((
                "usages".into(),
                "must name at least one of `server`, `client`".into(),
            ));
        }
        if self.lifetime.get().as_secs() < 1 {
            return Err((
                "lifetime".into(),
                format!("{} is too short (at least 1s)", self.lifetime),
            ));
        }
        validate_renewal(
            self.lifetime,
            self.renew_fraction,
            self.renew_before,
            self.schedule.as_deref(),
        )?;
        self.sink
            .validate()
            .map_err(|(f, m)| (format!("sink.{f}"), m))?;
        if let Some(p) = &self.probe {
            validate_probe(p).map_err(|m| ("probe".to_string(), m))?;
        } else if self.probe_grace.is_some() {
            return Err((
                "probe_grace".into(),
                "is only meaningful with `probe = \"host:port\"`".into(),
            ));
        }
        validate_reload(&self.reload)
    }

    /// `probe_grace`, or its default when a probe is set; `None` without a probe.
    pub fn probe_grace(&self) -> Option<std::time::Duration> {
        self.probe.as_ref()?;
        Some(
            self.probe_grace
                .map(|g| g.get())
                .unwrap_or(DEFAULT_PROBE_GRACE),
        )
    }
}

/// A probe address: `host:port` (a DNS name, an IPv4 address or a
/// bracketed IPv6 address, and a port 1 to 65535).
pub fn validate_probe(probe: &str) -> Result<(), String> {
    let bad = || format!("`{probe}` is not `host:port` (e.g. `web.shop.svc:443`)");
    let (host, port) = probe.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok() || validate_dns_name(host).is_ok(),
    };
    if host_ok && !host.starts_with("*.") {
        Ok(())
    } else {
        Err(bad())
    }
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
