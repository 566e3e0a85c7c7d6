//! `[[bundle]]` targets: an issuer's trust bundle published alone, for
//! consumers that only verify (a file, or one key of a ConfigMap).
//!
//! ```toml
//! [[bundle]]
//! name = "bundle/cluster"
//! issuer = "cluster"                     # default: `default`
//! sink = { kind = "configmap", namespace = "shop", name = "cluster-ca", key = "ca.crt" }
//! # sink = { kind = "file", path = "/etc/ssl/cluster-ca.crt" }
//! ```
//!
//! A file is replaced atomically (temp file, fsync, rename, fsync of the
//! directory; mode 0644). A ConfigMap is created with the annotation
//! `rekey.io/bundle-target` (the target's name) and afterwards only its key
//! is replaced, with the resourceVersion read (a 409 reads again); other
//! keys, labels and annotations are kept. A ConfigMap without the
//! annotation belongs to someone else and is written only with
//! `adopt = true`.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};

use super::{
    model::{SinkContext, SinkError},
    spec::validate_k8s_name,
};
use crate::{
    issue::{TrustBundle, bundle::fingerprint_of_pem},
    k8s::{self, MANAGED_BY},
    store::credentials::validate_name,
};

/// The annotation naming the `[[bundle]]` target that owns a ConfigMap.
pub const BUNDLE_TARGET_ANNOTATION: &str = "rekey.io/bundle-target";

/// How many read-modify-write rounds a ConfigMap write tries.
const MAX_ATTEMPTS: usize = 8;

/// A `[[bundle]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BundleTargetSpec {
    /// Unique name, e.g. `bundle/cluster`.
    pub name: String,
    /// The issuer whose trust bundle it publishes (default `default`).
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Where.
    pub sink: BundleSinkSpec,
    /// Take over a ConfigMap rekey did not create.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
}

fn default_issuer() -> String {
    crate::issue::DEFAULT_ISSUER.to_string()
}

fn default_key() -> String {
    "ca.crt".to_string()
}

/// Where a `[[bundle]]` target publishes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum BundleSinkSpec {
    /// One PEM file.
    #[serde(rename = "file")]
    File {
        /// The file (its directory is created if missing).
        path: PathBuf,
    },
    /// One key of a ConfigMap.
    #[serde(rename = "configmap")]
    ConfigMap {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The key (default `ca.crt`).
        #[serde(default = "default_key")]
        key: String,
    },
}

