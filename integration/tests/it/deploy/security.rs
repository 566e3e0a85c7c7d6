//! Every pod template meets the restricted Pod Security Standard; no RBAC
//! rule has a wildcard, and rekey binds only its own roles.

use std::collections::BTreeSet;

use rekey_integration::deploy::{TARGETS, UID, containers, id, pod_spec};
use serde_json::{Value, json};

use super::{objects, strs};

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
