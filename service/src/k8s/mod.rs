//! Kubernetes: service-account tokens, bootstrap tokens, CSR/Node watch,
//! consumer reload, legacy-token discovery.
//!
//! Named `k8s` so that it never shadows the `kube` crate. Every call to the
//! API goes through [`call`], which bounds it in time and turns failures
//! into [`K8sError`]s that say whether retrying may help.
//!
//! ```text
//!   client() ── kubeconfig (--kubeconfig, KUBECONFIG, [kubernetes].kubeconfig) or in-cluster
//!      │
//!      ├─► tokens     TokenRequest (+ bound per-version Secret), retire
//!      ├─► reload     pod-template annotation patch, process-wide token bucket
//!      ├─► bootstrap  Secret/CSR/Node watches → decide (pure) → revoke → Postgres + audit
//!      ├─► legacy     long-lived service-account-token Secrets → credentials (no-expiry)
//!      ├─► csr_signer kubernetes-csr issuers: CSR create, self-approval where RBAC allows, wait
//!      ├─► ca_secret  a `ca` issuer's CA in a Secret (tls.crt, tls.key)
//!      └─► sink::kubernetes  Secret publish with resourceVersion concurrency
//! ```
//!
//! - [`settings`]: `[kubernetes]`, `[bootstrap_tokens]`.
//! - [`connect`]: the client; [`error`]: [`K8sError`] and [`call`];
//!   [`objects`]: timestamps, annotations.
//! - [`wiring`]: what the running service takes from here (the engine's
//!   token issuer and reloader, the jobs).

pub mod bootstrap;
pub mod ca_secret;
pub mod connect;
pub mod csr_signer;
pub mod error;
pub mod legacy;
pub mod objects;
pub mod reload;
pub mod settings;
pub mod tokens;
pub mod wiring;

pub use connect::{client, client_for, cluster_ca, config_for};
pub use error::{K8sError, REQUEST_TIMEOUT, call};
pub use objects::{
    CREDENTIAL_ANNOTATION, MANAGED_BY, NOT_AFTER_ANNOTATION, VERSION_ANNOTATION,
    VERSION_NUMBER_ANNOTATION, from_chrono, to_chrono,
};
pub use settings::{BootstrapTokensConfig, KubernetesConfig, MIN_TOKEN_LIFETIME_SECS};
