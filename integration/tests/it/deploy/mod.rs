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
//!   `alerts_test.yaml` says (`promtool test rules`);
//! - the Grafana dashboard's queries parse (promtool) and use only exported
//!   metrics, and its ConfigMap holds exactly the dashboard file.
//!
//! Tools: kubectl (kustomize v5), the venv's kubernetes-validate and checkov,
//! promtool from Debian's prometheus package, readelf; integration/test.sh
//! installs them and builds the release binary. A missing one fails the test
//! with the command that installs it.
//!
//! ```text
//! render.rs      kustomize renders, Kubernetes schemas, checkov
//! security.rs    restricted Pod Security Standard, RBAC without wildcards
//! config.rs      the ConfigMap's rekey.toml; Services, probes, policies, mounts
//! monitoring.rs  ServiceMonitor, alert metrics, promtool unit tests
//! dashboard.rs   the Grafana dashboard: queries, panels, its ConfigMap
//! image.rs       the Containerfile and the release binary's libraries
//! ```

mod config;
mod dashboard;
mod image;
mod monitoring;
mod render;
mod security;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use rekey_integration::deploy::{self, TARGETS};
use serde_json::Value;

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
