//! Logs (tracing) and metrics (Prometheus), and `[metrics]`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// `[metrics]`
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Plain-HTTP listen address for `/metrics`, `/healthz`, `/readyz`.
    pub listen: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where sqlx logs Postgres' notices (`NOTICE` at INFO).
const PG_NOTICE_TARGET: &str = "sqlx::postgres::notice";

/// The filter to install for the user's `filter`: Postgres notices ("relation
/// ... already exists, skipping") are the database's chatter, not rekey's, so
/// they show only when the user asks for debug output (or names sqlx in the
/// filter); Postgres warnings still show.
fn effective_filter(filter: &str) -> Result<EnvFilter, String> {
    let parsed =
        EnvFilter::try_new(filter).map_err(|e| format!("invalid filter `{filter}`: {e}"))?;
    let debugging = parsed
        .max_level_hint()
        .is_some_and(|l| l >= tracing::level_filters::LevelFilter::DEBUG);
    if debugging || filter.contains("sqlx") {
        return Ok(parsed);
    }
    let directive = format!("{PG_NOTICE_TARGET}=warn")
        .parse()
        .expect("a valid directive");
    Ok(parsed.add_directive(directive))
}

/// Installs the global subscriber; logs go to stderr so stdout stays for output.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter = effective_filter(filter)?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        // Colours only for a person at a terminal: in `kubectl logs`, a file
        // or a pipe, escape codes are noise.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Histogram buckets (seconds) for rotation and request durations: from a
/// fast ECDSA issue on a file sink to a slow RSA-4096 rotation with a rollout.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle
/// (later calls return the same handle). Every module records with the
/// `metrics` macros; `/metrics` renders through this handle.
pub fn install_metrics_recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    METRICS
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    DURATION_BUCKETS,
                )
                .expect("duration buckets are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness): then
            // this handle still renders what is recorded through it, nothing else.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only rekey's own gauges");
            }
            describe_metrics();
            handle
        })
        .clone()
}

/// Help texts of the metrics every module records (names from the issue list).
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "rekey_rotations_total",
        "Rotations finished, by credential kind, trigger and outcome."
    );
    describe_histogram!(
        "rekey_rotation_duration_seconds",
        Unit::Seconds,
        "Time from claiming a credential to committing its new version."
    );
    describe_counter!(
        "rekey_bootstrap_tokens_revoked_total",
        "Bootstrap tokens revoked."
    );
    describe_counter!(
        "rekey_api_requests_total",
        "Admin API requests answered, by route, method and status."
    );
    describe_histogram!(
        "rekey_api_request_duration_seconds",
        Unit::Seconds,
        "Admin API request latency, by route."
    );
    describe_counter!(
        "rekey_api_tls_handshake_failures_total",
        "TLS handshakes the admin API refused (no or untrusted client certificate, timeouts)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_notices_show_only_when_debugging() {
        for (filter, hidden) in [
            ("info", true),
            ("warn", true),
            ("rekey=info,warn", true),
            ("debug", false),
            ("info,rekey=debug", false),
            ("info,sqlx=info", false),
        ] {
            let shown = effective_filter(filter).unwrap().to_string();
            assert_eq!(
                shown.contains("sqlx::postgres::notice=warn"),
                hidden,
                "{filter} -> {shown}"
            );
        }
        assert!(effective_filter("=nonsense=").is_err());
    }
}
