//! Issuing certificates: the internal CA and leaf issuance (rcgen on
//! aws-lc-rs), and the configuration of what is issued.
//!
//! Issuing is pure CPU: no I/O, no clock (the caller passes `now`), so the
//! engine can run it on blocking threads and tests can pin time.
//!
//! - [`spec`]: `[issuer]`, `[[certificate]]` ([`CertificateSpec`],
//!   [`KeyType`], [`Usage`]) and their checks.
//! - [`ca`]: [`CertAuthority`]: load or create a CA, issue leaves.
//! - [`bundle`]: [`TrustBundle`] (what `ca.crt` holds) and the
//!   [`TrustBundles`] source of an issuer's bundle.

pub mod bundle;
pub mod ca;
pub mod spec;

pub use bundle::{DEFAULT_ISSUER, SingleIssuer, TrustBundle, TrustBundles};

pub use ca::{CertAuthority, IssueError, IssuedCert, MAX_BACKDATE, backdate, generate_key};
pub use spec::{
    CertificateSpec, DEFAULT_PROBE_GRACE, IssuerConfig, KeyType, Usage, validate_dns_name,
    validate_probe,
};
