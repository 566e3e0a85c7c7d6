//! RBAC as the API server evaluates it: (Cluster)RoleBindings whose subjects
//! match the user, the rules of the roles they reference, `system:masters`
//! bypassing everything. Roles are ordinary stored objects, so those shipped
//! in `deploy/` (loaded at start) and those a test creates both count.
//!
//! Every allowed request records which permissions — (role, rule, apiGroup,
//! resource, verb) — granted it, so a test can compare what was used with
//! what `deploy/` grants.

use std::{
    collections::BTreeSet,
    fmt,
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::{
    auth::UserInfo,
    store::{RESOURCES, World},
};

/// What a request wants to do.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// API group (`""` core).
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource (`token`, `status`, `approval`) or empty.
    pub subresource: String,
    /// Namespace, empty for cluster-scoped.
    pub namespace: String,
    /// Object name, empty for collections and creates.
    pub name: String,
    /// For non-resource requests (`/healthz`), the path.
    pub path: Option<String>,
}

/// One granted permission: a verb on a resource by one rule of one role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    /// `Role` or `ClusterRole`.
    pub role_kind: String,
    /// Namespace of a Role (empty for ClusterRoles).
    pub role_namespace: String,
    /// Role name.
    pub role: String,
    /// Index of the rule in the role.
    pub rule: usize,
    /// API group.
    pub group: String,
    /// Resource (`secrets`, `serviceaccounts/token`) or non-resource URL.
    pub resource: String,
    /// Verb.
    pub verb: String,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = if self.role_namespace.is_empty() {
            String::new()
        } else {
            format!("{}/", self.role_namespace)
        };
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(
            f,
            "{} {ns}{} rule {}: {} {}.{}",
            self.role_kind, self.role, self.rule, self.verb, self.resource, group
        )
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn subject_matches(subject: &Value, binding_ns: &str, user: &UserInfo) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str() {
        Some("User") => user.username == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(binding_ns);
            user.username == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn rule_permissions(
    rule: &Value,
    role_kind: &str,
    role_ns: &str,
    role: &str,
    idx: usize,
    a: &Attributes,
) -> Option<Permission> {
    let verbs = strs(&rule["verbs"]);
    if !verbs.iter().any(|v| v == "*" || *v == a.verb) {
        return None;
    }
    let perm = |group: &str, resource: &str| Permission {
        role_kind: role_kind.into(),
        role_namespace: role_ns.into(),
        role: role.into(),
        rule: idx,
        group: group.into(),
        resource: resource.into(),
        verb: a.verb.clone(),
    };
    if let Some(path) = &a.path {
        let urls = strs(&rule["nonResourceURLs"]);
        let hit = urls.iter().any(|u| {
            u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
        });
        return hit.then(|| perm("", path));
    }
    let groups = strs(&rule["apiGroups"]);
    if !groups.iter().any(|g| g == "*" || *g == a.group) {
        return None;
    }
    let full = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resources = strs(&rule["resources"]);
    let res_hit = resources.iter().any(|r| {
        r == "*"
            || *r == full
            || r.strip_suffix("/*")
                .is_some_and(|p| p == a.resource && !a.subresource.is_empty())
            || r.strip_prefix("*/").is_some_and(|s| s == a.subresource)
    });
    if !res_hit {
        return None;
    }
    let names = strs(&rule["resourceNames"]);
    if !names.is_empty() && !names.contains(&a.name) {
        return None;
    }
    Some(perm(&a.group, &full))
}

fn role_rules(world: &World, kind: &str, ns: &str, name: &str) -> Vec<Value> {
    let rt = RESOURCES
        .iter()
        .find(|r| r.group == "rbac.authorization.k8s.io" && r.kind == kind)
        .expect("rbac types");
    world
        .get(rt, if kind == "Role" { ns } else { "" }, name)
        .and_then(|r| r["rules"].as_array().cloned())
        .unwrap_or_default()
}

/// Every permission in the stored roles that allows `a` for `user`
/// (empty: forbidden). `system:masters` is allowed without a permission.
pub fn authorize(world: &World, user: &UserInfo, a: &Attributes) -> (bool, Vec<Permission>) {
    if user.groups.iter().any(|g| g == "system:masters") {
        return (true, vec![]);
    }
    let rt = |kind: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group == "rbac.authorization.k8s.io" && r.kind == kind)
            .expect("rbac types")
    };
    let mut granted = Vec::new();
    let mut consider = |binding: &Value, binding_ns: &str, applies_ns: &str| {
        let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        if !subjects
            .iter()
            .any(|s| subject_matches(s, binding_ns, user))
        {
            return;
        }
        let kind = binding["roleRef"]["kind"].as_str().unwrap_or("");
        let name = binding["roleRef"]["name"].as_str().unwrap_or("");
        for (i, rule) in role_rules(world, kind, applies_ns, name).iter().enumerate() {
            let role_ns = if kind == "Role" { applies_ns } else { "" };
            if let Some(p) = rule_permissions(rule, kind, role_ns, name, i, a) {
                granted.push(p);
            }
        }
    };
    for b in world.list(rt("ClusterRoleBinding"), None) {
        consider(b, "", "");
    }
    if !a.namespace.is_empty() {
        for b in world.list(rt("RoleBinding"), Some(&a.namespace)) {
            consider(b, &a.namespace, &a.namespace);
        }
    }
    (!granted.is_empty(), granted)
}

