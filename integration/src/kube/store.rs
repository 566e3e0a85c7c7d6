//! The stand-in's object store: typed resources, resourceVersions, the event
//! log that watches replay, and Status errors shaped like the real server's.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A resource type the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural resource name in URLs.
    pub resource: &'static str,
    /// Kind of its objects.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Field selectors the real server supports beyond `metadata.name`/`metadata.namespace`.
    pub fields: &'static [&'static str],
    /// Only `create` (reviews, not stored).
    pub virtual_only: bool,
}

impl ResourceType {
    /// `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Supported field-selector paths.
    pub fn field_paths(&self) -> Vec<&'static str> {
        let mut v = vec!["metadata.name", "metadata.namespace"];
        v.extend_from_slice(self.fields);
        v
    }
}

const fn rt(
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespaced: bool,
    fields: &'static [&'static str],
) -> ResourceType {
    ResourceType {
        group,
        version,
        resource,
        kind,
        namespaced,
        fields,
        virtual_only: false,
    }
}

/// Every resource the stand-in serves.
pub static RESOURCES: &[ResourceType] = &[
    rt("", "v1", "namespaces", "Namespace", false, &[]),
    rt("", "v1", "secrets", "Secret", true, &["type"]),
    rt("", "v1", "serviceaccounts", "ServiceAccount", true, &[]),
    rt("", "v1", "configmaps", "ConfigMap", true, &[]),
    rt("", "v1", "nodes", "Node", false, &["spec.unschedulable"]),
    rt("apps", "v1", "deployments", "Deployment", true, &[]),
    rt("apps", "v1", "statefulsets", "StatefulSet", true, &[]),
    rt("apps", "v1", "daemonsets", "DaemonSet", true, &[]),
    rt(
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
        "CertificateSigningRequest",
        false,
        &["spec.signerName"],
    ),
    rt("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        &[],
    ),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
    ),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
    ),
    rt(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
    ),
    ResourceType {
        virtual_only: true,
        ..rt(
            "authentication.k8s.io",
            "v1",
            "tokenreviews",
            "TokenReview",
            false,
            &[],
        )
    },
    ResourceType {
        virtual_only: true,
        ..rt(
            "authorization.k8s.io",
            "v1",
            "subjectaccessreviews",
            "SubjectAccessReview",
            false,
            &[],
        )
    },
    ResourceType {
        virtual_only: true,
        ..rt(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
            &[],
        )
    },
];

/// Looks a resource type up by group, version and plural.
pub fn resource_type(group: &str, version: &str, resource: &str) -> Option<ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
        .copied()
}

/// Looks a resource type up by kind (for YAML loading).
pub fn by_kind(api_version: &str, kind: &str) -> Option<ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
        .copied()
}

/// An error answered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Forbidden`, ...
    pub reason: &'static str,
    /// Human message, worded like the real server's.
    pub message: String,
    /// `details` (name, group, kind).
    pub details: Option<Value>,
}

impl ApiError {
    /// A bare error.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 for an object.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(rt)),
            details: Some(json!({"name": name, "group": rt.group, "kind": rt.resource})),
        }
    }

    /// 409 AlreadyExists.
    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(rt)),
            details: Some(json!({"name": name, "group": rt.group, "kind": rt.resource})),
        }
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(rt)
            ),
            details: Some(json!({"name": name, "group": rt.group, "kind": rt.resource})),
        }
    }

    /// 422 Invalid with field causes.
    pub fn invalid(rt: &ResourceType, name: &str, causes: &[(String, String)]) -> Self {
        let msg = causes
            .iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {msg}", rt.kind),
            details: Some(json!({
                "name": name, "group": rt.group, "kind": rt.kind,
                "causes": causes.iter().map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f})).collect::<Vec<_>>(),
            })),
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.resource.to_string()
    } else {
        format!("{}.{}", rt.resource, rt.group)
    }
}

/// Key of a stored object.
pub type ObjKey = (ResourceType, String, String);

/// One change, as watches deliver it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// Which resource.
    pub rt: ResourceType,
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before, for deletions).
    pub object: Value,
}

