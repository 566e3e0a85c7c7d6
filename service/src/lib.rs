//! rekey keeps a Kubernetes cluster's infrastructure credentials short-lived.
//!
//! The library is the whole service; `main.rs` only parses arguments and calls
//! [`cli::run`]. Layout (one module per concern, see `../shared/DESIGN.md`):
//!
//! ```text
//!   config ──► store (Postgres: credentials, versions, rotations, audit)
//!      │          ▲
//!      ▼          │
//!   schedule ──► rotate (engine: claim → issue → publish → commit)
//!                 │         │            │
//!                 ▼         ▼            ▼
//!               issue     sink        telemetry
//!              (rcgen)  (file, k8s)  (logs, metrics)
//!
//!   k8s     tokens, bootstrap tokens, CSR/Node watch
//!   etcd    encryption-at-rest verification
//!   backup  encrypted etcd snapshots
//!   api     admin HTTPS API (mutual TLS)
//!   cli     subcommands; exit codes in `error`
//! ```

pub mod api;
pub mod backup;
pub mod cli;
pub mod config;
pub mod crash;
pub mod devdb;
pub mod error;
pub mod etcd;
pub mod fuzzing;
pub mod issue;
pub mod k8s;
pub mod rotate;
pub mod runtime;
pub mod scan;
pub mod schedule;
pub mod secret;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod units;

/// Installs the one process-wide rustls crypto provider (aws-lc-rs).
///
/// Every TLS user in the graph (kube, sqlx, etcd-client, object_store, the
/// admin API) relies on it; calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