/// Every permission a set of roles grants (apiGroups × resources × verbs of each rule).
pub fn permissions_of(objects: &[Value]) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or("");
        if kind != "Role" && kind != "ClusterRole" {
            continue;
        }
        let ns = if kind == "Role" {
            o["metadata"]["namespace"].as_str().unwrap_or("")
        } else {
            ""
        };
        let name = o["metadata"]["name"].as_str().unwrap_or("");
        for (i, rule) in o["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let verbs = strs(&rule["verbs"]);
            let mut targets: Vec<(String, String)> = Vec::new();
            for g in strs(&rule["apiGroups"]) {
                for r in strs(&rule["resources"]) {
                    targets.push((g.clone(), r));
                }
            }
            for u in strs(&rule["nonResourceURLs"]) {
                targets.push((String::new(), u));
            }
            for (g, r) in targets {
                for v in &verbs {
                    out.insert(Permission {
                        role_kind: kind.into(),
                        role_namespace: ns.into(),
                        role: name.into(),
                        rule: i,
                        group: g.clone(),
                        resource: r.clone(),
                        verb: v.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every Kubernetes object in the YAML files under `dir` whose kind the
/// stand-in serves (kustomizations and other kinds are skipped), with the
/// file it came from.
pub fn load_manifests(dir: &Path) -> Result<Vec<(PathBuf, Value)>, String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in entries {
            let p = e.map_err(|e| format!("{}: {e}", d.display()))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        for doc in docs {
            let (Some(av), Some(kind)) = (doc["apiVersion"].as_str(), doc["kind"].as_str()) else {
                continue;
            };
            if super::store::by_kind(av, kind).is_some() {
                out.push((f.clone(), doc));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rule_matching() {
        let rule =
            json!({"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]});
        let a = Attributes {
            verb: "create".into(),
            resource: "serviceaccounts".into(),
            subresource: "token".into(),
            namespace: "ci".into(),
            ..Default::default()
        };
        assert!(rule_permissions(&rule, "ClusterRole", "", "r", 0, &a).is_some());
        let plain = Attributes {
            subresource: String::new(),
            ..a.clone()
        };
        assert!(rule_permissions(&rule, "ClusterRole", "", "r", 0, &plain).is_none());
        let named = json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["x"]});
        let get = Attributes {
            verb: "get".into(),
            resource: "secrets".into(),
            name: "y".into(),
            ..Default::default()
        };
        assert!(rule_permissions(&named, "Role", "ns", "r", 0, &get).is_none());
    }
}
