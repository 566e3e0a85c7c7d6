//! The end-to-end tests of rekey, as one test binary.
//!
//! One binary instead of one per file: each of them linked the whole crate,
//! which was most of a CI run. A test's name is its module path
//! (`cargo test -p rekey-integration --test it -- kube::bootstrap::`).
//!
//! ```text
//! api/           the admin HTTP API (mTLS, tokens, `rekey dev`, schemathesis)
//! backup/        `rekey backup` (format, run, prune, rewrap, Azure, CronJob)
//! engine/        the rotation engine (stepped, through the CLI and the binary)
//! etcd/          encryption at rest (verify, rotate-key, checks, memory)
//! kube/          Kubernetes (stand-in, sinks, tokens, bootstrap, RBAC, reload)
//! architecture   the code map of service/src held to ARCHITECTURE.md
//! crash_points   an abort at every crash point converges after restart
//! deploy         the manifests in deploy/ and the image's binary
//! sinks/         file sink atomicity, trust bundles, kubeconfig, consumer probes
//! fuzz_corpus_replay, ha, leader, outages, secret_hygiene, store
//! ```
//!
//! Everything here shares one process: one throwaway Postgres cluster
//! ([`rekey_integration::pg`]), one Prometheus recorder
//! ([`rekey_integration::metrics`]), the rustls crypto provider installed
//! once. No test sets environment variables, changes the working directory
//! or installs signal handlers; children get their environment per command.
//! Waits go through [`rekey_integration::wait::eventually`], never a fixed
//! sleep before an assertion.

mod api;
mod architecture;
mod backup;
mod crash_points;
mod deploy;
mod engine;
mod etcd;
mod fuzz_corpus_replay;
mod ha;
mod kube;
mod leader;
mod outages;
mod secret_hygiene;
mod sinks;
mod store;
