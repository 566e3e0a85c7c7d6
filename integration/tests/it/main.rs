//! The end-to-end tests of rekey, as one test binary.
//!
//! One binary instead of one per file: each of them linked the whole crate,
//! which was most of a CI run. A test's name is its module path
//! (`cargo test -p rekey-integration --test it -- kube::bootstrap::`).
//!
//! ```text
//! api/           the admin HTTP API (mTLS, tokens, `rekey dev`, schemathesis)
//! backup/        `rekey backup` (format, run, prune, rewrap, Azure, GCS, CronJob)
//! engine/        the rotation engine (stepped, through the CLI and the binary)
//! etcd/          encryption at rest (verify, rotate-key, checks, memory)
//! issuers/       named issuers, kubernetes-csr, what Go/OpenSSL/rustls/pkilint accept
//! kube/          Kubernetes (stand-in, sinks, tokens, bootstrap, RBAC, reload)
//! architecture   the code map of service/src held to ARCHITECTURE.md
//! completions    `rekey completions` scripts (bash loaded and completing)
//! crash_points   an abort at every crash point converges after restart
//! deploy         the manifests in deploy/ and the image's binary
//! quiet          read-only commands print their result, nothing on stderr
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
mod completions;
mod crash_points;
mod deploy;
mod engine;
mod etcd;
mod fuzz_corpus_replay;
mod ha;
mod issuers;
mod kube;
mod leader;
mod outages;
mod quiet;
mod secret_hygiene;
mod sinks;
mod store;
