//! `/metrics`: the process's metrics (the Prometheus recorder) plus gauges
//! read from Postgres at scrape time, rendered by hand: each credential's
//! validity, next rotation and failures, how many are in each state, and the
//! newest completed backup (when, how large). Every replica exports the same
//! values.

use std::time::Duration;

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};

use super::state::ApiState;
use crate::store::credentials::{Credential, State};

/// A scrape gives the database this long for the gauges (they are left out after).
const SCRAPE_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// The recorder's text plus the gauges (those the database answered in time).
pub async fn metrics_response(state: &ApiState) -> Response {
    state.metrics.run_upkeep();
    let mut text = state.metrics.render();
    match tokio::time::timeout(SCRAPE_DB_TIMEOUT, state.store.list_credentials()).await {
        Ok(Ok(creds)) => {
            let now = Utc::now();
            text.push_str(&credential_gauges(&creds, now));
            text.push_str(&consumer_gauges(&creds, now));
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "credential gauges left out of /metrics"),
        Err(_) => tracing::warn!(
            "credential gauges left out of /metrics: the database did not answer in time"
        ),
    }
    match tokio::time::timeout(
        SCRAPE_DB_TIMEOUT,
        crate::backup::db::latest_completed(&state.store),
    )
    .await
    {
        Ok(Ok(latest)) => text.push_str(&backup_gauge(latest)),
        Ok(Err(e)) => tracing::warn!(error = %e, "backup gauge left out of /metrics"),
        Err(_) => {
            tracing::warn!("backup gauge left out of /metrics: the database did not answer in time")
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `rekey_credential_not_after_seconds`, `rekey_credential_not_before_seconds`,
/// `rekey_credential_next_rotation_seconds` and
/// `rekey_credential_rotation_failures`, straight from the inventory at scrape
/// time (a removed credential disappears at once), and `rekey_credentials`:
/// how many credentials of each kind are in each state of `rekey status` at
/// `now` (every state, zeros included, for each kind in the inventory).
/// Every replica exports the same values: alerts aggregate with `min`/`max by
/// (name, kind)`.
pub fn credential_gauges(creds: &[Credential], now: DateTime<Utc>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (metric, help, pick) in [
        (
            "rekey_credential_not_after_seconds",
            "End of validity of each credential's current version (Unix time).",
            (|c: &Credential| c.not_after.map(|t| t.timestamp())) as fn(&Credential) -> Option<i64>,
        ),
        (
            "rekey_credential_not_before_seconds",
            "Start of validity of each credential's current version (Unix time); with not_after, its lifetime.",
            |c: &Credential| c.not_before.map(|t| t.timestamp()),
        ),
        (
            "rekey_credential_next_rotation_seconds",
            "When the engine will rotate each credential next (Unix time).",
            |c: &Credential| c.next_rotation_at.map(|t| t.timestamp()),
        ),
        (
            "rekey_credential_rotation_failures",
            "Consecutive failed rotation attempts of each credential rekey rotates (0 after a success).",
            |c: &Credential| c.managed.then_some(i64::from(c.failures)),
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} gauge");
        for c in creds {
            if let Some(v) = pick(c) {
                let _ = writeln!(
                    out,
                    "{metric}{{name=\"{}\",kind=\"{}\"}} {v}",
                    escape_label(&c.name),
                    escape_label(&c.kind),
                );
            }
        }
    }
    let mut counts: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for c in creds {
        for state in STATES {
            counts.entry((&c.kind, state.as_str())).or_default();
        }
        *counts.entry((&c.kind, c.state(now).as_str())).or_default() += 1;
    }
    let metric = "rekey_credentials";
    let _ = writeln!(
        out,
        "# HELP {metric} Credentials of each kind in each state of `rekey status`."
    );
    let _ = writeln!(out, "# TYPE {metric} gauge");
    for ((kind, state), n) in counts {
        let _ = writeln!(
            out,
            "{metric}{{kind=\"{}\",state=\"{state}\"}} {n}",
            escape_label(kind)
        );
    }
    out
}

/// Every state `rekey_credentials` reports, zeros included.
const STATES: [State; 8] = [
    State::Valid,
    State::Expired,
    State::Failing,
    State::Pending,
    State::NoExpiry,
    State::Revoked,
    State::AwaitingApproval,
    State::StaleConsumer,
];

/// `rekey_consumer_stale{name}`: for each certificate with a `probe`, 1
/// while it is `stale-consumer` (its consumer still serves an older version
/// `probe_grace` after the current one was published), else 0. From the
/// inventory at scrape time, like the credential gauges.
pub fn consumer_gauges(creds: &[Credential], now: DateTime<Utc>) -> String {
    use std::fmt::Write;
    let metric = "rekey_consumer_stale";
    let mut out = format!(
        "# HELP {metric} 1 while the probed consumer of a certificate still serves an older version probe_grace after the current one was published.\n# TYPE {metric} gauge\n"
    );
    for c in creds.iter().filter(|c| c.spec.get("probe").is_some()) {
        let stale = c.state(now) == crate::store::credentials::State::StaleConsumer;
        let _ = writeln!(
            out,
            "{metric}{{name=\"{}\"}} {}",
            escape_label(&c.name),
            u8::from(stale)
        );
    }
    out
}

/// `rekey_backup_latest_completed_timestamp_seconds` and
/// `rekey_backup_latest_completed_bytes` from the `backups` table (nothing
/// before the first completed backup): whoever took it, a replica or the
/// backup CronJob.
pub fn backup_gauge(latest: Option<(DateTime<Utc>, Option<i64>)>) -> String {
    let Some((at, size)) = latest else {
        return String::new();
    };
    let metric = "rekey_backup_latest_completed_timestamp_seconds";
    let mut out = format!(
        "# HELP {metric} When the newest completed etcd backup recorded in Postgres finished, whoever took it (Unix time).\n\
         # TYPE {metric} gauge\n{metric} {}\n",
        at.timestamp()
    );
    if let Some(bytes) = size {
        let metric = "rekey_backup_latest_completed_bytes";
        out.push_str(&format!(
            "# HELP {metric} Size of the newest completed etcd backup recorded in Postgres (encrypted bytes).\n\
             # TYPE {metric} gauge\n{metric} {bytes}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_escape_labels_and_skip_unknown_times() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let c = |name: &str, not_after| Credential {
            id: 1,
            name: name.into(),
            kind: "certificate".into(),
            source: "config".into(),
            managed: true,
            spec: serde_json::json!({}),
            sink: serde_json::json!({}),
            schedule: None,
            not_before: None,
            not_after,
            current_version: None,
            current_version_number: None,
            next_rotation_at: Some(now),
            next_rotation_reason: None,
            failures: 0,
            last_error: None,
            lease_owner: None,
            created_at: now,
            updated_at: now,
            observed: Default::default(),
        };
        let mut issued = c("cert/a\"b", Some(now));
        issued.not_before = Some(now - chrono::TimeDelta::hours(1));
        issued.failures = 2;
        let mut expired = c("cert/old", Some(now - chrono::TimeDelta::seconds(1)));
        expired.kind = "service_account_token".into();
        let text = credential_gauges(&[issued, c("cert/pending", None), expired], now);
        assert!(text.contains(
            "rekey_credential_not_before_seconds{name=\"cert/a\\\"b\",kind=\"certificate\"} 1699996400"
        ), "{text}");
        assert!(
            text.contains(
                "rekey_credential_rotation_failures{name=\"cert/a\\\"b\",kind=\"certificate\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "rekey_credential_not_after_seconds{name=\"cert/a\\\"b\",kind=\"certificate\"} 1700000000"
        ), "{text}");
        assert!(!text.contains("rekey_credential_not_after_seconds{name=\"cert/pending\""));
        assert!(text.contains(
            "rekey_credential_next_rotation_seconds{name=\"cert/pending\",kind=\"certificate\"} 1700000000"
        ));
        assert!(text.contains(
            "rekey_credential_rotation_failures{name=\"cert/pending\",kind=\"certificate\"} 0"
        ));
        assert!(!text.contains("rekey_credential_not_before_seconds{name=\"cert/pending\""));
        // By state, at `now`: the issued one expires exactly now.
        for line in [
            "rekey_credentials{kind=\"certificate\",state=\"expired\"} 1",
            "rekey_credentials{kind=\"certificate\",state=\"pending\"} 1",
            "rekey_credentials{kind=\"certificate\",state=\"valid\"} 0",
            "rekey_credentials{kind=\"certificate\",state=\"revoked\"} 0",
            "rekey_credentials{kind=\"service_account_token\",state=\"expired\"} 1",
            "rekey_credentials{kind=\"service_account_token\",state=\"no-expiry\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(
            !text.contains("kind=\"bootstrap_token\""),
            "no kind without credentials"
        );
    }

    #[test]
    fn consumer_gauge_for_probed_certificates_only() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let c = |name: &str, probe: bool, stale_at: Option<DateTime<Utc>>| Credential {
            id: 1,
            name: name.into(),
            kind: "certificate".into(),
            source: "config".into(),
            managed: true,
            spec: if probe {
                serde_json::json!({"probe": "web:443"})
            } else {
                serde_json::json!({})
            },
            sink: serde_json::json!({}),
            schedule: None,
            not_before: Some(now),
            not_after: Some(now + chrono::TimeDelta::hours(1)),
            current_version: Some(1),
            current_version_number: Some(1),
            next_rotation_at: None,
            next_rotation_reason: None,
            failures: 0,
            last_error: None,
            lease_owner: None,
            created_at: now,
            updated_at: now,
            observed: crate::store::credentials::Observed {
                stale_consumer_at: stale_at,
                ..Default::default()
            },
        };
        let text = consumer_gauges(
            &[
                c("cert/stale", true, Some(now)),
                c(
                    "cert/in-grace",
                    true,
                    Some(now + chrono::TimeDelta::minutes(1)),
                ),
                c("cert/unprobed", false, None),
            ],
            now,
        );
        assert!(
            text.contains("rekey_consumer_stale{name=\"cert/stale\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("rekey_consumer_stale{name=\"cert/in-grace\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("cert/unprobed"), "{text}");
    }

    #[test]
    fn backup_gauge_only_after_a_backup() {
        assert_eq!(backup_gauge(None), "");
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let text = backup_gauge(Some((at, Some(4096))));
        assert!(
            text.contains("\nrekey_backup_latest_completed_timestamp_seconds 1700000000\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE rekey_backup_latest_completed_timestamp_seconds gauge\n"));
        assert!(
            text.ends_with("\nrekey_backup_latest_completed_bytes 4096\n"),
            "{text}"
        );
        let text = backup_gauge(Some((at, None)));
        assert!(
            !text.contains("rekey_backup_latest_completed_bytes"),
            "{text}"
        );
    }
}
