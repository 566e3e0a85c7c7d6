//! rekey keeps a Kubernetes cluster's infrastructure credentials short-lived.
//!
//! The library is the whole service; `main.rs` only installs the crypto
//! provider, arms crash points and calls [`cli::main`]. Dependencies point
//! down (the code map and its rules are `ARCHITECTURE.md`):
//!
//! ```text
//!   front ends     cli, runtime, config, api
//!        │  operations with typed inputs, typed reports
//!        ▼
//!   capabilities   rotate, issue, sink, k8s, etcd, backup, scan, schedule
//!        │
//!        ▼
//!   store          Postgres: pool, migrations, LISTEN, shared tables
//!   base           units, error, secret, crash, telemetry, devdb
//! ```
//!
//! Each capability owns its `rekey.toml` section and its checks; `config`
//! composes them. `fuzzing` holds the fuzz targets' bodies.

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
