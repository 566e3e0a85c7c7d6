//! Issuing certificates: the issuers (CAs rekey holds, cluster signers it
//! asks), leaf issuance (rcgen on aws-lc-rs), and the configuration of what
//! is issued.
//!
//! ```text
//!   [issuer] / [[issuer]] ──settings──► registry::Issuers ── "signer of X", "bundle of X"
//!        ca: ca_store::CaStore ─load_ca─► ca::CertAuthority ──issue()──► leaf
//!        kubernetes-csr: csr::CsrSigner (k8s implements it) ──issue()──► leaf
//!   [[certificate]] ──spec──► CertificateSpec (issuer, subject, key, usages, sink)
//! ```
//!
//! Signing with a CA is pure CPU: no I/O, no clock (the caller passes
//! `now`), so the engine runs it on blocking threads and tests pin time.
//!
//! - [`settings`]: [`IssuerConfig`] (`[issuer]`, `[[issuer]]`) and its checks.
//! - [`registry`]: [`Issuers`], [`Issuer`], [`Signer`], [`TrustBundle`]:
//!   what the rest of the service asks for, swappable at run time.
//! - [`ca_store`]: [`CaStore`] (files here, a Secret in `k8s`) and [`load_ca`]
//!   with the CA checks, errors naming issuer and field ([`IssuerError`]).
//! - [`ca`]: [`CertAuthority`]: create or load a CA, issue leaves.
//! - [`csr`]: [`CsrSigner`], the request a spec becomes, signer rules.
//! - [`policy`]: [`policy::allows`], who may use an issuer from a Credential.
//! - [`inventory`]: each CA as the credential `ca/<issuer>`.
//! - [`spec`]: [`CertificateSpec`], [`KeyType`], [`Usage`]; [`x509`]:
//!   key identifiers, fingerprints, PEM.
//! - [`bundle`]: [`TrustBundle`] (what `ca.crt` holds, identified by the
//!   set of its CAs) and the [`TrustBundles`] source the registry implements.

pub mod bundle;
pub mod ca;
pub mod ca_store;
pub mod csr;
pub mod inventory;
pub mod policy;
pub mod registry;
pub mod settings;
pub mod spec;
pub mod x509;

pub use bundle::{BundleError, TrustBundles, fingerprint_of_pem};
pub use ca::{
    CaPart, CaProblem, CertAuthority, IssueError, IssuedCert, MAX_BACKDATE, backdate, generate_key,
};
pub use ca_store::{CaMaterial, CaStore, FileCaStore, IssuerError, load_ca};
pub use csr::{CsrError, CsrRequest, CsrSigner};
pub use policy::{Denial, IssuerPolicy};
pub use registry::{Issuer, IssuerState, Issuers, Signer, TrustBundle, UnknownIssuer};
pub use settings::{IssuerConfig, IssuerKind, IssuerSection, SecretRef};
pub use spec::{
    CA_PREFIX, CertificateSpec, DEFAULT_ISSUER, DEFAULT_PROBE_GRACE, KeyType, Usage,
    validate_dns_name, validate_probe,
};