impl BundleTargetSpec {
    /// Checks field values; an error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        validate_name(&self.name).map_err(|m| ("name".to_string(), m))?;
        if self.issuer.is_empty() {
            return Err(("issuer".into(), "must not be empty".into()));
        }
        match &self.sink {
            BundleSinkSpec::File { path } if path.as_os_str().is_empty() => {
                Err(("sink.path".into(), "must not be empty".into()))
            }
            BundleSinkSpec::File { path } if path.file_name().is_none() => Err((
                "sink.path".into(),
                format!("`{}` does not name a file", path.display()),
            )),
            BundleSinkSpec::File { .. } => Ok(()),
            BundleSinkSpec::ConfigMap {
                namespace,
                name,
                key,
            } => {
                validate_k8s_name(namespace).map_err(|m| ("sink.namespace".to_string(), m))?;
                validate_k8s_name(name).map_err(|m| ("sink.name".to_string(), m))?;
                let key_ok = !key.is_empty()
                    && key.len() <= 253
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if key_ok {
                    Ok(())
                } else {
                    Err((
                        "sink.key".into(),
                        format!(
                            "`{key}` is not a valid ConfigMap key (letters, digits, `-`, `_`, `.`)"
                        ),
                    ))
                }
            }
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match &self.sink {
            BundleSinkSpec::File { path } => format!("file:{}", path.display()),
            BundleSinkSpec::ConfigMap {
                namespace,
                name,
                key,
            } => format!("configmap:{namespace}/{name}[{key}]"),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The fingerprint of the bundle a target holds now (`None`: nothing there,
/// or no certificate in it).
pub async fn held(
    target: &BundleTargetSpec,
    ctx: &SinkContext,
) -> Result<Option<String>, SinkError> {
    match &target.sink {
        BundleSinkSpec::File { path } => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
                Ok(t) => Ok(fingerprint_of_pem(&t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&path)(e)),
            })
            .await
            .map_err(|e| SinkError::Unavailable(format!("reading {}: {e}", target.describe())))?
        }
        BundleSinkSpec::ConfigMap {
            namespace,
            name,
            key,
        } => {
            let api: Api<ConfigMap> = Api::namespaced(kube_client(ctx, target)?, namespace);
            let what = format!("configmap {namespace}/{name}");
            let cm = k8s::call(format!("get {what}"), api.get_opt(name))
                .await
                .map_err(|e| remote(&what, e))?;
            Ok(cm
                .and_then(|c| c.data?.get(key).cloned())
                .and_then(|t| fingerprint_of_pem(&t)))
        }
    }
}

/// Writes `bundle` to the target, atomically.
pub async fn write(
    target: &BundleTargetSpec,
    bundle: &TrustBundle,
    ctx: &SinkContext,
) -> Result<(), SinkError> {
    match &target.sink {
        BundleSinkSpec::File { path } => {
            let (path, pem) = (path.clone(), bundle.pem().to_string());
            tokio::task::spawn_blocking(move || write_file(&path, pem.as_bytes()))
                .await
                .map_err(|e| {
                    SinkError::Unavailable(format!("writing {}: {e}", target.describe()))
                })?
        }
        BundleSinkSpec::ConfigMap {
            namespace,
            name,
            key,
        } => {
            let api: Api<ConfigMap> = Api::namespaced(kube_client(ctx, target)?, namespace);
            let what = format!("configmap {namespace}/{name}");
            for _ in 0..MAX_ATTEMPTS {
                let existing = k8s::call(format!("get {what}"), api.get_opt(name))
                    .await
                    .map_err(|e| remote(&what, e))?;
                let result = match existing {
                    None => {
                        let cm = ConfigMap {
                            metadata: ObjectMeta {
                                name: Some(name.clone()),
                                namespace: Some(namespace.clone()),
                                annotations: Some(BTreeMap::from([(
                                    BUNDLE_TARGET_ANNOTATION.to_string(),
                                    target.name.clone(),
                                )])),
                                labels: Some(BTreeMap::from([(
                                    "app.kubernetes.io/managed-by".to_string(),
                                    MANAGED_BY.to_string(),
                                )])),
                                ..Default::default()
                            },
                            data: Some(BTreeMap::from([(key.clone(), bundle.pem().to_string())])),
                            ..Default::default()
                        };
                        k8s::call(
                            format!("create {what}"),
                            api.create(&PostParams::default(), &cm),
                        )
                        .await
                    }
                    Some(mut cm) => {
                        let owned = cm
                            .metadata
                            .annotations
                            .as_ref()
                            .is_some_and(|a| a.contains_key(BUNDLE_TARGET_ANNOTATION));
                        if !owned && !target.adopt {
                            return Err(SinkError::NotOwned(what));
                        }
                        if cm.immutable == Some(true) {
                            return Err(SinkError::Unavailable(format!(
                                "{what} is immutable: rekey cannot update its `{key}`"
                            )));
                        }
                        cm.metadata.managed_fields = None;
                        cm.metadata
                            .annotations
                            .get_or_insert_with(BTreeMap::new)
                            .insert(BUNDLE_TARGET_ANNOTATION.into(), target.name.clone());
                        cm.data
                            .get_or_insert_with(BTreeMap::new)
                            .insert(key.clone(), bundle.pem().to_string());
                        k8s::call(
                            format!("replace {what}"),
                            api.replace(name, &PostParams::default(), &cm),
                        )
                        .await
                    }
                };
                match result {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_conflict() || e.is_not_found() => continue,
                    Err(e) => return Err(remote(&what, e)),
                }
            }
            Err(SinkError::Remote {
                target: what,
                message: format!("still conflicting after {MAX_ATTEMPTS} attempts"),
                retryable: true,
            })
        }
    }
}

fn kube_client(ctx: &SinkContext, target: &BundleTargetSpec) -> Result<kube::Client, SinkError> {
    ctx.kube.clone().ok_or_else(|| {
        SinkError::Unavailable(format!(
            "{}: no Kubernetes client (configure [kubernetes] or run in-cluster)",
            target.describe()
        ))
    })
}

fn remote(what: &str, e: k8s::K8sError) -> SinkError {
    SinkError::Remote {
        target: what.to_string(),
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

/// Replaces `path` atomically with `bytes` (mode 0644).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.rekey-tmp.{:08x}", rand::random::<u32>()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> BundleTargetSpec {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn specs_parse_with_defaults_and_are_checked() {
        let t = parse(
            "name = \"bundle/cluster\"\nsink = { kind = \"configmap\", namespace = \"shop\", name = \"cluster-ca\" }\n",
        );
        assert_eq!(t.issuer, "default");
        assert_eq!(
            t.sink,
            BundleSinkSpec::ConfigMap {
                namespace: "shop".into(),
                name: "cluster-ca".into(),
                key: "ca.crt".into()
            }
        );
        assert!(t.validate().is_ok());
        let bad = parse(
            "name = \"b\"\nsink = { kind = \"configmap\", namespace = \"shop\", name = \"x\", key = \"a/b\" }\n",
        );
        assert_eq!(bad.validate().unwrap_err().0, "sink.key");
        let f =
            parse("name = \"b\"\nissuer = \"cluster\"\nsink = { kind = \"file\", path = \"/\" }\n");
        assert_eq!(f.validate().unwrap_err().0, "sink.path");
        assert!(
            toml::from_str::<BundleTargetSpec>("name = \"b\"\nsink = { kind = \"secret\" }\n")
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_file_target_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pki/bundle.crt");
        let t = BundleTargetSpec {
            name: "bundle/x".into(),
            issuer: "default".into(),
            sink: BundleSinkSpec::File { path: path.clone() },
            adopt: false,
        };
        let ctx = SinkContext::default();
        assert_eq!(held(&t, &ctx).await.unwrap(), None);
        let (ca, _) = crate::issue::CertAuthority::generate(
            "a",
            crate::issue::KeyType::EcdsaP256,
            chrono::TimeDelta::days(1),
            chrono::Utc::now(),
        )
        .unwrap();
        let b = TrustBundle::from_pem(ca.cert_pem()).unwrap();
        write(&t, &b, &ctx).await.unwrap();
        assert_eq!(
            held(&t, &ctx).await.unwrap().as_deref(),
            Some(b.fingerprint())
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), b.pem());
        assert_eq!(
            std::fs::read_dir(dir.path().join("pki")).unwrap().count(),
            1
        );
    }
}
