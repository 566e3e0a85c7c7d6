//! The verification report: the `--json` output of `rekey etcd verify`, the
//! body of `POST /v1/etcd/verify`, and the `report` column of `etcd_checks`.
//!
//! Shape (DESIGN.md, plus additive fields):
//!
//! ```json
//! { "config": { "path", "sha256", "valid", "kind", "write",
//!               "findings": [ { "id", "severity", "message", "fix", "path", "line" } ] },
//!   "scan":   { "prefix", "resource", "revision", "total",
//!               "by_provider": { "identity", "aescbc", "aesgcm", "secretbox", "kms" },
//!               "by_key": { "aesgcm:key1": 3, ... },
//!               "plaintext": [..], "stale": [..], "undecryptable": [..],
//!               "undecryptable_reasons": [ { "key", "reason" } ],
//!               "counts": { "plaintext", "stale", "undecryptable" }, "truncated",
//!               "sampled", "verified", "not_verifiable", "duration_ms" },
//!   "checked_at", "exit_code" }
//! ```
//!
//! The three lists hold at most `max_listed` keys each (memory stays bounded
//! however many values are affected); `counts` always has the exact numbers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How serious a finding is. `error` makes the check fail (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Should be fixed.
    Warning,
    /// Must be fixed: the check fails.
    Error,
}

/// One finding: a stable id, a severity, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable identifier, e.g. `aescbc-not-recommended`.
    pub id: String,
    /// How serious.
    pub severity: Severity,
    /// What is wrong, in one sentence.
    pub message: String,
    /// How to fix it, in one line.
    pub fix: String,
    /// YAML path in the EncryptionConfiguration, when it points somewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 1-based line in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

/// The configuration part of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReport {
    /// The file checked.
    pub path: String,
    /// SHA-256 of the file (absent when it could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// True when the API server would accept it.
    pub valid: bool,
    /// `EncryptionConfiguration` or the legacy `EncryptionConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Write transformer for the scanned resource, e.g. `aesgcm:key1` or `identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<String>,
    /// First 16 hex digits of SHA-256 of the write key (identifies it across
    /// runs without revealing it; absent for identity and kms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_fingerprint: Option<String>,
    /// Validation errors (id `invalid-config`) and policy findings.
    pub findings: Vec<Finding>,
}

/// Values per provider (always all five keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByProvider {
    /// Plaintext values.
    pub identity: u64,
    /// `k8s:enc:aescbc:`.
    pub aescbc: u64,
    /// `k8s:enc:aesgcm:`.
    pub aesgcm: u64,
    /// `k8s:enc:secretbox:`.
    pub secretbox: u64,
    /// `k8s:enc:kms:` (v1 and v2).
    pub kms: u64,
}

/// Exact numbers behind the (possibly truncated) lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Plaintext values.
    pub plaintext: u64,
    /// Values needing a rewrite.
    pub stale: u64,
    /// Values the API server could not read.
    pub undecryptable: u64,
}

/// Why one value is undecryptable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The etcd key.
    pub key: String,
    /// What went wrong (never key material).
    pub reason: String,
}

