//! The ServiceMonitor fits the Service; the alerts use only metrics the
//! service exports and behave as `alerts_test.yaml` says (promtool).

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use rekey_integration::deploy::{self, object, root, run_ok};
use serde_json::{Value, json};

use super::{objects, strs};

#[test]
fn the_monitoring_objects_fit_the_service() {
    let objs = objects("overlays/production");
    let sm = object(objs, "ServiceMonitor", "rekey");
    let svc = object(objs, "Service", "rekey-metrics");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects rekey-metrics"
        );
    }
    assert_ne!(
        object(objs, "Service", "rekey")["metadata"]["labels"]["app.kubernetes.io/component"],
        svc["metadata"]["labels"]["app.kubernetes.io/component"],
        "the admin Service is not scraped"
    );
    assert_eq!(
        strs(&sm["spec"]["namespaceSelector"]["matchNames"]),
        ["rekey"]
    );
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["scheme"], "http");
    let rule = object(objs, "PrometheusRule", "rekey");
    let alerts: BTreeSet<&str> = alert_rules(rule)
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for a in [
        "RekeyCredentialExpiringSoon",
        "RekeyRotationFailing",
        "RekeyEtcdPlaintextSecrets",
        "RekeyBackupTooOld",
    ] {
        assert!(
            alerts.contains(a),
            "the issue's alert {a} is missing: {alerts:?}"
        );
    }
    for r in alert_rules(rule) {
        assert!(
            r["labels"]["severity"].is_string()
                && r["annotations"]["summary"].is_string()
                && r["annotations"]["description"].is_string(),
            "{} needs a severity, a summary and a description",
            r["alert"]
        );
    }
}

fn alert_rules(rule: &Value) -> Vec<&Value> {
    rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect()
}

/// The metric names and `name{label...}` label names an expression uses.
pub(super) fn metric_refs(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let name = &expr[start..i];
            if name.starts_with("rekey_") || name == "up" {
                let mut labels = BTreeSet::new();
                if expr[i..].starts_with('{') {
                    let end = expr[i..].find('}').map(|e| i + e).expect("closing brace");
                    for m in expr[i + 1..end].split(',') {
                        let label: String = m
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !label.is_empty() {
                            labels.insert(label);
                        }
                    }
                }
                out.push((name.to_string(), labels));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every `.rs` file under `service/src`, with its text.
pub(super) fn service_sources() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root().join("service/src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("service/src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                out.push((p, text));
            }
        }
    }
    out
}

/// Whether the service exports `metric` with each of `labels` (else why not): recorded
/// with `metrics::{gauge,counter,histogram}!("NAME", ...)` or rendered at
/// scrape time from Postgres (`"NAME"` in api/metrics.rs). A histogram's
/// `_bucket`, `_sum` and `_count` series count as the histogram's, `le` as a
/// label of `_bucket`. `up` is Prometheus' own, with the ServiceMonitor's
/// target labels.
pub(super) fn exported(
    sources: &[(PathBuf, String)],
    user: &str,
    metric: &str,
    labels: &BTreeSet<String>,
) -> Result<(), String> {
    if metric == "up" {
        return if labels
            .iter()
            .all(|l| ["namespace", "service"].contains(&l.as_str()))
        {
            Ok(())
        } else {
            Err(format!("{user}: up{{{labels:?}}}"))
        };
    }
    let defined_by = |name: &str| -> Vec<&(PathBuf, String)> {
        let quoted = format!("\"{name}\"");
        sources
            .iter()
            .filter(|(_, t)| t.contains(&quoted))
            .collect()
    };
    let mut defining = defined_by(metric);
    let mut histogram_bucket = false;
    if defining.is_empty() {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = metric.strip_suffix(suffix) {
                let base_defining = defined_by(base);
                if base_defining
                    .iter()
                    .any(|(_, t)| t.contains(&format!("histogram!(\"{base}\"")))
                {
                    defining = base_defining;
                    histogram_bucket = suffix == "_bucket";
                }
            }
        }
    }
    if defining.is_empty() {
        return Err(format!(
            "{user} uses {metric}, which the service does not export"
        ));
    }
    for l in labels {
        if l == "le" && histogram_bucket {
            continue;
        }
        let as_macro_label = format!("\"{l}\" =>");
        let as_text_label = format!("{l}=\\\"");
        if !defining
            .iter()
            .any(|(_, t)| t.contains(&as_macro_label) || t.contains(&as_text_label))
        {
            return Err(format!(
                "{user}: {metric} has no label `{l}` in {:?}",
                defining.iter().map(|(p, _)| p).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

#[test]
fn alerts_use_only_metrics_the_service_exports() {
    let sources = service_sources();
    let rule = object(objects("overlays/production"), "PrometheusRule", "rekey");
    let mut seen = BTreeSet::new();
    for r in alert_rules(rule) {
        let alert = r["alert"].as_str().expect("alert");
        let expr = r["expr"].as_str().expect("expr");
        let refs = metric_refs(expr);
        assert!(!refs.is_empty(), "{alert}: no metric in `{expr}`");
        for (metric, labels) in refs {
            seen.insert(metric.clone());
            if let Err(e) = exported(&sources, alert, &metric, &labels) {
                panic!("{e}");
            }
        }
    }
    for m in [
        "rekey_credential_not_after_seconds",
        "rekey_credential_not_before_seconds",
        "rekey_credential_rotation_failures",
        "rekey_rotations_total",
        "rekey_etcd_plaintext_values",
        "rekey_backup_latest_completed_timestamp_seconds",
        "rekey_consumer_stale",
    ] {
        assert!(seen.contains(m), "no alert reads {m}: {seen:?}");
    }
    // The scan finds a metric that is not exported (the check can fail).
    assert_eq!(
        metric_refs("max by (name) (rekey_no_such_metric{kind!=\"x\", name=~\"y\"}) > 0"),
        [(
            "rekey_no_such_metric".to_string(),
            BTreeSet::from(["kind".to_string(), "name".to_string()])
        )]
    );
    assert!(
        !sources
            .iter()
            .any(|(_, t)| t.contains("\"rekey_no_such_metric\""))
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_alerts() {
    let promtool = deploy::promtool();
    let dir = tempfile::tempdir().expect("temp dir");
    let rule = object(objects("overlays/production"), "PrometheusRule", "rekey");
    // JSON is YAML: the rule groups as Prometheus reads them from a file.
    let rules = json!({ "groups": rule["spec"]["groups"] });
    std::fs::write(dir.path().join("rules.yaml"), rules.to_string()).expect("rules");
    std::fs::copy(
        deploy::deploy_dir().join("components/monitoring/alerts_test.yaml"),
        dir.path().join("alerts_test.yaml"),
    )
    .expect("alerts_test.yaml");
    let checked = run_ok(Command::new(&promtool).current_dir(dir.path()).args([
        "check",
        "rules",
        "rules.yaml",
    ]));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_ok(Command::new(&promtool).current_dir(dir.path()).args([
        "test",
        "rules",
        "alerts_test.yaml",
    ]));
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert is exercised by a unit test that expects it to fire.
    let tests: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(dir.path().join("alerts_test.yaml")).expect("read"),
    )
    .expect("alerts_test.yaml parses");
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|a| a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()))
        .filter_map(|a| a["alertname"].as_str())
        .collect();
    for r in alert_rules(rule) {
        let a = r["alert"].as_str().expect("alert");
        assert!(
            fired.contains(a),
            "alerts_test.yaml never expects {a} to fire"
        );
    }
}