/// All objects and their history.
#[derive(Debug)]
pub struct World {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    log: Vec<Arc<Event>>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// RFC 3339 in the API's format (seconds, `Z`).
pub fn timestamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl World {
    /// An empty world.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1 << 16);
        Self {
            rv: 1000,
            objects: BTreeMap::new(),
            log: Vec::new(),
            tx,
        }
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// One object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(*rt, ns.to_string(), name.to_string()))
    }

    /// Every object of a type in a namespace (all namespaces when `ns` is None), by key.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<&Value> {
        self.objects
            .range((*rt, String::new(), String::new())..)
            .take_while(|((r, _, _), _)| r == rt)
            .filter(|((_, n, _), _)| ns.is_none_or(|want| n == want))
            .map(|(_, v)| v)
            .collect()
    }

    /// Events after `rv` (for watch replay), plus a subscription to later ones,
    /// taken atomically so nothing falls in between.
    pub fn subscribe_after(&self, rv: u64) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let start = self.log.partition_point(|e| e.rv <= rv);
        (self.log[start..].to_vec(), self.tx.subscribe())
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(&mut self, rt: ResourceType, kind: &'static str, object: Value, rv: u64) {
        let ev = Arc::new(Event {
            rv,
            rt,
            kind,
            object,
        });
        self.log.push(ev.clone());
        let _ = self.tx.send(ev);
    }

    /// Stores a new object: sets uid, creationTimestamp, resourceVersion.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!(timestamp());
        self.insert_new(rt, ns, obj)
    }

    /// Puts an object back as a restore of etcd does: its uid and
    /// creationTimestamp as they were (a create would make new ones), a new
    /// resourceVersion, an ADDED event for watchers.
    pub fn restore(&mut self, rt: &ResourceType, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.insert_new(rt, ns, obj)
    }

    /// Stores an object that does not exist yet, with a new resourceVersion,
    /// and tells watchers.
    fn insert_new(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = (*rt, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        let rv = self.next_rv();
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        }
        if rt.namespaced {
            obj["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        self.objects.insert(key, obj.clone());
        self.emit(*rt, "ADDED", obj.clone(), rv);
        Ok(obj)
    }

    /// Replaces an object; `obj` carries the caller's resourceVersion (empty:
    /// unconditional). Keeps uid and creationTimestamp; bumps generation when
    /// the spec changed.
    pub fn replace(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let key = (*rt, ns.to_string(), name.to_string());
        let Some(old) = self.objects.get(&key) else {
            return Err(ApiError::not_found(rt, name));
        };
        let want_rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !want_rv.is_empty()
            && want_rv != old["metadata"]["resourceVersion"].as_str().unwrap_or("")
        {
            return Err(ApiError::conflict(rt, name));
        }
        if obj["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| Some(u) != old["metadata"]["uid"].as_str())
        {
            return Err(ApiError::conflict(rt, name));
        }
        let generation = old["metadata"]["generation"].as_i64();
        let spec_changed = old.get("spec") != obj.get("spec");
        let old_meta = old["metadata"].clone();
        let rv = self.next_rv();
        let meta = &mut obj["metadata"];
        meta["uid"] = old_meta["uid"].clone();
        meta["creationTimestamp"] = old_meta["creationTimestamp"].clone();
        meta["resourceVersion"] = json!(rv.to_string());
        if let Some(g) = generation {
            meta["generation"] = json!(if spec_changed { g + 1 } else { g });
        }
        if rt.namespaced {
            meta["namespace"] = json!(ns);
        }
        meta["name"] = json!(name);
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        self.objects.insert(key, obj.clone());
        self.emit(*rt, "MODIFIED", obj.clone(), rv);
        Ok(obj)
    }

    /// Deletes an object, checking optional uid / resourceVersion preconditions.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        pre_uid: Option<&str>,
        pre_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let key = (*rt, ns.to_string(), name.to_string());
        let Some(old) = self.objects.get(&key) else {
            return Err(ApiError::not_found(rt, name));
        };
        if let Some(u) = pre_uid
            && Some(u) != old["metadata"]["uid"].as_str()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    qualified(rt),
                    old["metadata"]["uid"].as_str().unwrap_or("")
                ),
            ));
        }
        if let Some(r) = pre_rv
            && Some(r) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(rt, name));
        }
        let mut obj = self.objects.remove(&key).expect("checked above");
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.emit(*rt, "DELETED", obj.clone(), rv);
        Ok(obj)
    }
}
