//! The issuer registry: every configured issuer by name, and for each the
//! two things the rest of the service asks for — **the signer of issuer X**
//! (who signs its leaves now) and **the trust bundle of issuer X** (every CA
//! certificate its consumers must trust now, the `ca.crt` of every sink).
//!
//! ```text
//!   Issuers ──get("cluster")──► Issuer ──current()──► IssuerState { signer, bundle }
//!                                  │                         (one consistent snapshot)
//!                                  └─ swap(state) / set_bundle(bundle): replaced at
//!                                     run time; subscribe() wakes whoever publishes
//! ```
//!
//! An issuer's signer and bundle live in one `tokio::sync::watch` channel:
//! readers take a cheap snapshot (`Arc` clone under a short read lock) and
//! never see a signer from one state with a bundle from another; a writer
//! (the CA rotation) replaces both at once with [`Issuer::swap`] and every
//! [`Issuer::subscribe`]r is woken. Today the bundle of a `ca` issuer is its
//! CA alone, and of a `kubernetes-csr` issuer the signer's CA
//! (`ca_bundle`, or the cluster CA).

use std::{collections::BTreeMap, fmt, sync::Arc};

use tokio::sync::watch;

pub use super::bundle::{BundleCert, TrustBundle};
use super::{
    bundle::TrustBundles,
    ca::CertAuthority,
    ca_store::CaStore,
    csr::CsrSigner,
    policy::IssuerPolicy,
    settings::{IssuerConfig, IssuerKind},
};

/// No issuer of that name is configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no issuer named `{0}` is configured")]
pub struct UnknownIssuer(pub String);

/// Who signs an issuer's leaves.
#[derive(Clone)]
pub enum Signer {
    /// A CA rekey holds.
    Ca(Arc<CertAuthority>),
    /// The cluster, through the CertificateSigningRequest API.
    KubernetesCsr(Arc<dyn CsrSigner>),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ca(ca) => f.debug_tuple("Ca").field(ca).finish(),
            Self::KubernetesCsr(s) => f
                .debug_tuple("KubernetesCsr")
                .field(&s.signer_name())
                .finish(),
        }
    }
}

impl Signer {
    /// The CA, for a `ca` issuer.
    pub fn ca(&self) -> Option<&Arc<CertAuthority>> {
        match self {
            Self::Ca(ca) => Some(ca),
            Self::KubernetesCsr(_) => None,
        }
    }
}

/// A consistent snapshot of an issuer: who signs, what consumers trust.
#[derive(Debug, Clone)]
pub struct IssuerState {
    /// Who signs its leaves now.
    pub signer: Signer,
    /// What its consumers must trust now (`ca.crt`).
    pub bundle: Arc<TrustBundle>,
}

/// One configured issuer.
pub struct Issuer {
    name: String,
    kind: IssuerKind,
    config: IssuerConfig,
    policy: IssuerPolicy,
    store: Option<Arc<dyn CaStore>>,
    state: watch::Sender<Arc<IssuerState>>,
    /// Shared by every issuer of a registry: bumped on each change.
    changes: watch::Sender<u64>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("state", &*self.current())
            .finish()
    }
}

impl Issuer {
    /// A `ca` issuer with its loaded CA and where it came from; its bundle
    /// is the CA alone.
    pub fn ca(config: &IssuerConfig, store: Arc<dyn CaStore>, ca: CertAuthority) -> Self {
        let bundle = Arc::new(TrustBundle::of_ca(&ca));
        Self::with(
            config,
            Some(store),
            IssuerState {
                signer: Signer::Ca(Arc::new(ca)),
                bundle,
            },
        )
    }

    /// A `kubernetes-csr` issuer: its signer and the bundle of the
    /// signer's CA.
    pub fn kubernetes_csr(
        config: &IssuerConfig,
        signer: Arc<dyn CsrSigner>,
        bundle: TrustBundle,
    ) -> Self {
        Self::with(
            config,
            None,
            IssuerState {
                signer: Signer::KubernetesCsr(signer),
                bundle: Arc::new(bundle),
            },
        )
    }

