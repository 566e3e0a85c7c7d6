//! `deploy/base/backup-cronjob.yaml`: valid against the Kubernetes schemas
//! (kubernetes-validate, from the test venv) and carrying what the issue asks:
//! `rekey backup run`, concurrencyPolicy Forbid, a restricted security context,
//! the KEK and etcd client certificate from Secrets, config from `rekey-config`
//! (whose `[backup] kek_file` is where the KEK Secret is mounted).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_tool(name: &str) -> PathBuf {
    let p = root().join("target/pyenv/bin").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run integration/test.sh, or `python3 -m venv target/pyenv && \
         target/pyenv/bin/pip install -r integration/requirements.txt`",
        p.display()
    );
    p
}

fn manifest() -> PathBuf {
    root().join("deploy/base/backup-cronjob.yaml")
}

/// The manifest as JSON (PyYAML comes with kubernetes-validate).
fn manifest_json() -> serde_json::Value {
    let out = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(manifest())
        .output()
        .expect("python");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `deploy/base/rekey.toml` (ConfigMap `rekey-config`), parsed and validated
/// as `rekey serve` and `rekey backup run` do; the database URL (a mounted
/// Secret in the cluster) comes from the environment here.
fn base_config() -> rekey::config::Config {
    let text = std::fs::read_to_string(root().join("deploy/base/rekey.toml")).expect("rekey.toml");
    let env = std::collections::BTreeMap::from([(
        "DATABASE_URL".to_string(),
        "postgres://rekey@db.invalid/rekey".to_string(),
    )]);
    rekey::config::Config::parse(&text, &env, Path::new("/")).expect("deploy/base/rekey.toml")
}

#[test]
fn the_cronjob_validates_against_the_kubernetes_schema() {
    let out = Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.33"])
        .arg(manifest())
        .output()
        .expect("kubernetes-validate");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_cronjob_runs_backups_one_at_a_time_with_least_privilege() {
    let m = manifest_json();
    assert_eq!(m["kind"], "CronJob");
    let spec = &m["spec"];
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    let pod = &spec["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "rekey");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert_eq!(&args[..2], ["backup", "run"]);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let find = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert_eq!(find("config")["configMap"]["name"], "rekey-config");
    assert!(find("backup-kek")["secret"]["secretName"].is_string());
    assert!(find("etcd-client")["secret"]["secretName"].is_string());
    // The KEK path the process is told about (`[backup] kek_file` in the
    // ConfigMap's rekey.toml) is where its Secret is mounted.
    let config = base_config();
    let kek_path = config.backup.expect("[backup]").kek_file;
    let kek_path = kek_path.to_str().expect("utf-8 path");
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    let kek_mount = mounts
        .iter()
        .find(|m| m["name"] == "backup-kek")
        .and_then(|m| m["mountPath"].as_str())
        .expect("kek mount");
    assert!(kek_path.starts_with(kek_mount), "{kek_path} vs {kek_mount}");
    assert!(
        mounts
            .iter()
            .all(|m| m["name"] == "tmp" || m["readOnly"] == true)
    );
}
