//! The ConfigMap's `rekey.toml` of each overlay is accepted by rekey's own
//! loader, and the objects fit it: Services, probes and NetworkPolicies name
//! ports the pods have, every file it names is mounted from a Secret.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use rekey_integration::deploy::{TARGETS, id, object, of_kind, pod_spec};
use serde_json::{Value, json};

use super::{objects, strs};

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
        let issuers = config.issuers();
        for i in &issuers {
            server_files.extend(
                [&i.ca_cert, &i.ca_key]
                    .into_iter()
                    .flatten()
                    .map(PathBuf::as_path),
            );
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
