//! Fuzzes the admin API of a real `rekey serve` with schemathesis against its
//! own `/openapi.json`: no 5xx, and every response (status, content type,
//! headers, body) matches the document.

use std::{path::PathBuf, process::Command};

use rekey_integration::{
    api::{Pki, Serve, certificate_toml},
    bin::outcome,
    pg::fresh_db,
};

/// schemathesis from the test venv (`integration/test.sh` creates it).
fn schemathesis() -> PathBuf {
    let python = std::env::var_os("REKEY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python")
        });
    let bin = python.with_file_name("schemathesis");
    assert!(
        bin.is_file(),
        "{} not found: create the test venv with `python3 -m venv target/pyenv && \
         target/pyenv/bin/pip install -r integration/requirements.txt` (integration/test.sh does), \
         or point REKEY_TEST_PYTHON at a python whose venv has schemathesis",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn schemathesis_finds_no_server_errors_or_schema_violations() {
    let tool = schemathesis();
    let db = fresh_db().await;
    let pki = Pki::new();
    let mut certs = String::new();
    for name in ["cert/default/web-tls", "cert/kube-system/etcd-peer"] {
        let dir = pki.dir.path().join(name.replace('/', "_"));
        certs.push_str(&certificate_toml(name, "ecdsa-p256", "24h", &dir));
    }
    let etcd = rekey_integration::etcd::Etcd::start();
    certs.push_str(&rekey_integration::api::etcd_and_backup_toml(
        &etcd,
        pki.dir.path(),
    ));
    let kube = rekey_integration::kube::KubeStandIn::start();
    certs.push_str(&format!(
        "\n[kubernetes]\nkubeconfig = \"{}\"\n",
        kube.kubeconfig().display()
    ));
    let serve = Serve::start(&db, &pki, "", &certs).await;
    let (cert, key) = pki.client_files("admin");
    let doc = pki
        .client("admin")
        .get(format!("{}/openapi.json", serve.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let schema = pki.dir.path().join("openapi.json");
    std::fs::write(&schema, doc).unwrap();
    // Endpoints whose capability is not wired in this build answer 501 by
    // design (and document it): fuzz them for conformance, but a 501 is not a failure.
    let not_landed: Vec<String> = rekey::api::router::NOT_WIRED
        .iter()
        .map(|s| s.to_string())
        .collect();
    let all_checks = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";
    let conformance = "status_code_conformance,content_type_conformance,\
                       response_schema_conformance,response_headers_conformance";
    let mut runs = vec![("all", all_checks, "--exclude-operation-id")];
    if !not_landed.is_empty() {
        runs.push(("not-landed", conformance, "--include-operation-id"));
    }
    for (label, checks, filter) in runs {
        let mut cmd = Command::new(&tool);
        // Its cache (.schemathesis/) goes into the temp dir, not the source tree.
        cmd.current_dir(pki.dir.path());
        cmd.arg("run")
            .arg(&schema)
            .args(["--url", &serve.url])
            .arg("--request-cert")
            .arg(&cert)
            .arg("--request-cert-key")
            .arg(&key)
            .arg("--tls-verify")
            .arg(&pki.ca_cert)
            .args(["--checks", checks])
            // Path parameters are free-form names: many generated strings cannot
            // be path segments, which this health check mistakes for bad constraints.
            .args(["--suppress-health-check", "filter_too_much"])
            .args([
                "--max-examples",
                "25",
                "--generation-deterministic",
                "--no-color",
            ])
            .arg("--report-dir")
            .arg(pki.dir.path().join(format!("schemathesis-{label}")));
        for id in &not_landed {
            cmd.args([filter, id]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("running schemathesis"))
            .await
            .unwrap();
        let (code, stdout, stderr) = outcome(&out);
        assert_eq!(
            code,
            0,
            "schemathesis ({label}) found problems:\n{stdout}\n{stderr}\n--- server log ---\n{}",
            serve.log()
        );
        assert!(stdout.contains("passed"), "{stdout}");
        if label == "all" {
            // Every documented operation was exercised (none silently skipped).
            let parsed: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&schema).unwrap()).unwrap();
            let ops: usize = parsed["paths"]
                .as_object()
                .unwrap()
                .values()
                .map(|item| item.as_object().unwrap().len())
                .sum();
            let tested = ops - not_landed.len();
            assert!(
                stdout.contains(&format!("Tested: {tested}")),
                "expected {tested} operations tested:\n{stdout}"
            );
        }
    }
}
