//! Where a credential is published (`sink = { kind = ... }` in
//! `[[certificate]]` and `[[token]]`) and who consumes it (`reload`), with
//! the checks on both: Secret sinks and reload targets name Kubernetes
//! objects, so the Kubernetes name rule lives here too.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a credential is published.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkSpec {
    /// A directory: `tls.crt`, `tls.key`, `ca.crt` (or `token`).
    File {
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// A Kubernetes Secret.
    KubernetesSecret {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
    /// A kubeconfig file with the client certificate, key and trust bundle
    /// embedded (certificates only).
    Kubeconfig {
        /// The file (its directory is created if missing).
        path: PathBuf,
        /// The API server's URL (`https://...`).
        server: String,
        /// Name of the cluster entry (default `kubernetes`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<String>,
        /// Name of the user entry (default: the certificate's common name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Name of the context (default `<user>@<cluster>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<String>,
    },
}

impl SinkSpec {
    /// Checks field values; an error is `(field, message)`, the field
    /// relative to the sink (`dir`, `namespace`, `name`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            Self::File { dir } if dir.as_os_str().is_empty() => {
                Err(("dir".into(), "must not be empty".into()))
            }
            Self::File { .. } => Ok(()),
            Self::Kubeconfig { path, .. } if path.as_os_str().is_empty() => {
                Err(("path".into(), "must not be empty".into()))
            }
            Self::Kubeconfig { path, .. } if path.file_name().is_none() => Err((
                "path".into(),
                format!("`{}` does not name a file", path.display()),
            )),
            Self::Kubeconfig {
                server,
                cluster,
                user,
                context,
                ..
            } => {
                match url::Url::parse(server) {
                    Ok(u) if u.scheme() == "https" && u.host_str().is_some() => {}
                    _ => {
                        return Err((
                            "server".into(),
                            format!("`{server}` is not an https:// URL of the API server"),
                        ));
                    }
                }
                for (field, v) in [("cluster", cluster), ("user", user), ("context", context)] {
                    if let Some(v) = v
                        && (v.is_empty() || v.chars().any(char::is_control))
                    {
                        return Err((field.into(), "must be a non-empty name".into()));
                    }
                }
                Ok(())
            }
            Self::KubernetesSecret { namespace, name } => {
                validate_k8s_name(namespace).map_err(|m| ("namespace".to_string(), m))?;
                validate_k8s_name(name).map_err(|m| ("name".to_string(), m))
            }
        }
    }
}

/// Checks the consumers to roll after publishing
/// (`deployment|statefulset|daemonset/<namespace>/<name>`); an error is
/// `(field, message)` with the field `reload[j]`.
pub fn validate_reload(reload: &[String]) -> Result<(), (String, String)> {
    for (j, r) in reload.iter().enumerate() {
        let parts: Vec<&str> = r.split('/').collect();
        let ok = parts.len() == 3
            && matches!(parts[0], "deployment" | "statefulset" | "daemonset")
            && validate_k8s_name(parts[1]).is_ok()
            && validate_k8s_name(parts[2]).is_ok();
        if !ok {
            return Err((
                format!("reload[{j}]"),
                format!("`{r}` is not `deployment|statefulset|daemonset/<namespace>/<name>`"),
            ));
        }
    }
    Ok(())
}

/// A Kubernetes object name or namespace (DNS-1123 subdomain, lower case).
pub fn validate_k8s_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid Kubernetes name (lower-case letters, digits, `-`, `.`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named() {
        let s = SinkSpec::KubernetesSecret {
            namespace: "ci".into(),
            name: "Bad_Name".into(),
        };
        assert_eq!(s.validate().unwrap_err().0, "name");
        let s = SinkSpec::File { dir: "".into() };
        assert_eq!(s.validate().unwrap_err().0, "dir");
        let k = |server: &str| SinkSpec::Kubeconfig {
            path: "/etc/ci/kubeconfig".into(),
            server: server.into(),
            cluster: None,
            user: Some("ci".into()),
            context: None,
        };
        assert!(k("https://api:6443").validate().is_ok());
        assert_eq!(k("http://api:6443").validate().unwrap_err().0, "server");
        assert_eq!(k("api:6443").validate().unwrap_err().0, "server");
        let e = validate_reload(&["deployment/ns/web".into(), "job/ns/x".into()]).unwrap_err();
        assert_eq!(e.0, "reload[1]");
        assert!(validate_k8s_name("kube-system").is_ok());
        assert!(validate_k8s_name("-x").is_err());
    }
}
