//! From the configuration file to the inventory: declared credentials are
//! upserted, due times follow policy changes, and sinks that lost their
//! published version (deleted files, a restored old Secret) are re-issued.

use chrono::{TimeDelta, Utc};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::tokens::TokenSpec;
use crate::{
    issue::CertificateSpec,
    schedule::{self, Jitter},
    sink::{self, SinkContext, SinkSpec},
    store::{
        Store, StoreError,
        credentials::kind,
        sync::{Declared, SyncReport},
    },
};

/// Fields that only shape *when* a credential rotates, not what is issued.
const POLICY_FIELDS: &[&str] = &[
    "renew_fraction",
    "renew_before",
    "schedule",
    "reload",
    "grace",
    "probe",
    "probe_grace",
];

fn material_hash(spec: &serde_json::Value) -> String {
    let mut v = spec.clone();
    if let Some(map) = v.as_object_mut() {
        for f in POLICY_FIELDS {
            map.remove(*f);
        }
    }
    // serde_json's Map is ordered by key: the encoding is canonical.
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

fn sink_json(sink: &SinkSpec) -> serde_json::Value {
    serde_json::to_value(sink).unwrap_or_default()
}

/// The credentials a configuration declares (its `[[certificate]]` and
/// `[[token]]` entries).
pub fn declared(certificates: &[CertificateSpec], tokens: &[TokenSpec]) -> Vec<Declared> {
    let cert = |c: &CertificateSpec| {
        let spec = serde_json::to_value(c).unwrap_or_default();
        Declared {
            name: c.name.clone(),
            kind: kind::CERTIFICATE,
            material_hash: material_hash(&spec),
            spec,
            sink: sink_json(&c.sink),
            schedule: c.schedule.clone(),
        }
    };
    let token = |t: &TokenSpec| {
        let spec = serde_json::to_value(t).unwrap_or_default();
        Declared {
            name: t.name.clone(),
            kind: kind::SERVICE_ACCOUNT_TOKEN,
            material_hash: material_hash(&spec),
            spec,
            sink: sink_json(&t.sink),
            schedule: t.schedule.clone(),
        }
    };
    certificates
        .iter()
        .map(cert)
        .chain(tokens.iter().map(token))
        .collect()
}

/// Syncs the configuration into the store, then reschedules credentials whose
/// policy changed and those whose sink no longer holds the current version.
pub async fn sync_config(
    store: &Store,
    certificates: &[CertificateSpec],
    tokens: &[TokenSpec],
    sinks: &SinkContext,
    jitter: Jitter,
    actor: &str,
) -> Result<SyncReport, StoreError> {
    let declared = declared(certificates, tokens);
    let report = store.sync_declared("config", &declared, actor).await?;
    let names: Vec<String> = declared.iter().map(|d| d.name.clone()).collect();
    let validities = store.validities(&names).await?;
    let now = Utc::now();
    let mut updates = Vec::new();
    for v in &validities {
        let (Some(_), Some(nb), Some(na)) = (v.current_version, v.not_before, v.not_after) else {
            continue;
        };
        if v.failures > 0
            || matches!(
                v.next_rotation_reason.as_deref(),
                Some("manual" | "initial" | "spec_changed" | "sink_drift")
            )
        {
            continue;
        }
        let (policy, issued_at) = match v.kind.as_str() {
            kind::CERTIFICATE => (
                serde_json::from_value::<CertificateSpec>(v.spec.clone()).map(|s| s.policy()),
                nb + crate::issue::backdate(na - nb),
            ),
            _ => (
                serde_json::from_value::<TokenSpec>(v.spec.clone()).map(|s| s.policy()),
                nb,
            ),
        };
        let Ok(policy) = policy else { continue };
        let sample = schedule::jitter_sample(&v.name, v.current_version.unwrap_or(0));
        let due = schedule::next_due(&policy, issued_at, nb, na, jitter, sample);
        let at = due.at.max(now.min(na));
        if v.next_rotation_at
            .is_none_or(|old| (old - at).abs() > TimeDelta::seconds(1))
        {
            updates.push((v.id, at, due.reason.as_str().to_string()));
        }
    }
    store.reschedule(&updates).await?;

    // Sinks that lost what was published are re-issued now.
    let drift: Vec<(i64, chrono::DateTime<Utc>, String)> = futures::stream::iter(validities.iter().filter_map(|v| {
        let current = v.current_version?;
        let spec: SinkSpec = serde_json::from_value(v.sink.clone()).ok()?;
        Some((v.id, v.name.clone(), current, spec))
    }))
    .map(|(id, name, current, spec)| {
        let sinks = sinks.clone();
        async move {
            let sink = sink::build(&spec, &sinks).ok()?;
            match sink.published_version().await {
                Ok(Some(v)) if v >= current => None,
                Ok(found) => {
                    tracing::warn!(credential = %name, current, found = ?found, sink = %sink.describe(), "sink does not hold the current version; re-issuing");
                    Some((id, Utc::now(), "sink_drift".to_string()))
                }
                Err(e) => {
                    tracing::warn!(credential = %name, error = %e, "cannot read the sink to check it");
                    None
                }
            }
        }
    })
    .buffer_unordered(32)
    .filter_map(|x| async move { x })
    .collect()
    .await;
    store.reschedule(&drift).await?;
    if !report.added.is_empty() || !report.changed.is_empty() || !drift.is_empty() {
        store.wake_engines().await?;
    }
    Ok(report)
}
