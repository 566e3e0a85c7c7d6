//! `[[scan]]`: the expiry of certificates rekey did not issue, like
//! `kubeadm certs check-expiration`: PEM certificates in a directory (e.g.
//! `/etc/kubernetes/pki`) and client certificates embedded in kubeconfigs.
//! Private keys are never read: only files holding certificates are parsed.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use tokio_util::sync::CancellationToken;

use crate::{
    schedule::jobs::every,
    store::{Store, StoreError, credentials::kind, sync::Tracked},
};

/// How often `rekey serve` rescans the `[[scan]]` directories.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// `[[scan]]`: a directory of PEM certificates and kubeconfigs to track.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    /// The directory (scanned recursively).
    pub dir: PathBuf,
}

impl ScanConfig {
    /// Checks field values; an error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.dir.as_os_str().is_empty() {
            return Err(("dir".into(), "must not be empty".into()));
        }
        Ok(())
    }
}

/// Largest file looked at (certificates and kubeconfigs are small).
const MAX_FILE: u64 = 1 << 20;

/// A certificate found on disk.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// `scan:<path>` or `scan:<path>#<user>` for kubeconfig users.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial, hex.
    pub serial: String,
    /// Validity start.
    pub not_before: DateTime<Utc>,
    /// Expiry.
    pub not_after: DateTime<Utc>,
}

/// Walks `dir` recursively and returns every certificate it finds, and the
/// files it could not read.
pub fn scan_dir(dir: &Path) -> (Vec<Found>, Vec<(PathBuf, String)>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                problems.push((d.clone(), e.to_string()));
                continue;
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let Ok(meta) = std::fs::metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() && meta.len() <= MAX_FILE {
                scan_file(&p, &mut found, &mut problems);
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    (found, problems)
}

fn scan_file(path: &Path, found: &mut Vec<Found>, problems: &mut Vec<(PathBuf, String)>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    if text.contains("-----BEGIN CERTIFICATE-----") {
        // The first certificate of a file is its leaf (bundles list the leaf first).
        match first_cert(text.as_bytes()) {
            Ok(Some(f)) => found.push(named(f, path, None)),
            Ok(None) => {}
            Err(e) => problems.push((path.to_path_buf(), e)),
        }
    } else if text.contains("client-certificate-data:") {
        let mut user = None::<String>;
        let mut index = 0;
        for line in text.lines() {
            let t = line.trim_start().trim_start_matches("- ");
            if let Some(n) = t.strip_prefix("name:") {
                user = Some(n.trim().trim_matches('"').to_string());
            }
            if let Some(data) = t.strip_prefix("client-certificate-data:") {
                let label = user.clone().unwrap_or_else(|| format!("user{index}"));
                index += 1;
                let pem = match base64::engine::general_purpose::STANDARD
                    .decode(data.trim().trim_matches('"'))
                {
                    Ok(p) => p,
                    Err(e) => {
                        problems.push((
                            path.to_path_buf(),
                            format!("client-certificate-data of {label}: {e}"),
                        ));
                        continue;
                    }
                };
                match first_cert(&pem) {
                    Ok(Some(f)) => found.push(named(f, path, Some(&label))),
                    Ok(None) => {}
                    Err(e) => problems.push((
                        path.to_path_buf(),
                        format!("client certificate of {label}: {e}"),
                    )),
                }
            }
        }
    }
}

fn named(mut f: Found, path: &Path, user: Option<&str>) -> Found {
    f.path = path.to_path_buf();
    f.name = match user {
        Some(u) => format!("scan:{}#{u}", path.display()),
        None => format!("scan:{}", path.display()),
    };
    f
}

fn first_cert(pem: &[u8]) -> Result<Option<Found>, String> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("bad PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let x = block
            .parse_x509()
            .map_err(|e| format!("bad certificate: {e}"))?;
        let ts = |t: x509_parser::time::ASN1Time| {
            DateTime::from_timestamp(t.timestamp(), 0).unwrap_or_default()
        };
        return Ok(Some(Found {
            name: String::new(),
            path: PathBuf::new(),
            subject: x.subject().to_string(),
            issuer: x.issuer().to_string(),
            serial: x.raw_serial_as_string().replace(':', ""),
            not_before: ts(x.validity().not_before),
            not_after: ts(x.validity().not_after),
        }));
    }
    Ok(None)
}

/// Scans every directory and records what it found (source `scan`).
/// Returns the number of certificates tracked.
pub async fn record(store: &Store, dirs: &[PathBuf]) -> Result<usize, StoreError> {
    let dirs = dirs.to_vec();
    let (found, problems) = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let mut problems = Vec::new();
        for d in &dirs {
            let (f, p) = scan_dir(d);
            all.extend(f);
            problems.extend(p);
        }
        (all, problems)
    })
    .await
    .unwrap_or_default();
    for (path, problem) in &problems {
        tracing::warn!(path = %path.display(), problem = %problem, "scan: skipped");
    }
    let tracked: Vec<Tracked> = found
        .iter()
        .map(|f| Tracked {
            name: f.name.clone(),
            kind: kind::CERTIFICATE,
            spec: serde_json::json!({
                "path": f.path, "subject": f.subject, "issuer": f.issuer, "serial": f.serial,
            }),
            not_before: Some(f.not_before),
            not_after: Some(f.not_after),
        })
        .collect();
    store.sync_tracked("scan", &tracked).await?;
    Ok(tracked.len())
}

/// Records the `[[scan]]` directories every [`INTERVAL`] until `shutdown`.
pub async fn run(store: Store, dirs: Vec<PathBuf>, shutdown: CancellationToken) {
    every(INTERVAL, &shutdown, |_| {
        let (store, dirs) = (&store, &dirs);
        async move {
            match record(store, dirs).await {
                Ok(n) => tracing::debug!(certificates = n, "scan recorded"),
                Err(e) => tracing::warn!(error = %e, "scan could not be recorded"),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::issue::{CertAuthority, KeyType};

    #[test]
    fn finds_pem_and_kubeconfig_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let (ca, key) =
            CertAuthority::generate("kubernetes", KeyType::EcdsaP256, TimeDelta::days(10), now)
                .unwrap();
        std::fs::create_dir(dir.path().join("etcd")).unwrap();
        std::fs::write(dir.path().join("etcd/ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(
            dir.path().join("ca.key"),
            secrecy::ExposeSecret::expose_secret(&key),
        )
        .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(ca.cert_pem());
        std::fs::write(
            dir.path().join("admin.conf"),
            format!("apiVersion: v1\nkind: Config\nusers:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {b64}\n    client-key-data: c2VjcmV0\n"),
        )
        .unwrap();
        let (found, problems) = scan_dir(dir.path());
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| n.ends_with("admin.conf#kubernetes-admin"))
        );
        assert!(names.iter().any(|n| n.ends_with("etcd/ca.crt")));
        assert!(
            found
                .iter()
                .all(|f| (f.not_after - now - TimeDelta::days(10)).abs() < TimeDelta::seconds(2))
        );
    }
}
