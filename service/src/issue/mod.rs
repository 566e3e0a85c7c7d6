//! Issuing certificates: the internal CA and leaf issuance (rcgen on
//! aws-lc-rs), and the configuration of what is issued.
//!
//! Issuing is pure CPU: no I/O, no clock (the caller passes `now`), so the
//! engine can run it on blocking threads and tests can pin time.
//!
//! - [`spec`]: `[issuer]`, `[[certificate]]` ([`CertificateSpec`],
//!   [`KeyType`], [`Usage`]) and their checks.
//! - [`ca`]: [`CertAuthority`]: load or create a CA, issue leaves.

pub mod ca;
pub mod spec;

pub use ca::{CertAuthority, IssueError, IssuedCert, MAX_BACKDATE, backdate, generate_key};
pub use spec::{CertificateSpec, IssuerConfig, KeyType, Usage, validate_dns_name};
