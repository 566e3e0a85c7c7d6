//! Consumer probes: what a certificate's consumer really serves.
//!
//! A certificate with `probe = "host:port"` is checked after each publish
//! (by the replica that published: at once, then a few times with backoff
//! until the consumer serves the new version) and every `probe_interval`
//! (one replica, under leader election: `runtime` runs [`Prober::check_all`]
//! with `schedule::jobs::every`). A probe opens TLS with SNI set to the
//! certificate's first DNS name, reads the leaf the consumer presents (no
//! verification: only its bytes matter), and never sends application data.
//! Each probe is bounded by `probe_timeout`; at most `probe_concurrency`
//! run at once per replica, on their own tasks, so probes never hold up a
//! rotation.
//!
//! The decision is pure ([`stale_at`]): the credential turns
//! `stale-consumer` at the current version's publish time plus
//! `probe_grace` unless a probe sees the consumer serve it first. Results
//! are recorded in Postgres (`store::probes`), so every replica shows them.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    issue::CertificateSpec,
    store::{
        Store, StoreError,
        probes::{ProbeOutcome, ProbeRecord, ProbeTarget},
    },
};

/// When the follow-up probes after a publish run (from the commit).
const AFTER_PUBLISH: &[Duration] = &[
    Duration::ZERO,
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
    Duration::from_secs(40),
];

/// When `target` turns `stale-consumer` given what a probe found: `None`
/// when the consumer serves the current version (a failed probe keeps the
/// last leaf seen), else the current version's publish time plus `grace`.
pub fn stale_at(
    target: &ProbeTarget,
    outcome: &ProbeOutcome,
    grace: Duration,
) -> Option<DateTime<Utc>> {
    let current = target.current_fingerprint.as_deref()?;
    let seen = match outcome {
        ProbeOutcome::Served { fingerprint, .. } => Some(fingerprint.as_str()),
        ProbeOutcome::Failed(_) => target.served_fingerprint.as_deref(),
    };
    if seen == Some(current) {
        return None;
    }
    Some(target.published_at? + chrono::TimeDelta::from_std(grace).ok()?)
}

/// The address and SNI a target's spec asks for, and its grace.
fn plan(target: &ProbeTarget) -> Option<(String, Option<String>, Duration)> {
    let spec: CertificateSpec = serde_json::from_value(target.spec.clone()).ok()?;
    let addr = spec.probe.clone()?;
    let grace = spec.probe_grace()?;
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_default();
    let sni = spec
        .dns_names
        .iter()
        .find(|d| !d.starts_with("*."))
        .cloned()
        .or_else(|| {
            (host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[')).then_some(host)
        });
    Some((addr, sni, grace))
}

/// Records the leaf a server presents and accepts it: a probe reads what
/// the consumer serves, it does not judge it.
#[derive(Debug)]
struct Recorder {
    leaf: Mutex<Option<Vec<u8>>>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut l) = self.leaf.lock() {
            *l = Some(end_entity.as_ref().to_vec());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// The Authority Key Identifier of a DER certificate, hex.
fn authority_key_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| hex::encode(k.0))
            }
            _ => None,
        })
}

/// Connects to `addr` with TLS (SNI `sni`, none for an IP address) and
/// returns the leaf it presents, within `timeout`.
pub async fn probe(addr: &str, sni: Option<&str>, timeout: Duration) -> ProbeOutcome {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let recorder = Arc::new(Recorder {
        leaf: Mutex::new(None),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let config = match rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth(),
        Err(e) => return ProbeOutcome::Failed(format!("TLS setup: {e}")),
    };
    let server_name = match sni {
        Some(s) => match ServerName::try_from(s.to_string()) {
            Ok(n) => n,
            Err(e) => return ProbeOutcome::Failed(format!("SNI `{s}`: {e}")),
        },
        None => {
            let host = addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or(addr);
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => match ServerName::try_from(host.to_string()) {
                    Ok(n) => n,
                    Err(e) => return ProbeOutcome::Failed(format!("`{host}`: {e}")),
                },
            }
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match connector.connect(server_name, tcp).await {
            Ok(mut tls) => {
                use tokio::io::AsyncWriteExt;
                let _ = tls.shutdown().await;
                Ok(())
            }
            Err(e) => Err(format!("TLS handshake with {addr}: {e}")),
        }
    };
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no TLS answer from {addr} within {}",
            humantime::format_duration(timeout)
        )),
    };
    // A server that refuses us after presenting its certificate (mutual
    // TLS, TLS 1.2) still showed what it serves.
    let leaf = recorder.leaf.lock().ok().and_then(|mut l| l.take());
    match (leaf, result) {
        (Some(der), _) => ProbeOutcome::Served {
            fingerprint: hex::encode(Sha256::digest(&der)),
            issuer_key_id: authority_key_id(&der),
        },
        (None, Err(e)) => ProbeOutcome::Failed(e),
        (None, Ok(())) => ProbeOutcome::Failed(format!("{addr} presented no certificate")),
    }
}

/// Runs probes and records what they find.
pub struct Prober {
    store: Store,
    timeout: Duration,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("timeout", &self.timeout)
            .field("free", &self.slots.available_permits())
            .finish()
    }
}

