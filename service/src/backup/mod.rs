//! Encrypted etcd backups: stream format, snapshot source, upload, records.
//!
//! ```text
//!  etcd Maintenance.Snapshot ──► snapshot (SHA-256 trailer checked in flight)
//!     (or a file, stdin)            │
//!                                   ▼
//!             stream::encrypt  ── AES-256-GCM STREAM chunks under a fresh data key,
//!                                   │  the data key wrapped by the KEK (format, kek)
//!                                   ▼
//!             location::Writer ── local temp file + rename, or multipart upload
//!                                   │  (file://, s3://, gs://, az:// via object_store)
//!                                   ▼
//!             db ───────────────── `backups` row: size, ciphertext SHA-256, KEK id, revision
//! ```
//!
//! No plaintext touches disk on the way up. `decrypt` writes plaintext to a
//! temporary file that is renamed only after the final chunk authenticated;
//! `verify` decrypts to a temporary file and checks it is a valid etcd
//! snapshot ([`snapshot::status`]). `rewrap` rewrites only the header's key
//! envelope; bodies are copied byte for byte. The byte layout is in
//! `docs/backup-format.md`.
//!
//! For the service: [`run_backup`] runs one backup and returns its record,
//! [`list_backups`] lists them (`GET /v1/backups`, `POST /v1/backups`),
//! [`job::run_scheduled`] runs them on `[backup].schedule`.
//!
//! - [`settings`]: `[backup]`; [`error`]: [`BackupError`];
//!   [`metrics`]: the metric names and what a run records.
//! - [`run`]: one backup; [`job`]: the scheduled ones; [`prune`]: retention.
//! - [`format`], [`kek`], [`stream`], [`location`], [`snapshot`]: the
//!   stream format, keys, encryption, object stores, etcd snapshots.
//! - [`db`]: the `backups` table.

pub mod crypt;
pub mod db;
pub mod drill;
pub mod error;
pub mod escrow;
pub mod format;
pub mod job;
pub mod kek;
pub mod keys;
pub mod location;
pub mod metrics;
pub mod progress;
pub mod prune;
pub mod pruner;
pub mod rewrap;
pub mod run;
pub mod settings;
pub mod snapshot;
pub mod stream;
pub mod verify;

pub use db::{BackupRecord, ListFilter};
pub use error::BackupError;
pub use metrics::{
    METRIC_BYTES, METRIC_DURATION, METRIC_FAILURES, METRIC_LAST_SUCCESS, describe_metrics,
};
pub use run::{OBJECT_SUFFIX, RunOptions, list_backups, object_name, run_backup};
pub use settings::BackupConfig;
