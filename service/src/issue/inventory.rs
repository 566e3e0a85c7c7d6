//! Each `ca` issuer's CA certificate in the inventory: a credential named
//! `ca/<issuer>` (source `issuer`, not managed: the engine never rotates it
//! as a leaf) with the CA's validity, so `rekey status`, `/metrics` and the
//! CA alerts see it like every other certificate.

use serde_json::json;

use super::{registry::Issuers, spec::CA_PREFIX};
use crate::store::{Store, StoreError, credentials::kind, sync::Tracked};

/// The `source` of the CA rows.
pub const SOURCE: &str = "issuer";

/// The inventory name of issuer `issuer`'s CA: `ca/<issuer>`.
pub fn ca_credential_name(issuer: &str) -> String {
    format!("{CA_PREFIX}{issuer}")
}

/// The rows the CAs of `issuers` are (pure).
pub fn tracked(issuers: &Issuers) -> Vec<Tracked> {
    issuers
        .iter()
        .filter_map(|i| {
            let ca = i.current_ca()?;
            Some(Tracked {
                name: ca_credential_name(i.name()),
                kind: kind::CERTIFICATE,
                spec: json!({
                    "issuer": i.name(),
                    "subject": ca.subject(),
                    "fingerprint": ca.fingerprint(),
                    "key": ca.key_type().map(|k| k.as_str()),
                    "source": i.store().map(|s| s.describe()),
                    "bundle": i.bundle().fingerprints(),
                }),
                not_before: Some(ca.not_before()),
                not_after: Some(ca.not_after()),
            })
        })
        .collect()
}

/// Records the CAs of `issuers` (and retires rows of issuers no longer
/// configured). Call at start-up and whenever an issuer's CA changes.
pub async fn record(store: &Store, issuers: &Issuers) -> Result<(), StoreError> {
    store.sync_tracked(SOURCE, &tracked(issuers)).await?;
    Ok(())
}
