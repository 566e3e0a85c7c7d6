//! The deployment in `deploy/`, checked statically:
//!
//! - `kubectl kustomize` renders the base and every overlay;
//! - every rendered object validates offline against the Kubernetes schemas
//!   (`kubernetes-validate --strict`) of a recent version;
//! - checkov finds nothing, and every check it skips is skipped by an
//!   annotation in the manifest that says why;
//! - every pod template meets the restricted Pod Security Standard, and no
//!   RBAC rule has a wildcard;
//! - the parts fit together: Services, probes, NetworkPolicies and the
//!   ServiceMonitor name ports the pods have, and every file the ConfigMap's
//!   `rekey.toml` names is mounted from a Secret;
//! - the ConfigMap's `rekey.toml` of each overlay is accepted by rekey's own
//!   configuration loader;
//! - `deploy/Containerfile` is multi-stage, distroless, runs as the manifests'
//!   UID with no shell and the binary only, and the release binary it would
//!   build links nothing that distroless `cc` lacks;
//! - the alerts use only metrics the service exports, and behave as
//!   `alerts_test.yaml` says (`promtool test rules`).
//!
//! Tools: kubectl (kustomize v5), the venv's kubernetes-validate and checkov,
//! promtool from Debian's prometheus package, readelf; integration/test.sh
//! installs them and builds the release binary. A missing one fails the test
//! with the command that installs it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use rekey_integration::deploy::{
    self, OVERLAYS, TARGETS, UID, VENV_INSTALL, containers, id, object, of_kind, pod_spec, root,
    run_ok, tool,
};
use serde_json::{Value, json};

/// The Kubernetes version the objects are validated against.
const KUBERNETES_VERSION: &str = "1.35";

/// Kinds without a schema in kubernetes-validate (Prometheus Operator CRDs):
/// checked by `the_monitoring_objects_fit_the_service` and promtool instead.
const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];

/// The command integration/test.sh and deploy/Containerfile build the image's binary with.
const RELEASE_BUILD: &str = "cargo build --release --locked -p rekey --bin rekey";

/// Every target rendered once: (YAML, objects).
fn renders() -> &'static BTreeMap<&'static str, (String, Vec<Value>)> {
    static R: OnceLock<BTreeMap<&'static str, (String, Vec<Value>)>> = OnceLock::new();
    R.get_or_init(|| {
        TARGETS
            .iter()
            .map(|t| {
                let yaml = deploy::render_yaml(t);
                let objects = deploy::parse_yaml(&yaml);
                (*t, (yaml, objects))
            })
            .collect()
    })
}

fn objects(target: &str) -> &'static [Value] {
    &renders()[target].1
}

