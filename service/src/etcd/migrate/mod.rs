//! `rekey etcd migrate`: rewriting every object not stored under the current
//! write key, through the Kubernetes API, as the storage-migration procedure
//! does (a GET and an unchanged PUT with its resourceVersion), throttled,
//! resumable (`etcd_migrations`), proven by a re-scan at zero.
//!
//! - [`model`] holds options, the report, the pure decisions (resources, which
//!   values, which object a key is);
//! - [`run`] is the executor ([`migrate`](run::migrate));
//! - [`rewrite`] does one object through the Kubernetes API;
//! - [`rate`] keeps `--max-rate`;
//! - [`job`] is the scheduled migration in `rekey serve`.

pub mod job;
pub mod model;
pub mod rate;
pub mod rewrite;
pub mod run;

pub use model::{MigrateError, MigrateOptions, MigrateReport, MigrateRequest};
pub use run::migrate;
