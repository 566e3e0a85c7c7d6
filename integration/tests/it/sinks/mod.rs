//! Sinks (issue 12): the file sink as one atomic change (torn reads, the
//! in-place upgrade), trust bundles republished without re-issuing (file,
//! Secret, kubeconfig, `[[bundle]]` targets), the kubeconfig sink read by
//! `kubectl`, and consumer probes against real TLS servers.

mod atomic;
mod bundles;
mod kubeconfig;
mod probes;
