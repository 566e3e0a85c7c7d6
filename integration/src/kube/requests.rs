//! What the stand-in was asked: every request answered, those RBAC refused,
//! the permissions that allowed some request, and counts per verb and
//! resource. A test waits for a count to grow to know that a client listed,
//! watched or wrote (the relist a watcher makes when it starts, say) before
//! it asserts what that did or did not change.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{KubeStandIn, Permission};

/// One request as the stand-in saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Authenticated user name.
    pub user: String,
    /// Verb.
    pub verb: String,
    /// API group.
    pub group: String,
    /// Resource.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// HTTP status answered.
    pub code: u16,
    /// Answered by an injected fault.
    pub fault: bool,
}

impl RequestRecord {
    /// The resource with `/subresource` if any (`serviceaccounts/token`),
    /// as [`super::Fault`] names it.
    pub fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

impl KubeStandIn {
    /// Every request answered so far (a watch once its stream has begun).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.log.lock().expect("log").clone()
    }

    /// Requests refused by RBAC.
    pub fn denied(&self) -> Vec<RequestRecord> {
        self.shared.denied.lock().expect("denied").clone()
    }

    /// Permissions that allowed some request.
    pub fn used_permissions(&self) -> BTreeSet<Permission> {
        self.shared.used.lock().expect("used").clone()
    }

    /// Requests answered so far per `(verb, resource)`, the resource with
    /// `/subresource` if any: `("list", "secrets")`, `("create",
    /// "serviceaccounts/token")`. Faulted and refused requests count too.
    pub fn request_counts(&self) -> BTreeMap<(String, String), usize> {
        let mut counts = BTreeMap::new();
        for r in self.shared.log.lock().expect("log").iter() {
            *counts
                .entry((r.verb.clone(), r.resource_path()))
                .or_insert(0) += 1;
        }
        counts
    }

    /// Requests answered so far for `verb` on `resource` (see [`Self::request_counts`]).
    pub fn request_count(&self, verb: &str, resource: &str) -> usize {
        self.shared
            .log
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.verb == verb && r.resource_path() == resource)
            .count()
    }
}