impl Prober {
    /// A prober running at most `concurrency` probes at once, each bounded
    /// by `timeout`, until `shutdown`.
    pub fn new(
        store: Store,
        timeout: Duration,
        concurrency: usize,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            timeout,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            shutdown,
        })
    }

    /// Probes `targets` (bounded concurrency) and records the results;
    /// returns, per target, whether its consumer serves the current version.
    pub async fn check(&self, targets: Vec<ProbeTarget>) -> Result<Vec<bool>, StoreError> {
        let results = futures::future::join_all(targets.iter().map(|t| async move {
            let (addr, sni, grace) = plan(t)?;
            let _permit = self.slots.acquire().await.ok()?;
            let outcome = probe(&addr, sni.as_deref(), self.timeout).await;
            let label = match &outcome {
                ProbeOutcome::Served { .. } => "served",
                ProbeOutcome::Failed(_) => "failed",
            };
            metrics::counter!("rekey_consumer_probes_total", "outcome" => label).increment(1);
            if let ProbeOutcome::Failed(e) = &outcome {
                tracing::debug!(credential = %t.name, error = %e, "consumer probe failed");
            }
            let stale = stale_at(t, &outcome, grace);
            Some(ProbeRecord {
                id: t.id,
                current_version: t.current_version,
                outcome,
                stale_consumer_at: stale,
            })
        }))
        .await;
        let serves: Vec<bool> = results
            .iter()
            .map(|r| r.as_ref().is_some_and(|r| r.stale_consumer_at.is_none()))
            .collect();
        let records: Vec<ProbeRecord> = results.into_iter().flatten().collect();
        self.store.record_probes(&records).await?;
        Ok(serves)
    }

    /// One round over every credential with a probe (the periodic check).
    pub async fn check_all(&self) -> Result<usize, StoreError> {
        self.store.clear_unprobed().await?;
        let targets = self.store.probe_targets(None).await?;
        let n = targets.len();
        self.check(targets).await?;
        Ok(n)
    }

    /// After `credential` was published: probes it now and a few more times
    /// (2 s, 5 s, 10 s, 20 s, 40 s after) until its consumer serves the new
    /// version. Returns at once; the probes run on their own task.
    pub fn after_publish(self: &Arc<Self>, credential: String) {
        let me = self.clone();
        tokio::spawn(async move {
            let names = [credential];
            let mut last = Duration::ZERO;
            for at in AFTER_PUBLISH {
                tokio::select! {
                    _ = me.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(*at - last) => {}
                }
                last = *at;
                let targets = match me.store.probe_targets(Some(&names)).await {
                    Ok(t) if !t.is_empty() => t,
                    Ok(_) => return,
                    Err(e) => {
                        tracing::debug!(credential = %names[0], error = %e, "cannot read the probe target");
                        continue;
                    }
                };
                match me.check(targets).await {
                    Ok(serves) if serves.iter().all(|s| *s) => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(credential = %names[0], error = %e, "cannot record a probe")
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(current: Option<&str>, served: Option<&str>) -> ProbeTarget {
        ProbeTarget {
            id: 1,
            name: "cert/web".into(),
            spec: serde_json::json!({}),
            current_version: Some(2),
            current_fingerprint: current.map(String::from),
            published_at: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            served_fingerprint: served.map(String::from),
        }
    }

    #[test]
    fn stale_after_grace_unless_the_current_version_is_served() {
        let grace = Duration::from_secs(300);
        let deadline: DateTime<Utc> = "2026-01-01T00:05:00Z".parse().unwrap();
        let served = |fp: &str| ProbeOutcome::Served {
            fingerprint: fp.into(),
            issuer_key_id: None,
        };
        let t = target(Some("new"), Some("old"));
        assert_eq!(stale_at(&t, &served("new"), grace), None);
        assert_eq!(stale_at(&t, &served("old"), grace), Some(deadline));
        assert_eq!(
            stale_at(&t, &ProbeOutcome::Failed("refused".into()), grace),
            Some(deadline),
            "unreachable, and last seen serving the old version"
        );
        let t = target(Some("new"), Some("new"));
        assert_eq!(
            stale_at(&t, &ProbeOutcome::Failed("refused".into()), grace),
            None,
            "unreachable, but last seen serving the current version"
        );
        assert_eq!(
            stale_at(&target(None, None), &served("x"), grace),
            None,
            "nothing published yet"
        );
    }

    #[test]
    fn the_plan_uses_the_first_dns_name_for_sni() {
        let mut t = target(None, None);
        t.spec = serde_json::json!({
            "name": "cert/web", "dns_names": ["*.web.svc", "web.shop.svc"], "lifetime": "1h",
            "sink": {"kind": "file", "dir": "/x"}, "probe": "10.0.0.1:443", "probe_grace": "1m"
        });
        let (addr, sni, grace) = plan(&t).unwrap();
        assert_eq!(addr, "10.0.0.1:443");
        assert_eq!(sni.as_deref(), Some("web.shop.svc"));
        assert_eq!(grace, Duration::from_secs(60));
        t.spec["dns_names"] = serde_json::json!([]);
        t.spec["common_name"] = serde_json::json!("client");
        t.spec["probe"] = serde_json::json!("api.example:6443");
        t.spec.as_object_mut().unwrap().remove("probe_grace");
        let (_, sni, grace) = plan(&t).unwrap();
        assert_eq!(sni.as_deref(), Some("api.example"));
        assert_eq!(grace, crate::issue::DEFAULT_PROBE_GRACE);
    }
}
