//! The end-to-end test harness for rekey.
//!
//! Real parts only: a throwaway Postgres cluster per test process (each
//! test gets a fresh database), the release or debug `rekey` binary driven as a
//! user would, and (in their modules) etcd, S3 and Google Cloud Storage endpoints and a
//! Kubernetes API stand-in. A missing service fails the test with a message saying how
//! to install it; nothing is skipped. Tests wait on observable events with
//! [`wait::eventually`], never a fixed sleep before an assertion.

pub mod api;
pub mod bin;
pub mod consumers;
pub mod deploy;
pub mod etcd;
pub mod gcs;
pub mod hygiene;
pub mod k8s_values;
pub mod kube;
pub mod metrics;
pub mod pg;
pub mod pki;
pub mod s3;
pub mod serve;
pub mod wait;