    fn with(config: &IssuerConfig, store: Option<Arc<dyn CaStore>>, state: IssuerState) -> Self {
        let (state, _) = watch::channel(Arc::new(state));
        Self {
            name: config.name().to_string(),
            kind: config.kind,
            policy: config.policy(),
            config: config.clone(),
            store,
            state,
            changes: watch::channel(0).0,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ca` or `kubernetes-csr`.
    pub fn kind(&self) -> IssuerKind {
        self.kind
    }

    /// Its configuration.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// Its policy for Credential resources (see [`super::policy::allows`]).
    pub fn policy(&self) -> &IssuerPolicy {
        &self.policy
    }

    /// Where a `ca` issuer's CA lives (`None` for `kubernetes-csr`).
    pub fn store(&self) -> Option<&Arc<dyn CaStore>> {
        self.store.as_ref()
    }

    /// Signer and bundle, as one snapshot.
    pub fn current(&self) -> Arc<IssuerState> {
        self.state.borrow().clone()
    }

    /// Who signs now.
    pub fn signer(&self) -> Signer {
        self.state.borrow().signer.clone()
    }

    /// What consumers must trust now.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.state.borrow().bundle.clone()
    }

    /// The CA that signs now (`ca` issuers).
    pub fn current_ca(&self) -> Option<Arc<CertAuthority>> {
        self.state.borrow().signer.ca().cloned()
    }

    /// Replaces signer and bundle at once (a CA rotation's phase change);
    /// returns the state it replaced and wakes every subscriber.
    pub fn swap(&self, state: IssuerState) -> Arc<IssuerState> {
        let old = self.state.send_replace(Arc::new(state));
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        old
    }

    /// Replaces the bundle only (the signer stays); returns the state it
    /// replaced and wakes every subscriber.
    pub fn set_bundle(&self, bundle: TrustBundle) -> Arc<IssuerState> {
        let signer = self.signer();
        self.swap(IssuerState {
            signer,
            bundle: Arc::new(bundle),
        })
    }

    /// Wakes on every [`Self::swap`] / [`Self::set_bundle`]; `borrow()` is
    /// the new state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<IssuerState>> {
        self.state.subscribe()
    }
}

/// Every configured issuer, by name. Cheap to share (`Arc<Issuers>`); the
/// set of issuers is fixed for the life of the process (it is the
/// configuration's), what each one signs with and trusts can change.
#[derive(Debug)]
pub struct Issuers {
    by_name: BTreeMap<String, Arc<Issuer>>,
    changes: watch::Sender<u64>,
}

impl Default for Issuers {
    fn default() -> Self {
        Self {
            by_name: BTreeMap::new(),
            changes: watch::channel(0).0,
        }
    }
}

impl Issuers {
    /// A registry of these issuers (a later one of the same name wins;
    /// configuration validation refuses duplicates before this).
    pub fn new(issuers: impl IntoIterator<Item = Issuer>) -> Self {
        let changes = watch::channel(0).0;
        Self {
            by_name: issuers
                .into_iter()
                .map(|mut i| {
                    i.changes = changes.clone();
                    (i.name.clone(), Arc::new(i))
                })
                .collect(),
            changes,
        }
    }

    /// No issuer at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// One issuer, `default`, signing with `ca` held in memory only (no
    /// store: tests, benchmarks, tools).
    pub fn default_ca(ca: Arc<CertAuthority>) -> Self {
        let config = IssuerConfig {
            name: Some(super::spec::DEFAULT_ISSUER.into()),
            ..Default::default()
        };
        let bundle = Arc::new(TrustBundle::of_ca(&ca));
        Self::new([Issuer::with(
            &config,
            None,
            IssuerState {
                signer: Signer::Ca(ca),
                bundle,
            },
        )])
    }

    /// The issuer named `name`.
    pub fn get(&self, name: &str) -> Result<&Arc<Issuer>, UnknownIssuer> {
        self.by_name
            .get(name)
            .ok_or_else(|| UnknownIssuer(name.to_string()))
    }

    /// The signer of issuer `name` (now).
    pub fn signer(&self, name: &str) -> Result<Signer, UnknownIssuer> {
        self.get(name).map(|i| i.signer())
    }

    /// The trust bundle of issuer `name` (now).
    pub fn bundle(&self, name: &str) -> Result<Arc<TrustBundle>, UnknownIssuer> {
        self.get(name).map(|i| i.bundle())
    }

    /// Every issuer, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.by_name.values()
    }

    /// Whether there is no issuer.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The registry is where every published `ca.crt` and `[[bundle]]` target
/// takes its bundle from.
impl TrustBundles for Issuers {
    fn bundle(&self, issuer: &str) -> Option<TrustBundle> {
        self.get(issuer).ok().map(|i| (*i.bundle()).clone())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, Utc};

    use super::*;
    use crate::issue::{KeyType, ca_store::FileCaStore};

    fn ca(name: &str) -> CertAuthority {
        CertAuthority::generate(name, KeyType::EcdsaP256, TimeDelta::days(1), Utc::now())
            .unwrap()
            .0
    }

    fn config(name: &str) -> IssuerConfig {
        IssuerConfig {
            name: Some(name.into()),
            ca_cert: Some("/x/ca.crt".into()),
            ca_key: Some("/x/ca.key".into()),
            allowed_namespaces: vec!["shop".into()],
            ..Default::default()
        }
    }

    fn store() -> Arc<dyn CaStore> {
        Arc::new(FileCaStore::new("/x/ca.crt".as_ref(), "/x/ca.key".as_ref()))
    }

    #[test]
    fn signer_and_bundle_by_name_and_swapped_together() {
        let (a, b) = (ca("a"), ca("b"));
        let (a_fp, b_fp) = (a.fingerprint().to_string(), b.fingerprint().to_string());
        let b_der = b.cert_der().to_vec();
        let issuers = Issuers::new([Issuer::ca(&config("cluster"), store(), a)]);
        assert_eq!(
            issuers.signer("nope").unwrap_err().to_string(),
            "no issuer named `nope` is configured"
        );
        let cluster = issuers.get("cluster").unwrap();
        assert_eq!(cluster.kind(), IssuerKind::Ca);
        assert!(crate::issue::policy::allows(cluster.policy(), "shop", &[]).is_ok());
        assert_eq!(
            issuers.bundle("cluster").unwrap().fingerprints(),
            std::slice::from_ref(&a_fp)
        );
        let mut rx = cluster.subscribe();
        // A rotation's `trusting` phase: the old CA signs, both are trusted.
        let both =
            TrustBundle::new([cluster.current_ca().unwrap().cert_der().to_vec(), b_der]).unwrap();
        assert_eq!(both.fingerprints(), [a_fp.clone(), b_fp.clone()]);
        assert!(both.pem().matches("BEGIN CERTIFICATE").count() == 2);
        cluster.set_bundle(both.clone());
        assert!(rx.has_changed().unwrap());
        let snap = rx.borrow_and_update().clone();
        assert_eq!(snap.signer.ca().unwrap().fingerprint(), a_fp);
        assert_eq!(*snap.bundle, both);
        // `reissuing`: the new CA signs.
        let old = cluster.swap(IssuerState {
            signer: Signer::Ca(Arc::new(b)),
            bundle: Arc::new(both),
        });
        assert_eq!(old.signer.ca().unwrap().fingerprint(), a_fp);
        assert_eq!(
            issuers
                .signer("cluster")
                .unwrap()
                .ca()
                .unwrap()
                .fingerprint(),
            b_fp
        );
    }

    #[test]
    fn bundles_from_pem_and_chain_completion() {
        let now = Utc::now();
        let (a, b) = (ca("a"), ca("b"));
        let bundle =
            TrustBundle::from_pem(&format!("{}{}{}", a.cert_pem(), b.cert_pem(), a.cert_pem()))
                .unwrap();
        assert_eq!(bundle.certs().len(), 2, "duplicates dropped");
        assert!(TrustBundle::from_pem("no pem here").is_err());
        let spec: crate::issue::CertificateSpec = serde_json::from_value(serde_json::json!({
            "name": "cert/x", "dns_names": ["x.test"], "lifetime": "1h",
            "sink": {"kind": "file", "dir": "/tmp/x"}
        }))
        .unwrap();
        let leaf = b.issue(&spec, now).unwrap();
        assert_eq!(
            bundle.issuer_of(&leaf.cert_pem).unwrap().fingerprint,
            b.fingerprint()
        );
        let other = TrustBundle::of_ca(&a);
        assert!(other.issuer_of(&leaf.cert_pem).is_none());
    }
}
