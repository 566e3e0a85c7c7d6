//! The one Prometheus recorder of the test process.
//!
//! `metrics` has a single global recorder per process, and every test runs
//! in one process (`tests/it`): a test that reads what the library code it
//! drives exports takes this handle instead of installing its own. Series
//! written by other tests' library code land here too, so a test asserts
//! only on the series of what it drives.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process's recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("installing the test process's Prometheus recorder (nothing else may)")
    })
}
