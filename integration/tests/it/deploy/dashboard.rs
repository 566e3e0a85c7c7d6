//! The Grafana dashboard (`components/monitoring/rekey-dashboard.json`):
//! every panel's query parses (promtool, each expression as a recording rule)
//! and uses only metrics the service exports; the panels an operator needs
//! are there and do not overlap; the ConfigMap the monitoring component
//! renders for Grafana's sidecar holds exactly the file.

use std::{collections::BTreeSet, process::Command};

use rekey_integration::deploy::{self, object};
use serde_json::{Value, json};

use super::{
    monitoring::{exported, metric_refs, service_sources},
    objects,
};

const DASHBOARD: &str = "components/monitoring/rekey-dashboard.json";

/// Grafana's built-in interval variables, as Grafana substitutes them before
/// sending a query (any value of the right kind parses the same).
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "2m"),
    ("$__interval", "30s"),
    ("$__range", "1d"),
];

fn dashboard_text() -> String {
    std::fs::read_to_string(deploy::deploy_dir().join(DASHBOARD)).expect("rekey-dashboard.json")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
        out.push(p);
    }
    out
}

/// (panel title, refId, expression with Grafana's variables substituted).
fn queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().expect("panel title").to_string();
            let mut expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"))
                .to_string();
            for (var, value) in GRAFANA_VARIABLES {
                expr = expr.replace(var, value);
            }
            assert!(
                !expr.contains('$'),
                "{title}: an unknown variable in `{expr}`"
            );
            out.push((title, t["refId"].as_str().expect("refId").to_string(), expr));
        }
    }
    out
}

/// `promtool check rules` on each expression as a recording rule; returns
/// promtool's output, or its error.
fn promtool_check(dir: &std::path::Path, exprs: &[(String, String)]) -> Result<String, String> {
    let rules: Vec<Value> = exprs
        .iter()
        .map(|(record, expr)| json!({ "record": record, "expr": expr }))
        .collect();
    let file = dir.join("dashboard-rules.yaml");
    // JSON is YAML.
    std::fs::write(
        &file,
        json!({ "groups": [{ "name": "dashboard", "rules": rules }] }).to_string(),
    )
    .expect("rules file");
    let out = Command::new(deploy::promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn every_panel_query_parses_and_reads_only_exported_metrics() {
    let dashboard: Value = serde_json::from_str(&dashboard_text()).expect("dashboard JSON");
    let queries = queries(&dashboard);
    assert!(queries.len() >= 15, "{} queries", queries.len());

    let dir = tempfile::tempdir().expect("temp dir");
    let exprs: Vec<(String, String)> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, r, e))| (format!("dashboard:query_{i}_{r}"), e.clone()))
        .collect();
    let checked = promtool_check(dir.path(), &exprs)
        .unwrap_or_else(|e| panic!("promtool refuses a dashboard query:\n{e}"));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
    // The check bites: a query that does not parse is refused.
    let broken = promtool_check(
        dir.path(),
        &[(
            "dashboard:broken".into(),
            "sum(rate(rekey_rotations_total[5m])".into(),
        )],
    );
    assert!(
        broken.is_err(),
        "promtool accepted a broken query: {broken:?}"
    );

    let sources = service_sources();
    let mut seen = BTreeSet::new();
    for (title, _, expr) in &queries {
        let refs = metric_refs(expr);
        assert!(!refs.is_empty(), "{title}: no rekey metric in `{expr}`");
        for (metric, labels) in refs {
            if let Err(e) = exported(&sources, &format!("panel `{title}`"), &metric, &labels) {
                panic!("{e}");
            }
            seen.insert(metric);
        }
    }
    // What the issue asks to see at a glance.
    for m in [
        "rekey_credentials",
        "rekey_credential_not_after_seconds",
        "rekey_rotations_total",
        "rekey_bootstrap_tokens_revoked_total",
        "rekey_backup_latest_completed_timestamp_seconds",
        "rekey_backup_latest_completed_bytes",
        "rekey_etcd_plaintext_values",
        "rekey_etcd_stale_values",
    ] {
        assert!(seen.contains(m), "no panel reads {m}: {seen:?}");
    }
    // The check itself finds a metric that is not exported, and a label a
    // metric does not have.
    assert!(
        exported(
            &sources,
            "self-check",
            "rekey_no_such_metric_total",
            &BTreeSet::new()
        )
        .is_err()
    );
    assert!(
        exported(
            &sources,
            "self-check",
            "rekey_rotations_total",
            &BTreeSet::from(["no_such_label".to_string()])
        )
        .is_err()
    );
}

#[test]
fn the_panels_an_operator_needs_are_there_and_fit() {
    let dashboard: Value = serde_json::from_str(&dashboard_text()).expect("dashboard JSON");
    assert_eq!(dashboard["uid"], "rekey-overview");
    let all = panels(&dashboard);
    let titles: BTreeSet<&str> = all.iter().filter_map(|p| p["title"].as_str()).collect();
    for t in [
        "Credentials by state",
        "Next expiries",
        "Time left until expiry",
        "Rotations per minute",
        "Failed rotations per minute",
        "Bootstrap tokens revoked",
        "Newest backup age",
        "Newest backup size",
        "Plaintext values",
        "Stale values",
    ] {
        assert!(titles.contains(t), "no panel `{t}`: {titles:?}");
    }
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(&str, i64, i64, i64, i64)> = Vec::new();
    for p in &all {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_i64().expect("id")),
            "{title}: id reused"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_i64().expect("x"),
            g["y"].as_i64().expect("y"),
            g["w"].as_i64().expect("w"),
            g["h"].as_i64().expect("h"),
        );
        assert!(x >= 0 && w > 0 && x + w <= 24 && h > 0, "{title}: {g}");
        for (other, ox, oy, ow, oh) in &boxes {
            let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title, x, y, w, h));
        if p["type"] != "row" {
            assert!(
                p["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{title}: say what the panel shows"
            );
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{title}: the dashboard's Prometheus variable"
            );
        }
    }
}

#[test]
fn the_grafana_configmap_holds_the_dashboard_file() {
    let cm = object(
        objects("overlays/production"),
        "ConfigMap",
        "rekey-grafana-dashboard",
    );
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"], "1",
        "Grafana's sidecar finds dashboards by this label"
    );
    let data = cm["data"].as_object().expect("data");
    assert_eq!(data.len(), 1, "{:?}", data.keys());
    let text = cm["data"]["rekey.json"].as_str().expect("rekey.json");
    assert!(
        text == dashboard_text(),
        "the ConfigMap's rekey.json differs from {DASHBOARD}"
    );
    let parsed: Value = serde_json::from_str(text).expect("the ConfigMap's JSON");
    assert_eq!(parsed["uid"], "rekey-overview");
}
