//! `kubectl kustomize` renders the base and every overlay; every object
//! validates against the Kubernetes schemas; checkov passes, every skip
//! explained in the manifest.

use std::{collections::BTreeSet, process::Command};

use rekey_integration::deploy::{
    self, OVERLAYS, TARGETS, VENV_INSTALL, containers, id, object, of_kind, pod_spec, run_ok, tool,
};
use serde_json::Value;

use super::{CRD_KINDS, KUBERNETES_VERSION, objects, write_renders};

#[test]
fn kubectl_kustomize_renders_every_overlay() {
    let version = run_ok(Command::new(deploy::kubectl()).args(["version", "--client"]));
    assert!(
        version.contains("Kustomize Version: v5"),
        "kubectl's kustomize is older than v5 (no components, no `labels`):\n{version}\n{}",
        deploy::KUBECTL_INSTALL
    );
    for target in TARGETS {
        let objs = objects(target);
        let kinds: BTreeSet<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "CronJob",
            "ConfigMap",
        ] {
            assert!(kinds.contains(kind), "{target}: no {kind} in {kinds:?}");
        }
        // Secret references only: no Secret object, no secret value committed.
        assert!(
            !kinds.contains("Secret"),
            "{target} renders a Secret: commit references only"
        );
        for o in objs {
            assert_eq!(
                o["metadata"]["labels"]["app.kubernetes.io/part-of"],
                "rekey",
                "{target}: {} is not labelled part-of rekey",
                id(o)
            );
        }
        let ns = object(objs, "Namespace", "rekey");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        let images: BTreeSet<&str> = objs
            .iter()
            .filter_map(pod_spec)
            .flat_map(containers)
            .filter_map(|c| c["image"].as_str())
            .collect();
        assert_eq!(
            images.len(),
            1,
            "{target}: one image for every pod: {images:?}"
        );
        assert!(
            !images
                .iter()
                .any(|i| i.ends_with(":latest") || !i.contains(':')),
            "{target}: an image without a pinned tag: {images:?}"
        );
    }
    let dev = objects("overlays/dev");
    let prod = objects("overlays/production");
    assert_eq!(object(dev, "Deployment", "rekey")["spec"]["replicas"], 1);
    assert_eq!(object(prod, "Deployment", "rekey")["spec"]["replicas"], 2);
    assert_eq!(
        object(objects("base"), "Deployment", "rekey")["spec"]["replicas"],
        2
    );
    assert_eq!(
        object(dev, "CronJob", "rekey-backup")["spec"]["suspend"],
        true
    );
    for kind in CRD_KINDS {
        assert_eq!(of_kind(prod, kind).len(), 1, "production has a {kind}");
        assert!(
            of_kind(dev, kind).is_empty(),
            "monitoring is optional: not in dev"
        );
    }
}

#[test]
fn every_rendered_object_validates_against_the_kubernetes_schema() {
    let validate = tool("kubernetes-validate", VENV_INSTALL);
    let dir = tempfile::tempdir().expect("temp dir");
    let files = write_renders(dir.path(), TARGETS);
    let out = run_ok(
        Command::new(validate)
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
            .args(&files),
    );
    for (target, file) in TARGETS.iter().zip(&files) {
        let file_name = file.file_name().and_then(|f| f.to_str()).expect("name");
        for o in objects(target) {
            let kind = o["kind"].as_str().expect("kind");
            let name = o["metadata"]["name"].as_str().expect("name");
            let passed = format!(
                "{file_name} passed for resource {}/{name} against version {KUBERNETES_VERSION}",
                kind.to_lowercase()
            );
            if CRD_KINDS.contains(&kind) {
                assert!(!out.contains(&passed));
                continue;
            }
            assert!(
                out.contains(&passed),
                "{target}: {kind}/{name} was not validated:\n{out}"
            );
        }
    }
}

#[test]
fn checkov_passes_and_every_skip_is_explained_in_the_manifest() {
    let checkov = tool("checkov", VENV_INSTALL);
    // Not tempfile's default `.tmp` name: checkov skips hidden directories.
    let dir = tempfile::Builder::new()
        .prefix("rekey-checkov-")
        .tempdir()
        .expect("temp dir");
    let scan = dir.path().join("rendered");
    std::fs::create_dir(&scan).expect("dir");
    write_renders(&scan, OVERLAYS);
    // --skip-download: offline, no platform calls.
    let out = Command::new(checkov)
        .arg("-d")
        .arg(&scan)
        .args([
            "--framework",
            "kubernetes",
            "--skip-download",
            "--compact",
            "-o",
            "json",
        ])
        .env("HOME", dir.path())
        .output()
        .expect("running checkov");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov did not print a JSON report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // One runner gives an object, several a list: take the kubernetes one.
    let report = match report {
        Value::Array(runs) => runs
            .into_iter()
            .find(|r| r["check_type"] == "kubernetes")
            .expect("a kubernetes report"),
        r => r,
    };
    assert_eq!(
        report["check_type"], "kubernetes",
        "no resource scanned: {report}"
    );
    let summary = &report["summary"];
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {} ({}): {}",
                c["check_id"].as_str().unwrap_or("?"),
                c["resource"].as_str().unwrap_or("?"),
                c["file_path"].as_str().unwrap_or("?"),
                c["check_name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(failed.is_empty(), "checkov failed:\n{}", failed.join("\n"));
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    assert!(summary["passed"].as_u64().unwrap_or(0) > 100, "{summary}");
    assert!(out.status.success(), "checkov exited with {}", out.status);
    for s in report["results"]["skipped_checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let why = s["check_result"]["suppress_comment"].as_str().unwrap_or("");
        assert!(
            why.len() >= 40,
            "{} on {} is skipped without a reason: {why:?}",
            s["check_id"],
            s["resource"]
        );
    }
    // Every skip annotation names a check and gives a reason.
    for target in OVERLAYS {
        for o in objects(target) {
            for (k, v) in o["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
            {
                if !k.starts_with("checkov.io/skip") {
                    continue;
                }
                let v = v.as_str().unwrap_or("");
                let (check, why) = v.split_once('=').unwrap_or(("", ""));
                assert!(
                    check.starts_with("CKV") && why.len() >= 40,
                    "{target}: {} {k}: `{v}` is not CHECK_ID=reason",
                    id(o)
                );
            }
        }
    }
}
