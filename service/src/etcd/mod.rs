//! etcd encryption at rest: the EncryptionConfiguration, value formats, scan.
//!
//! ```text
//!   encryption.rs  EncryptionConfiguration ──parse/validate──► rules, keys (SecretBytes)
//!        │                                                       │
//!        ▼                                                       ▼
//!   policy.rs      findings (pure: config + scan tally + key age)   values.rs  Keyring::judge (pure)
//!        │                                                       │
//!        └──────────────► verify.rs ◄── scan.rs (etcd pages, bounded memory) ◄┘
//!                             │
//!               report.rs (JSON)  db.rs (etcd_checks)  job.rs (cron + gauges)
//!                             │
//!          the command line (`rekey etcd verify`, `rekey etcd rotate-key`)
//! ```
//!
//! Decisions (what a value is, which findings apply, the exit code) are pure
//! functions; only `scan`, `db`, `job` and `rotate::rotate_key` do I/O.
//! `[etcd]` is [`settings::EtcdConfig`].

pub mod census;
pub mod client;
pub mod db;
pub mod encryption;
pub mod job;
pub mod migrate;
pub mod policy;
pub mod report;
pub mod retire;
pub mod rotate;
pub mod scan;
pub mod settings;
pub mod values;
pub mod verify;

pub use settings::{DEFAULT_PREFIX, EtcdConfig};
pub use verify::{VerifyError, VerifyOptions, verify};