/// The scan part of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReport {
    /// Key prefix scanned.
    pub prefix: String,
    /// Resource whose rules applied, e.g. `secrets`.
    pub resource: String,
    /// etcd revision the whole scan read at (one consistent snapshot).
    pub revision: i64,
    /// Values seen.
    pub total: u64,
    /// Values per provider.
    pub by_provider: ByProvider,
    /// Values per `provider:key` (`identity` for plaintext, `unknown` for
    /// unrecognised bytes).
    pub by_key: BTreeMap<String, u64>,
    /// Plaintext values (at most `max_listed`).
    pub plaintext: Vec<String>,
    /// Encrypted, but not with the current write provider and key (at most `max_listed`).
    pub stale: Vec<String>,
    /// No configured key opens it, or it is malformed (at most `max_listed`).
    pub undecryptable: Vec<String>,
    /// Why each listed undecryptable value failed.
    pub undecryptable_reasons: Vec<Problem>,
    /// Exact counts.
    pub counts: Counts,
    /// True when a list was cut at `max_listed`.
    pub truncated: bool,
    /// Values the check tried to open (all, or the `--sample`).
    pub sampled: u64,
    /// Values decrypted with a configured key into a valid object.
    pub verified: u64,
    /// KMS values: only the plugin can open them.
    pub not_verifiable: u64,
    /// Wall time of the scan.
    pub duration_ms: u64,
    /// Sum of etcd's `version` (writes since creation) of every value seen:
    /// the difference between two checks estimates the writes in between.
    #[serde(default)]
    pub version_sum: u64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The configuration and the findings.
    pub config: ConfigReport,
    /// What etcd holds (`null` when the configuration is invalid).
    pub scan: Option<ScanReport>,
    /// When the check finished.
    pub checked_at: DateTime<Utc>,
    /// 0 clean, 1 problems found, 2 invalid configuration.
    pub exit_code: u8,
}

impl Report {
    /// The exit code the report implies: 2 when the configuration is
    /// invalid; 1 when a finding is an error or any value is plaintext or
    /// undecryptable; else 0.
    pub fn compute_exit_code(config: &ConfigReport, scan: Option<&ScanReport>) -> u8 {
        if !config.valid {
            return 2;
        }
        let error_finding = config
            .findings
            .iter()
            .any(|f| f.severity == Severity::Error);
        let bad_values = scan.is_some_and(|s| s.counts.plaintext > 0 || s.counts.undecryptable > 0);
        u8::from(error_finding || bad_values)
    }

    /// A short human summary (several lines) for the terminal.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        out.push_str(&format!(
            "encryption config {}: {}{}\n",
            c.path,
            if c.valid { "valid" } else { "INVALID" },
            c.write
                .as_ref()
                .map(|w| format!(", writes with {w}"))
                .unwrap_or_default()
        ));
        for f in &c.findings {
            let at = match (&f.path, f.line) {
                (Some(p), Some(l)) => format!(" [{p}, line {l}]"),
                (Some(p), None) => format!(" [{p}]"),
                _ => String::new(),
            };
            out.push_str(&format!(
                "  {:<7} {}: {}{at}\n          fix: {}\n",
                format!("{:?}", f.severity).to_lowercase(),
                f.id,
                f.message,
                f.fix
            ));
        }
        if let Some(s) = &self.scan {
            let b = &s.by_provider;
            out.push_str(&format!(
                "scan {} at revision {}: {} values (identity {}, aescbc {}, aesgcm {}, secretbox {}, kms {})\n",
                s.prefix, s.revision, s.total, b.identity, b.aescbc, b.aesgcm, b.secretbox, b.kms
            ));
            for (k, n) in &s.by_key {
                out.push_str(&format!("  {k}: {n}\n"));
            }
            out.push_str(&format!(
                "  plaintext {}, stale {}, undecryptable {}, verified {}/{} opened, kms not verifiable {}\n",
                s.counts.plaintext,
                s.counts.stale,
                s.counts.undecryptable,
                s.verified,
                s.sampled,
                s.not_verifiable
            ));
            for (title, list) in [("plaintext", &s.plaintext), ("stale", &s.stale)] {
                for k in list {
                    out.push_str(&format!("  {title}: {k}\n"));
                }
            }
            for p in &s.undecryptable_reasons {
                out.push_str(&format!("  undecryptable: {}: {}\n", p.key, p.reason));
            }
            if s.truncated {
                out.push_str("  (lists truncated: see counts)\n");
            }
        }
        out.push_str(match self.exit_code {
            0 => "result: clean\n",
            1 => "result: PROBLEMS FOUND\n",
            _ => "result: INVALID CONFIGURATION\n",
        });
        out
    }
}
