//! Every replica's issuer registry follows the `ca_rotations` table: for
//! each `ca` issuer, the CA that signs and the CAs in its bundle are what
//! [`trust_of`] says for its latest rotation. The new CA is read from the
//! issuer's store (its `next` slot, or its current CA once promoted) and
//! checked like any CA; CAs are kept by fingerprint.
//!
//! Each replica re-reads the table when a rotation changes (NOTIFY) and at
//! least every [`FOLLOW_INTERVAL`], well within [`super::plan::SETTLE`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::Utc;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{
    db::{self, CHANGED_CHANNEL, CaRotation},
    plan::{Which, trust_of},
};
use crate::{
    issue::{CertAuthority, Issuer, IssuerKind, IssuerState, Issuers, Signer, TrustBundle},
    store::{Store, listen},
};

/// Longest a replica goes without re-reading the rotations.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps a registry in line with the rotations.
pub struct Follower {
    store: Store,
    issuers: Arc<Issuers>,
    cas: Mutex<HashMap<String, Arc<CertAuthority>>>,
    /// Finished rotations already applied (once each: afterwards the
    /// issuer's store is the truth, even if someone replaced its CA).
    finished: Mutex<std::collections::HashSet<uuid::Uuid>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").finish_non_exhaustive()
    }
}

impl Follower {
    /// A follower for `issuers` (their CAs as loaded are known).
    pub fn new(store: Store, issuers: Arc<Issuers>) -> Arc<Self> {
        let cas = issuers
            .iter()
            .filter_map(|i| i.current_ca())
            .map(|ca| (ca.fingerprint().to_string(), ca))
            .collect();
        Arc::new(Self {
            store,
            issuers,
            cas: Mutex::new(cas),
            finished: Mutex::default(),
        })
    }

    /// The registry it keeps.
    pub fn issuers(&self) -> &Arc<Issuers> {
        &self.issuers
    }

    /// The CA with fingerprint `fp`, read from `issuer`'s store (current or
    /// next slot) if not known yet.
    pub async fn ca(&self, issuer: &Issuer, fp: &str) -> Result<Arc<CertAuthority>, String> {
        if let Some(ca) = self.cas.lock().await.get(fp) {
            return Ok(ca.clone());
        }
        let store = issuer
            .store()
            .ok_or_else(|| format!("issuer {} has no CA store", issuer.name()))?;
        let now = Utc::now();
        let mut found = Vec::new();
        if let Some(next) = store.read_next().await? {
            found.push(CertAuthority::from_pem(&next.cert_pem, &next.key_pem, now));
        }
        match store.read_current().await {
            Ok(cur) => found.push(CertAuthority::from_pem(&cur.cert_pem, &cur.key_pem, now)),
            Err((field, e)) => return Err(format!("{field}: {e}")),
        }
        let mut cas = self.cas.lock().await;
        for ca in found.into_iter().flatten() {
            cas.entry(ca.fingerprint().to_string())
                .or_insert_with(|| Arc::new(ca));
        }
        cas.get(fp).cloned().ok_or_else(|| {
            format!(
                "the CA {fp} of a rotation of issuer {} is not in its store ({})",
                issuer.name(),
                store.describe()
            )
        })
    }

    /// Applies rotation `r` to its issuer: swaps signer and bundle if they
    /// differ from what `r`'s phase asks for. Returns whether it changed.
    pub async fn apply(&self, r: &CaRotation) -> Result<bool, String> {
        let Ok(issuer) = self.issuers.get(&r.issuer) else {
            return Ok(false);
        };
        if issuer.kind() != IssuerKind::Ca {
            return Ok(false);
        }
        if r.finished_at.is_some() {
            if !self.finished.lock().await.insert(r.id) {
                return Ok(false);
            }
            return self.apply_store_current(issuer).await;
        }
        let trust = trust_of(r);
        let fp = |w: Which| match w {
            Which::Old => Some(r.old_ca_fingerprint.as_str()),
            Which::New => r.new_ca_fingerprint.as_deref(),
        };
        let Some(signer_fp) = fp(trust.signer) else {
            return Ok(false);
        };
        let mut trusted_fps = Vec::new();
        for w in &trust.trusted {
            if let Some(f) = fp(*w) {
                trusted_fps.push(f);
            }
        }
        let now = issuer.current();
        let same_signer = now
            .signer
            .ca()
            .is_some_and(|ca| ca.fingerprint() == signer_fp);
        let mut held = now.bundle.fingerprints();
        held.sort();
        let mut wanted: Vec<String> = trusted_fps.iter().map(|s| s.to_string()).collect();
        wanted.sort();
        if same_signer && held == wanted {
            return Ok(false);
        }
        self.swap(issuer, signer_fp, &trusted_fps, r.phase.as_str())
            .await
    }

    /// After a finished rotation: the issuer signs with its store's current
    /// CA and trusts it alone.
    async fn apply_store_current(&self, issuer: &Issuer) -> Result<bool, String> {
        let Some(store) = issuer.store() else {
            return Ok(false);
        };
        let cur = store
            .read_current()
            .await
            .map_err(|(f, e)| format!("{f}: {e}"))?;
        let ca = CertAuthority::from_pem(&cur.cert_pem, &cur.key_pem, Utc::now())
            .map_err(|p| p.message)?;
        let fp = ca.fingerprint().to_string();
        self.cas
            .lock()
            .await
            .entry(fp.clone())
            .or_insert_with(|| Arc::new(ca));
        let now = issuer.current();
        if now.signer.ca().is_some_and(|c| c.fingerprint() == fp)
            && now.bundle.fingerprints() == [fp.clone()]
        {
            return Ok(false);
        }
        self.swap(issuer, &fp, &[fp.as_str()], "finished").await
    }

    async fn swap(
        &self,
        issuer: &Issuer,
        signer_fp: &str,
        trusted_fps: &[&str],
        phase: &str,
    ) -> Result<bool, String> {
        let signer = self.ca(issuer, signer_fp).await?;
        let mut ders = Vec::new();
        for f in trusted_fps {
            ders.push(self.ca(issuer, f).await?.cert_der().to_vec());
        }
        let bundle = TrustBundle::new(ders).map_err(|e| e.to_string())?;
        tracing::info!(
            issuer = %issuer.name(), phase, signer = %signer.fingerprint(),
            bundle = ?bundle.fingerprints(), "issuer follows its CA rotation"
        );
        issuer.swap(IssuerState {
            signer: Signer::Ca(signer),
            bundle: Arc::new(bundle),
        });
        Ok(true)
    }

    /// Reads the latest rotation of every issuer and applies it.
    pub async fn sync_all(&self) -> Result<(), String> {
        let latest = db::latest_all(&self.store)
            .await
            .map_err(|e| e.to_string())?;
        for r in &latest {
            if let Err(e) = self.apply(r).await {
                tracing::warn!(issuer = %r.issuer, error = %e, "cannot follow the issuer's CA rotation; retrying");
            }
        }
        Ok(())
    }

    /// Follows until `shutdown`: at start, on every change, and every
    /// [`FOLLOW_INTERVAL`].
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let notes = listen::listen(&self.store, CHANGED_CHANNEL, shutdown.clone());
        let mut rx = notes.subscribe();
        loop {
            if let Err(e) = self.sync_all().await {
                tracing::warn!(error = %e, "cannot read the CA rotations; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = rx.recv() => {}
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
        }
    }
}
