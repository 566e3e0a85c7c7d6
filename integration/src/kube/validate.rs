//! Object validation: every body is parsed into its k8s-openapi type (so
//! the JSON stored and served is what those types produce) and checked the
//! way the real server checks the fields rekey touches.

use base64::{Engine, engine::general_purpose::STANDARD};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    certificates::v1::CertificateSigningRequest,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Node, Secret, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::store::{ApiError, ResourceType};

fn roundtrip<K: DeserializeOwned + Serialize>(
    rt: &ResourceType,
    name: &str,
    v: Value,
) -> Result<Value, ApiError> {
    let typed: K = serde_json::from_value(v).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            rt.kind, rt.version, rt.kind
        ))
        .with_name(name)
    })?;
    Ok(serde_json::to_value(&typed).expect("serializing a k8s-openapi object"))
}

impl ApiError {
    fn with_name(mut self, name: &str) -> Self {
        if self.details.is_none() {
            self.details = Some(serde_json::json!({ "name": name }));
        }
        self
    }
}

/// A DNS-1123 subdomain (object names).
pub fn dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn secret_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// Validates and normalizes an object for create (`old` None) or update.
pub fn validate(
    rt: &ResourceType,
    name: &str,
    obj: Value,
    old: Option<&Value>,
) -> Result<Value, ApiError> {
    let mut causes: Vec<(String, String)> = Vec::new();
    let is_rbac = rt.group == "rbac.authorization.k8s.io";
    let name_ok = if is_rbac {
        !name.is_empty()
            && !name.contains('/')
            && !name.contains('%')
            && name != "."
            && name != ".."
    } else {
        dns1123_subdomain(name)
    };
    if !name_ok {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"),
        ));
    }
    let v = match rt.kind {
        "Secret" => {
            let mut v = obj;
            // stringData is write-only: merged into data, as the server does.
            if let Some(sd) = v.get("stringData").and_then(Value::as_object).cloned() {
                for (k, s) in sd {
                    v["data"][k] = Value::String(STANDARD.encode(s.as_str().unwrap_or("")));
                }
                v.as_object_mut().expect("object").remove("stringData");
            }
            let v = roundtrip::<Secret>(rt, name, v)?;
            let ty = v["type"].as_str().unwrap_or("Opaque").to_string();
            let data = v["data"].as_object().cloned().unwrap_or_default();
            for k in data.keys() {
                if !secret_key_ok(k) {
                    causes.push((format!("data[{k}]"), format!("Invalid value: \"{k}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'")));
                }
            }
            match ty.as_str() {
                "kubernetes.io/tls" => {
                    for k in ["tls.crt", "tls.key"] {
                        if !data.contains_key(k) {
                            causes.push((format!("data[{k}]"), "Required value".into()));
                        }
                    }
                }
                "kubernetes.io/service-account-token"
                    if v["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                        .as_str()
                        .is_none_or(str::is_empty) =>
                {
                    causes.push((
                        "metadata.annotations[kubernetes.io/service-account.name]".into(),
                        "Required value".into(),
                    ));
                }
                _ => {}
            }
            if let Some(old) = old {
                let old_ty = old["type"].as_str().unwrap_or("Opaque");
                if old_ty != ty {
                    causes.push((
                        "type".into(),
                        format!("Invalid value: \"{ty}\": field is immutable"),
                    ));
                }
                if old["immutable"].as_bool() == Some(true) && old["data"] != v["data"] {
                    causes.push((
                        "data".into(),
                        "Forbidden: field is immutable when `immutable` is set".into(),
                    ));
                }
            }
            let mut v = v;
            if v["type"].is_null() {
                v["type"] = Value::String("Opaque".into());
            }
            v
        }
        "Namespace" => roundtrip::<Namespace>(rt, name, obj)?,
        "ServiceAccount" => roundtrip::<ServiceAccount>(rt, name, obj)?,
        "ConfigMap" => roundtrip::<ConfigMap>(rt, name, obj)?,
        "Node" => roundtrip::<Node>(rt, name, obj)?,
        "Deployment" => roundtrip::<Deployment>(rt, name, obj)?,
        "StatefulSet" => roundtrip::<StatefulSet>(rt, name, obj)?,
        "DaemonSet" => roundtrip::<DaemonSet>(rt, name, obj)?,
        "Lease" => roundtrip::<Lease>(rt, name, obj)?,
        "Role" => roundtrip::<Role>(rt, name, obj)?,
        "ClusterRole" => roundtrip::<ClusterRole>(rt, name, obj)?,
        "RoleBinding" => roundtrip::<RoleBinding>(rt, name, obj)?,
        "ClusterRoleBinding" => roundtrip::<ClusterRoleBinding>(rt, name, obj)?,
        "CertificateSigningRequest" => {
            let v = roundtrip::<CertificateSigningRequest>(rt, name, obj)?;
            let signer = v["spec"]["signerName"].as_str().unwrap_or("");
            if signer.is_empty() || !signer.contains('/') {
                causes.push(("spec.signerName".into(), format!("Invalid value: \"{signer}\": must be a fully qualified domain and path of the form 'example.com/signer-name'")));
            }
            let req = v["spec"]["request"]
                .as_str()
                .and_then(|b| STANDARD.decode(b).ok())
                .unwrap_or_default();
            if !String::from_utf8_lossy(&req).contains("-----BEGIN CERTIFICATE REQUEST-----") {
                causes.push((
                    "spec.request".into(),
                    "Invalid value: []byte{...}: PEM block type must be CERTIFICATE REQUEST".into(),
                ));
            }
            let usages: Vec<&str> = v["spec"]["usages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str())
                .collect();
            if usages.is_empty() {
                causes.push((
                    "spec.usages".into(),
                    "Required value: usages must be provided".into(),
                ));
            }
            for (i, u) in usages.iter().enumerate() {
                if !super::signer::KNOWN_USAGES.contains(u) {
                    causes.push((
                        format!("spec.usages[{i}]"),
                        format!("Unsupported value: \"{u}\""),
                    ));
                } else if usages[..i].contains(u) {
                    causes.push((
                        format!("spec.usages[{i}]"),
                        format!("Duplicate value: \"{u}\""),
                    ));
                }
            }
            if let Some(exp) = v["spec"]["expirationSeconds"].as_i64()
                && exp < 600
            {
                causes.push((
                    "spec.expirationSeconds".into(),
                    format!("Invalid value: {exp}: may not specify a duration less than 600 seconds (10 minutes)"),
                ));
            }
            v
        }
        other => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{other} cannot be stored"),
            ));
        }
    };
    if rt.kind == "Deployment" || rt.kind == "StatefulSet" || rt.kind == "DaemonSet" {
        let sel = &v["spec"]["selector"]["matchLabels"];
        let labels = &v["spec"]["template"]["metadata"]["labels"];
        if let Some(m) = sel.as_object()
            && m.iter().any(|(k, val)| labels.get(k) != Some(val))
        {
            causes.push((
                "spec.template.metadata.labels".into(),
                "Invalid value: `selector` does not match template `labels`".into(),
            ));
        }
    }
    if causes.is_empty() {
        Ok(v)
    } else {
        Err(ApiError::invalid(rt, name, &causes))
    }
}