/// Writes each overlay's render to `<dir>/<name>.yaml`.
fn write_renders(dir: &Path, targets: &[&str]) -> Vec<PathBuf> {
    targets
        .iter()
        .map(|t| {
            let p = dir.join(format!("{}.yaml", t.replace('/', "-")));
            std::fs::write(&p, &renders()[t].0).expect("write render");
            p
        })
        .collect()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

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

/// Volume types the restricted Pod Security Standard allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

#[test]
fn pod_templates_meet_the_restricted_pod_security_standard() {
    for target in TARGETS {
        let objs = objects(target);
        let workloads: Vec<&Value> = objs.iter().filter(|o| pod_spec(o).is_some()).collect();
        assert!(
            workloads.iter().any(|o| o["kind"] == "Deployment")
                && workloads.iter().any(|o| o["kind"] == "CronJob"),
            "{target}: the Deployment and the CronJob are checked"
        );
        for w in workloads {
            let at = format!("{target}: {}", id(w));
            let pod = pod_spec(w).expect("pod");
            let psc = &pod["securityContext"];
            for f in ["hostNetwork", "hostPID", "hostIPC"] {
                assert!(pod[f].is_null() || pod[f] == false, "{at}: {f}");
            }
            assert_eq!(psc["runAsNonRoot"], true, "{at}: pod runAsNonRoot");
            assert_eq!(psc["runAsUser"], UID, "{at}: pod runAsUser");
            assert_eq!(psc["runAsGroup"], UID, "{at}: pod runAsGroup");
            assert_eq!(
                psc["seccompProfile"]["type"], "RuntimeDefault",
                "{at}: pod seccompProfile"
            );
            assert!(psc["sysctls"].is_null(), "{at}: sysctls");
            assert!(
                psc["seLinuxOptions"].is_null() && psc["appArmorProfile"].is_null(),
                "{at}: SELinux/AppArmor overrides"
            );
            // The token is mounted only where the Kubernetes API is called.
            let wants_token = w["kind"] == "Deployment";
            assert_eq!(
                pod["automountServiceAccountToken"], wants_token,
                "{at}: automountServiceAccountToken"
            );
            for v in pod["volumes"].as_array().into_iter().flatten() {
                let kind = v
                    .as_object()
                    .expect("volume")
                    .keys()
                    .find(|k| *k != "name")
                    .map(String::as_str)
                    .unwrap_or("?");
                assert!(
                    RESTRICTED_VOLUMES.contains(&kind),
                    "{at}: volume {} is {kind}",
                    v["name"]
                );
            }
            let cs = containers(pod);
            assert!(!cs.is_empty(), "{at}: containers");
            for c in cs {
                let at = format!("{at} container {}", c["name"]);
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}");
                assert_eq!(sc["runAsNonRoot"], true, "{at}");
                assert_eq!(sc["runAsUser"], UID, "{at}");
                assert!(
                    sc["privileged"].is_null() || sc["privileged"] == false,
                    "{at}"
                );
                assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{at}");
                assert!(
                    sc["capabilities"]["add"].is_null(),
                    "{at}: capabilities added"
                );
                assert!(
                    sc["seccompProfile"].is_null()
                        || sc["seccompProfile"]["type"] == "RuntimeDefault",
                    "{at}: seccompProfile"
                );
                assert!(
                    sc["procMount"].is_null() || sc["procMount"] == "Default",
                    "{at}"
                );
                for p in c["ports"].as_array().into_iter().flatten() {
                    assert!(p["hostPort"].is_null(), "{at}: hostPort");
                }
                for r in ["requests", "limits"] {
                    for res in ["cpu", "memory"] {
                        assert!(
                            c["resources"][r][res].is_string(),
                            "{at}: resources.{r}.{res}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rbac_has_no_wildcards_and_binds_only_rekeys_own_roles() {
    for target in TARGETS {
        let objs = objects(target);
        let roles: BTreeSet<(String, String)> = objs
            .iter()
            .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or("").to_string(),
                    o["metadata"]["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert!(roles.len() >= 5, "{target}: {roles:?}");
        for o in objs
            .iter()
            .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        {
            assert!(o["aggregationRule"].is_null(), "{target}: {}", id(o));
            let rules = o["rules"].as_array().expect("rules");
            assert!(!rules.is_empty(), "{target}: {} has no rules", id(o));
            for rule in rules {
                for field in [
                    "apiGroups",
                    "resources",
                    "verbs",
                    "resourceNames",
                    "nonResourceURLs",
                ] {
                    for v in strs(&rule[field]) {
                        assert!(!v.contains('*'), "{target}: wildcard in {}: {rule}", id(o));
                    }
                }
                // Nothing that escalates: no impersonation, binding or escalation verbs.
                for verb in strs(&rule["verbs"]) {
                    assert!(
                        !["impersonate", "bind", "escalate"].contains(&verb),
                        "{target}: {} grants {verb}",
                        id(o)
                    );
                }
            }
        }
        for b in objs
            .iter()
            .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        {
            let r = &b["roleRef"];
            let key = (
                r["kind"].as_str().unwrap_or("").to_string(),
                r["name"].as_str().unwrap_or("").to_string(),
            );
            assert!(
                roles.contains(&key),
                "{target}: {} binds {key:?}, not one of rekey's roles",
                id(b)
            );
            assert_eq!(
                b["subjects"],
                json!([{"kind": "ServiceAccount", "name": "rekey", "namespace": "rekey"}]),
                "{target}: {}",
                id(b)
            );
        }
    }
}

/// The port number of a `host:port` listen address.
fn listen_port(listen: &str) -> i64 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("listen address without a port: {listen}"))
}

/// The ConfigMap's rekey.toml, loaded as `rekey serve` loads it (the
/// database URL, a mounted Secret in the cluster, from the environment).
fn overlay_config(objs: &[Value]) -> (String, rekey::config::Config) {
    let cms: Vec<&Value> = of_kind(objs, "ConfigMap")
        .into_iter()
        .filter(|c| {
            c["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("rekey-config"))
        })
        .collect();
    assert_eq!(cms.len(), 1, "one rekey-config ConfigMap");
    let text = cms[0]["data"]["rekey.toml"]
        .as_str()
        .expect("rekey.toml in the ConfigMap")
        .to_string();
    let env = BTreeMap::from([(
        "DATABASE_URL".to_string(),
        "postgres://rekey@db.invalid/rekey".to_string(),
    )]);
    let config = rekey::config::Config::parse(&text, &env, Path::new("/"))
        .unwrap_or_else(|e| panic!("the ConfigMap's rekey.toml is refused: {e}"));
    (
        cms[0]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        config,
    )
}

#[test]
fn the_configmap_rekey_toml_of_each_overlay_is_accepted() {
    for target in TARGETS {
        let (_, c) = overlay_config(objects(target));
        assert!(
            c.database.url_file.is_some(),
            "{target}: the URL is a mounted file"
        );
        assert!(c.issuer.is_some(), "{target}: [issuer]");
        let api = c.api.as_ref().expect("[api]");
        assert!(
            !api.insecure_plain_http && api.client_ca.is_some(),
            "{target}: mutual TLS on the admin API"
        );
        assert!(c.metrics.is_some(), "{target}: [metrics] for the probes");
        assert!(c.bootstrap_tokens.is_some(), "{target}: [bootstrap_tokens]");
        if *target == "overlays/dev" {
            assert!(
                c.etcd.is_none() && c.backup.is_none(),
                "dev: no etcd, no backups"
            );
        } else {
            let etcd = c.etcd.as_ref().expect("[etcd]");
            assert!(etcd.check_schedule.is_some() && etcd.encryption_config.is_some());
            let b = c.backup.as_ref().expect("[backup]");
            // The CronJob takes the backups; serve must not take a second set.
            assert!(
                b.schedule.is_none(),
                "{target}: [backup] schedule and the CronJob"
            );
        }
    }
    // A config the loader refuses fails here too (the check can fail).
    let bad = json!([{"kind": "ConfigMap", "metadata": {"name": "rekey-config-x"},
        "data": {"rekey.toml": "[database]\nurl_file = \"/u\"\n[engine]\nlease = \"1s\"\n"}}]);
    let r = std::panic::catch_unwind(|| overlay_config(bad.as_array().expect("array")));
    assert!(r.is_err(), "a 1s lease is refused");
}

/// Where `path` is mounted in a container: (mount, volume), if anywhere.
fn mounted<'a>(pod: &'a Value, c: &'a Value, path: &Path) -> Option<(&'a Value, &'a Value)> {
    let m = c["volumeMounts"]
        .as_array()?
        .iter()
        .filter(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|mp| path.starts_with(mp))
        })
        .max_by_key(|m| m["mountPath"].as_str().map(str::len))?;
    let v = pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == m["name"])?;
    Some((m, v))
}

/// Asserts that each file is mounted read-only from a Secret holding it.
fn assert_files_mounted(at: &str, pod: &Value, files: &[&Path]) {
    let c = &pod["containers"][0];
    for f in files {
        let (m, v) =
            mounted(pod, c, f).unwrap_or_else(|| panic!("{at}: nothing mounts {}", f.display()));
        assert_eq!(m["readOnly"], true, "{at}: {} read-only", f.display());
        let secret = &v["secret"];
        assert!(
            secret.is_object(),
            "{at}: {} comes from a Secret",
            f.display()
        );
        let rel = f
            .strip_prefix(m["mountPath"].as_str().expect("mountPath"))
            .expect("under the mount");
        let items = secret["items"]
            .as_array()
            .expect("the Secret's keys are listed");
        assert!(
            items
                .iter()
                .any(|i| i["path"].as_str().map(Path::new) == Some(rel)),
            "{at}: Secret {} does not provide {}",
            secret["secretName"],
            rel.display()
        );
    }
}

#[test]
fn services_probes_policies_and_mounts_fit_the_config() {
    for target in TARGETS {
        let objs = objects(target);
        let (cm_name, config) = overlay_config(objs);
        let deployment = object(objs, "Deployment", "rekey");
        let pod = pod_spec(deployment).expect("pod");
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let c = &pod["containers"][0];
        let port = |name: &str| -> i64 {
            c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_i64())
                .unwrap_or_else(|| panic!("{target}: no container port {name}"))
        };
        // The config listens where the pod says it does.
        let api = config.api.as_ref().expect("[api]");
        assert_eq!(
            listen_port(&api.listen),
            port("https"),
            "{target}: [api] listen"
        );
        let metrics = config.metrics.as_ref().expect("[metrics]");
        assert_eq!(
            listen_port(&metrics.listen),
            port("metrics"),
            "{target}: [metrics] listen"
        );
        // The config file is the generated ConfigMap (with its hash suffix).
        let cfg_vol = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "config")
            .expect("config volume");
        assert_eq!(cfg_vol["configMap"]["name"], cm_name.as_str(), "{target}");
        let args = strs(&c["args"]);
        assert_eq!(
            args,
            ["serve", "--config", "/etc/rekey/config/rekey.toml"],
            "{target}"
        );
        // Probes: /healthz and /readyz on the plain-HTTP metrics port.
        for (probe, path) in [
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{target}: {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{target}: {probe}");
        }
        // Topology spread over nodes and zones, selecting these pods.
        let spread = pod["topologySpreadConstraints"]
            .as_array()
            .expect("topology spread");
        let keys: Vec<&str> = spread
            .iter()
            .filter_map(|s| s["topologyKey"].as_str())
            .collect();
        assert_eq!(
            keys,
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"],
            "{target}"
        );
        for s in spread {
            assert_eq!(
                s["labelSelector"]["matchLabels"],
                deployment["spec"]["selector"]["matchLabels"]
            );
        }
        // Services select the server pods and name ports they have.
        let selects = |sel: &Value| {
            sel.as_object()
                .expect("selector")
                .iter()
                .all(|(k, v)| &pod_labels[k] == v)
        };
        for (svc, p) in [("rekey", "https"), ("rekey-metrics", "metrics")] {
            let s = object(objs, "Service", svc);
            assert!(
                selects(&s["spec"]["selector"]),
                "{target}: Service {svc} selects the pods"
            );
            assert_eq!(
                s["spec"]["ports"][0]["targetPort"], p,
                "{target}: Service {svc}"
            );
            assert_eq!(
                s["spec"]["ports"][0]["port"],
                port(p),
                "{target}: Service {svc}"
            );
        }
        let pdb = object(objs, "PodDisruptionBudget", "rekey");
        assert!(
            selects(&pdb["spec"]["selector"]["matchLabels"]),
            "{target}: PDB"
        );
        // NetworkPolicy: default deny for all rekey pods; admin port from
        // labelled namespaces, metrics from `monitoring`; egress to DNS, the
        // API server, Postgres, etcd and object storage only.
        let policies = of_kind(objs, "NetworkPolicy");
        let deny = object(objs, "NetworkPolicy", "rekey-default-deny");
        assert_eq!(strs(&deny["spec"]["policyTypes"]), ["Ingress", "Egress"]);
        assert!(deny["spec"]["ingress"].is_null() && deny["spec"]["egress"].is_null());
        let ingress: Vec<(i64, Value)> = policies
            .iter()
            .flat_map(|p| p["spec"]["ingress"].as_array().into_iter().flatten())
            .flat_map(|r| {
                let from = r["from"].clone();
                r["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["port"].as_i64())
                    .map(move |p| (p, from.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            ingress,
            vec![
                (
                    port("https"),
                    json!([{"namespaceSelector": {"matchLabels": {"rekey.io/admin-access": "true"}}}])
                ),
                (
                    port("metrics"),
                    json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
                ),
            ],
            "{target}: ingress rules"
        );
        let mut egress_ports: BTreeSet<i64> = BTreeSet::new();
        for p in &policies {
            for r in p["spec"]["egress"].as_array().into_iter().flatten() {
                assert!(
                    !r["ports"].is_null(),
                    "{target}: {} allows every port",
                    id(p)
                );
                for port in r["ports"].as_array().into_iter().flatten() {
                    egress_ports.insert(port["port"].as_i64().expect("numeric port"));
                }
            }
        }
        assert_eq!(
            egress_ports,
            BTreeSet::from([53, 443, 2379, 5432, 6443]),
            "{target}: egress ports (DNS, API server/object storage, etcd, Postgres)"
        );
        // Every file the config names is mounted from a Secret that has it.
        let mut server_files: Vec<&Path> =
            vec![config.database.url_file.as_deref().expect("url_file")];
        if let Some(i) = &config.issuer {
            server_files.extend([i.ca_cert.as_path(), i.ca_key.as_path()]);
        }
        server_files.extend(
            [&api.tls_cert, &api.tls_key, &api.client_ca]
                .into_iter()
                .flatten()
                .map(PathBuf::as_path),
        );
        let mut backup_files: Vec<&Path> =
            vec![config.database.url_file.as_deref().expect("url_file")];
        if let Some(e) = &config.etcd {
            let certs = [&e.ca_cert, &e.client_cert, &e.client_key];
            server_files.extend(certs.into_iter().flatten().map(PathBuf::as_path));
            server_files.extend(e.encryption_config.as_deref());
            backup_files.extend(certs.into_iter().flatten().map(PathBuf::as_path));
        }
        if let Some(b) = &config.backup {
            server_files.push(&b.kek_file);
            backup_files.push(&b.kek_file);
        }
        assert_files_mounted(&format!("{target}: Deployment"), pod, &server_files);
        let cron = object(objs, "CronJob", "rekey-backup");
        let cron_pod = pod_spec(cron).expect("pod");
        assert_files_mounted(&format!("{target}: CronJob"), cron_pod, &backup_files);
        assert_eq!(
            strs(&cron_pod["containers"][0]["args"]),
            ["backup", "run", "--config", "/etc/rekey/config/rekey.toml"]
        );
        // The root filesystem is read-only: temporary files go to an emptyDir.
        for p in [pod, cron_pod] {
            let c = &p["containers"][0];
            let (m, v) = mounted(p, c, Path::new("/tmp/x")).expect("/tmp is mounted");
            assert_eq!(m["mountPath"], "/tmp");
            assert!(v["emptyDir"].is_object());
        }
    }
}

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
fn metric_refs(expr: &str) -> Vec<(String, BTreeSet<String>)> {
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
fn service_sources() -> Vec<(PathBuf, String)> {
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
            if metric == "up" {
                // Prometheus' own, with the ServiceMonitor's target labels.
                assert!(
                    labels
                        .iter()
                        .all(|l| ["namespace", "service"].contains(&l.as_str()))
                );
                continue;
            }
            // Recorded with metrics::{gauge,counter,histogram}!("NAME", ...) or
            // rendered at scrape time from Postgres ("NAME" in api/routes.rs).
            let quoted = format!("\"{metric}\"");
            let defining: Vec<&(PathBuf, String)> = sources
                .iter()
                .filter(|(_, t)| t.contains(&quoted))
                .collect();
            assert!(
                !defining.is_empty(),
                "{alert} uses {metric}, which the service does not export"
            );
            for l in labels {
                let as_macro_label = format!("\"{l}\" =>");
                let as_text_label = format!("{l}=\\\"");
                assert!(
                    defining
                        .iter()
                        .any(|(_, t)| t.contains(&as_macro_label) || t.contains(&as_text_label)),
                    "{alert}: {metric} has no label `{l}` in {:?}",
                    defining.iter().map(|(p, _)| p).collect::<Vec<_>>()
                );
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

/// Instructions of a Containerfile, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, rest) = cur.trim().split_once(' ').unwrap_or((cur.trim(), ""));
        out.push((op.to_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

#[test]
fn the_containerfile_is_multi_stage_distroless_nonroot_and_binary_only() {
    let path = deploy::deploy_dir().join("Containerfile");
    let text = std::fs::read_to_string(&path).expect("deploy/Containerfile");
    let ins = instructions(&text);
    let stages: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let build_from = &ins[stages[0]].1;
    let (build_image, build_name) = build_from
        .split_once(" AS ")
        .or_else(|| build_from.split_once(" as "))
        .expect("the build stage is named");
    assert!(
        build_image.contains("rust:") && build_image.contains("bookworm"),
        "{build_image}"
    );
    let build_stage = &ins[stages[0]..stages[1]];
    assert!(
        build_stage
            .iter()
            .any(|(op, rest)| op == "RUN" && rest.contains(RELEASE_BUILD)),
        "the build stage runs `{RELEASE_BUILD}`"
    );
    let test_sh = std::fs::read_to_string(root().join("integration/test.sh")).expect("test.sh");
    assert!(
        test_sh.contains(RELEASE_BUILD),
        "integration/test.sh builds the image's binary the same way: {RELEASE_BUILD}"
    );
    // The runtime stage: distroless cc for Debian 12 (the build's glibc),
    // the nonroot variant, nothing run in it (there is no shell).
    let runtime = &ins[*stages.last().expect("stage")..];
    let image = &runtime[0].1;
    assert_eq!(image, "gcr.io/distroless/cc-debian12:nonroot");
    for (op, rest) in &runtime[1..] {
        assert!(
            ["COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"].contains(&op.as_str()),
            "the runtime stage may not {op} {rest}"
        );
    }
    let copies: Vec<&String> = runtime
        .iter()
        .filter(|(op, _)| op == "COPY")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        copies,
        [&format!(
            "--from={build_name} /out/rekey /usr/local/bin/rekey"
        )],
        "the binary only"
    );
    let user: Vec<&String> = runtime
        .iter()
        .filter(|(op, _)| op == "USER")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(user.len(), 1);
    let (uid, gid) = user[0].split_once(':').expect("USER uid:gid");
    // Numeric, so runAsNonRoot can verify it, and the manifests' UID.
    for target in OVERLAYS {
        for w in objects(target).iter().filter(|o| pod_spec(o).is_some()) {
            let sc = &pod_spec(w).expect("pod")["securityContext"];
            assert_eq!(sc["runAsUser"].to_string(), uid, "{target}: {}", id(w));
            assert_eq!(sc["runAsGroup"].to_string(), gid, "{target}: {}", id(w));
        }
    }
    // Exec form (there is no shell for a shell form): the binary, and the
    // same arguments as the Deployment's.
    let argv = |op: &str| -> Vec<String> {
        let (_, rest) = runtime.iter().find(|(o, _)| o == op).expect(op);
        serde_json::from_str(rest).unwrap_or_else(|_| panic!("{op} is not in exec form: {rest}"))
    };
    assert_eq!(argv("ENTRYPOINT"), ["/usr/local/bin/rekey"]);
    let deployment = object(objects("overlays/production"), "Deployment", "rekey");
    assert_eq!(
        argv("CMD"),
        strs(&pod_spec(deployment).expect("pod")["containers"][0]["args"])
    );
    // The build context leaves the build output and local state out.
    let dockerignore =
        std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for entry in ["target/", ".git/"] {
        assert!(
            dockerignore.lines().any(|l| l.trim() == entry),
            ".dockerignore: {entry}"
        );
    }
}

/// Shared libraries in gcr.io/distroless/cc-debian12 (Debian 12's libc6,
/// libgcc-s1, libgomp1, libstdc++6).
const DISTROLESS_CC_LIBS: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libgomp.so.1",
];

/// Debian 12's glibc: the newest symbol version the image can satisfy.
const DISTROLESS_GLIBC: (u32, u32) = (2, 36);

#[test]
fn the_release_binary_links_only_what_distroless_cc_has() {
    let bin = root().join("target/release/rekey");
    assert!(
        bin.is_file(),
        "{} is missing: build the image's binary with `{RELEASE_BUILD}` (integration/test.sh does)",
        bin.display()
    );
    let readelf = tool("readelf", "apt-get install -y binutils");
    let dynamic = run_ok(Command::new(&readelf).args(["-d", "--wide"]).arg(&bin));
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split_once('[')?.1.split_once(']').map(|(n, _)| n))
        .collect();
    assert!(needed.contains(&"libc.so.6"), "a glibc binary: {needed:?}");
    for lib in &needed {
        assert!(
            DISTROLESS_CC_LIBS.contains(lib),
            "the release binary needs {lib}, which gcr.io/distroless/cc-debian12 lacks: {needed:?}"
        );
    }
    let headers = run_ok(Command::new(&readelf).args(["-l", "--wide"]).arg(&bin));
    assert!(
        headers.contains("[Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]"),
        "{headers}"
    );
    let versions = run_ok(Command::new(&readelf).args(["-V", "--wide"]).arg(&bin));
    let newest = versions
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("GLIBC_2."))
        .filter_map(|m| m.split('.').next()?.parse::<u32>().ok())
        .max()
        .expect("GLIBC symbol versions");
    assert!(
        (2, newest) <= DISTROLESS_GLIBC,
        "the binary needs GLIBC_2.{newest}; Debian 12 has 2.{}",
        DISTROLESS_GLIBC.1
    );
}
