//! The HTTP surface: paths, verbs, authentication, faults, RBAC, then the
//! operation (CRUD, patch, watch, subresources, reviews).

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{
    Fault, FaultKind, RequestRecord, Shared,
    auth::{API_AUDIENCE, ISSUER, KubernetesClaims, ObjRef, SaClaims, UserInfo},
    rbac::{self, Attributes},
    selector::{FieldSelector, LabelSelector},
    store::{ApiError, ResourceType, World, resource_type, timestamp},
    validate,
};

/// Where a request points.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub rt: ResourceType,
    pub namespace: String,
    pub name: Option<String>,
    pub sub: Option<String>,
}

fn parse_path(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, tail @ ..] => (ns.to_string(), [&[*r][..], tail].concat()),
        _ => (String::new(), rest.to_vec()),
    };
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let (resource, name, sub) = match rest.as_slice() {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(not_found()),
    };
    let rt = resource_type(group, version, resource).ok_or_else(not_found)?;
    if rt.namespaced == namespace.is_empty()
        && !(rt.namespaced && namespace.is_empty() && name.is_none())
    {
        return Err(not_found());
    }
    Ok(Target {
        rt,
        namespace,
        name,
        sub,
    })
}

pub(crate) fn respond(code: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).expect("json"),
    )
        .into_response()
}

fn error(e: &ApiError) -> Response {
    let mut r = respond(e.code, &e.status());
    if e.code == 429 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, "1".parse().expect("header"));
    }
    r
}

fn verb_of(method: &Method, t: &Target, watch: bool) -> &'static str {
    match (method.as_str(), t.name.is_some()) {
        ("GET", true) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// The single entry point (axum fallback).
pub(crate) async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let user = match s.authenticate(token) {
        Ok(u) => u,
        Err(msg) => {
            tracing::debug!(%msg, "stand-in: unauthenticated request");
            return error(&ApiError::new(401, "Unauthorized", "Unauthorized"));
        }
    };
    if matches!(
        path.as_str(),
        "/version" | "/healthz" | "/readyz" | "/livez"
    ) {
        return if path == "/version" {
            respond(
                200,
                &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-rekey-standin", "platform": "linux/amd64"}),
            )
        } else {
            (StatusCode::OK, "ok").into_response()
        };
    }
    let target = match parse_path(&path) {
        Ok(t) => t,
        Err(e) => return error(&e),
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = verb_of(&method, &target, watch);
    let attrs = Attributes {
        verb: verb.into(),
        group: target.rt.group.into(),
        resource: target.rt.resource.into(),
        subresource: target.sub.clone().unwrap_or_default(),
        namespace: target.namespace.clone(),
        name: target.name.clone().unwrap_or_default(),
        path: None,
    };
    let mut record = RequestRecord {
        user: user.username.clone(),
        verb: verb.into(),
        group: target.rt.group.into(),
        resource: target.rt.resource.into(),
        subresource: attrs.subresource.clone(),
        namespace: target.namespace.clone(),
        name: attrs.name.clone(),
        code: 0,
        fault: false,
    };
    let mut fault = s.take_fault(&user, &attrs);
    if let Some(Fault {
        kind: FaultKind::Delay(d),
        ..
    }) = fault
    {
        tokio::time::sleep(d).await;
        fault = None;
    }
    let resp = match fault {
        Some(f) => {
            record.fault = true;
            fault_response(&target, &f).await
        }
        None => {
            let (allowed, perms) = {
                let w = s.world.lock().expect("world");
                rbac::authorize(&w, &user, &attrs)
            };
            if !allowed {
                let e = forbidden(&user, &attrs);
                s.denied.lock().expect("denied").push(RequestRecord {
                    code: 403,
                    ..record.clone()
                });
                error(&e)
            } else {
                s.used.lock().expect("used").extend(perms);
                match dispatch(&s, &method, &target, &query, &headers, &body, &user, watch).await {
                    Ok(r) => r,
                    Err(e) => error(&e),
                }
            }
        }
    };
    record.code = resp.status().as_u16();
    s.log.lock().expect("log").push(record);
    resp
}

async fn fault_response(t: &Target, f: &Fault) -> Response {
    let name = t.name.clone().unwrap_or_default();
    match f.kind {
        FaultKind::Status(409) => error(&ApiError::conflict(&t.rt, &name)),
        FaultKind::Status(429) => error(&ApiError::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        )),
        FaultKind::Status(503) => error(&ApiError::new(
            503,
            "ServiceUnavailable",
            "The server is currently unable to handle the request",
        )),
        FaultKind::Status(code) => error(&ApiError::new(
            code,
            "InternalError",
            "Internal error occurred: injected fault",
        )),
        FaultKind::Delay(_) => unreachable!("a delay is served as usual"),
        FaultKind::Timeout(d) => {
            tokio::time::sleep(d).await;
            error(&ApiError::new(
                504,
                "Timeout",
                "Timeout: request did not complete within the allowed duration",
            ))
        }
    }
}

fn forbidden(user: &UserInfo, a: &Attributes) -> ApiError {
    let res = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let qual = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let what = if a.name.is_empty() {
        qual
    } else {
        format!("{qual} \"{}\"", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let mut e = ApiError::new(
        403,
        "Forbidden",
        format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
            user.username, a.verb, a.group
        ),
    );
    e.details = Some(json!({"name": a.name, "group": a.group, "kind": a.resource}));
    e
}

pub(crate) fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format: {e}"
        ))
    })
}

fn ns_exists(w: &World, ns: &str) -> bool {
    let rt = resource_type("", "v1", "namespaces").expect("namespaces");
    w.get(&rt, "", ns).is_some()
}

/// Kinds whose status only a subresource changes.
fn has_status_subresource(kind: &str) -> bool {
    matches!(
        kind,
        "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "CertificateSigningRequest"
            | "Node"
            | "Namespace"
    )
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    s: &Arc<Shared>,
    method: &Method,
    t: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    user: &UserInfo,
    watch: bool,
) -> Result<Response, ApiError> {
    let rt = &t.rt;
    if let Some(st) = s.storage.get().filter(|st| st.serves(rt)) {
        return super::storage::dispatch(st, method, t, query, headers, body, watch).await;
    }
    if rt.virtual_only {
        if method != Method::POST || t.name.is_some() {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{} only supports create", rt.kind),
            ));
        }
        let review = parse_body(body)?;
        return Ok(match rt.kind {
            "TokenReview" => respond(201, &s.token_review(review)),
            "SelfSubjectAccessReview" => respond(201, &s.self_subject_access_review(review, user)),
            _ => respond(201, &s.subject_access_review(review)),
        });
    }
    match (method.as_str(), &t.name, t.sub.as_deref()) {
        ("POST", Some(name), Some("token")) if rt.resource == "serviceaccounts" => {
            let req = parse_body(body)?;
            s.token_request(&t.namespace, name, req)
                .map(|v| respond(201, &v))
        }
        (_, Some(_), Some(sub))
            if rt.kind == "CertificateSigningRequest" && matches!(sub, "approval" | "status") =>
        {
            csr_subresource(s, method, t, sub, body, user)
        }
        (_, Some(_), Some(sub)) => Err(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({sub})"),
        )),
        ("GET", Some(name), None) if !watch => {
            let w = s.world.lock().expect("world");
            w.get(rt, &t.namespace, name)
                .map(|v| respond(200, v))
                .ok_or_else(|| ApiError::not_found(rt, name))
        }
        ("GET", _, None) if watch => watch_response(s, t, query),
        ("GET", None, None) => list(s, t, query, headers),
        ("POST", None, None) => {
            let mut obj = parse_body(body)?;
            check_kind(rt, &obj)?;
            let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            if name.is_empty() {
                if let Some(prefix) = obj["metadata"]["generateName"].as_str() {
                    name = format!("{prefix}{}", random_suffix());
                    obj["metadata"]["name"] = json!(name);
                } else {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        &[(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            }
            if let Some(ns) = obj["metadata"]["namespace"].as_str()
                && !ns.is_empty()
                && rt.namespaced
                && ns != t.namespace
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let mut obj = validate::validate(rt, &name, obj, None)?;
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
                m.remove("uid");
            }
            if rt.kind == "CertificateSigningRequest" {
                obj["spec"]["username"] = json!(user.username);
                obj["spec"]["uid"] = json!(user.uid);
                obj["spec"]["groups"] = json!(user.groups);
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
            let mut w = s.world.lock().expect("world");
            if rt.namespaced && !ns_exists(&w, &t.namespace) {
                return Err(ApiError::not_found(
                    &resource_type("", "v1", "namespaces").expect("ns"),
                    &t.namespace,
                ));
            }
            w.create(rt, &t.namespace, obj).map(|v| respond(201, &v))
        }
        ("PUT", Some(name), None) => {
            let obj = parse_body(body)?;
            check_kind(rt, &obj)?;
            if obj["metadata"]["name"].as_str() != Some(name.as_str()) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            let mut w = s.world.lock().expect("world");
            let old = w
                .get(rt, &t.namespace, name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            let obj = keep_server_fields(rt, &old, validate::validate(rt, name, obj, Some(&old))?);
            w.replace(rt, &t.namespace, name, obj)
                .map(|v| respond(200, &v))
        }
        ("PATCH", Some(name), None) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let patch = parse_body(body)?;
            let mut w = s.world.lock().expect("world");
            let old = w
                .get(rt, &t.namespace, name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            let mut doc = old.clone();
            match ct.split(';').next().unwrap_or("") {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    // Strategic merge equals merge patch for maps; rekey patches only maps.
                    json_patch::merge(&mut doc, &patch);
                }
                "application/json-patch+json" => {
                    let p: json_patch::Patch = serde_json::from_value(patch)
                        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                    json_patch::patch(&mut doc, &p).map_err(|e| ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}")))?;
                }
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got `{other}`)"
                        ),
                    ));
                }
            }
            let obj = keep_server_fields(rt, &old, validate::validate(rt, name, doc, Some(&old))?);
            w.replace(rt, &t.namespace, name, obj)
                .map(|v| respond(200, &v))
        }
        ("DELETE", Some(name), None) => {
            let opts: Value = if body.is_empty() {
                json!({})
            } else {
                parse_body(body)?
            };
            let pre_uid = opts["preconditions"]["uid"].as_str();
            let pre_rv = opts["preconditions"]["resourceVersion"].as_str();
            let mut w = s.world.lock().expect("world");
            let gone = w.delete(rt, &t.namespace, name, pre_uid, pre_rv)?;
            Ok(respond(
                200,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": rt.group, "kind": rt.resource, "uid": gone["metadata"]["uid"]},
                }),
            ))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )),
    }
}

pub(crate) fn check_kind(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if let Some(k) = obj["kind"].as_str()
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind `{k}` of the body does not match {}",
            rt.kind
        )));
    }
    if !obj["metadata"].is_object() && !obj["metadata"].is_null() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// On update, fields only the server (or a subresource) sets are kept.
fn keep_server_fields(rt: &ResourceType, old: &Value, mut new: Value) -> Value {
    if has_status_subresource(rt.kind) {
        match old.get("status") {
            Some(st) => new["status"] = st.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    if rt.kind == "CertificateSigningRequest" {
        for f in ["username", "uid", "groups", "extra"] {
            new["spec"][f] = old["spec"][f].clone();
        }
    }
    new
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::rng();
    (0..5)
        .map(|_| CHARS[r.random_range(0..CHARS.len())] as char)
        .collect()
}

fn csr_subresource(
    s: &Arc<Shared>,
    method: &Method,
    t: &Target,
    sub: &str,
    body: &Bytes,
    user: &UserInfo,
) -> Result<Response, ApiError> {
    let rt = &t.rt;
    let name = t.name.as_deref().unwrap_or("");
    let mut w = s.world.lock().expect("world");
    let old = w
        .get(rt, "", name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if method == Method::GET {
        return Ok(respond(200, &old));
    }
    if method != Method::PUT {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} {sub} is not supported by the stand-in"),
        ));
    }
    let body = parse_body(body)?;
    let want_rv = body["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !want_rv.is_empty() && Some(want_rv) != old["metadata"]["resourceVersion"].as_str() {
        return Err(ApiError::conflict(rt, name));
    }
    let mut new = old.clone();
    let conds: Vec<Value> = body["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let types: Vec<&str> = conds.iter().filter_map(|c| c["type"].as_str()).collect();
    if types.contains(&"Approved") && types.contains(&"Denied") {
        return Err(ApiError::invalid(rt, name, &[("status.conditions".into(), "Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive".into())]));
    }
    let old_conds: Vec<Value> = old["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if sub == "approval" {
        // The CertificateApproval admission plugin: setting Approved or
        // Denied needs `approve` on the signer (by name or `<domain>/*`).
        let decides = types.iter().any(|t| matches!(*t, "Approved" | "Denied"));
        let signer = old["spec"]["signerName"].as_str().unwrap_or("").to_string();
        if decides {
            let mut names = vec![signer.clone()];
            if let Some((domain, _)) = signer.split_once('/') {
                names.push(format!("{domain}/*"));
            }
            let granted: Vec<rbac::Permission> = names
                .into_iter()
                .flat_map(|n| {
                    let a = Attributes {
                        verb: "approve".into(),
                        group: "certificates.k8s.io".into(),
                        resource: "signers".into(),
                        name: n,
                        ..Default::default()
                    };
                    let (ok, perms) = rbac::authorize(&w, user, &a);
                    // system:masters is allowed without a permission.
                    if ok && perms.is_empty() {
                        vec![rbac::Permission {
                            role_kind: String::new(),
                            role_namespace: String::new(),
                            role: "system:masters".into(),
                            rule: 0,
                            group: String::new(),
                            resource: String::new(),
                            verb: String::new(),
                        }]
                    } else {
                        perms
                    }
                })
                .collect();
            if granted.is_empty() {
                return Err(super::signer::approval_forbidden(name, &signer));
            }
            s.used
                .lock()
                .expect("used")
                .extend(granted.into_iter().filter(|p| !p.role_kind.is_empty()));
        }
        new["status"]["conditions"] = json!(conds);
    } else {
        // status: the certificate and non-approval conditions; approval conditions stay.
        let mut merged: Vec<Value> = old_conds
            .iter()
            .filter(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied")))
            .cloned()
            .collect();
        merged.extend(
            conds
                .into_iter()
                .filter(|c| !matches!(c["type"].as_str(), Some("Approved" | "Denied"))),
        );
        new["status"]["conditions"] = json!(merged);
        if let Some(c) = body["status"].get("certificate") {
            new["status"]["certificate"] = c.clone();
        }
    }
    if let Some(cs) = new["status"]["conditions"].as_array_mut() {
        for c in cs.iter_mut() {
            if c["lastUpdateTime"].is_null() {
                c["lastUpdateTime"] = json!(timestamp());
            }
            if c["status"].is_null() {
                c["status"] = json!("True");
            }
        }
    }
    let new = validate::validate(rt, name, new, Some(&old))?;
    w.replace(rt, "", name, new).map(|v| respond(200, &v))
}

pub(crate) fn selectors(
    t: &Target,
    query: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let mut fs = FieldSelector::parse(
        query.get("fieldSelector").map(String::as_str).unwrap_or(""),
        &t.rt.field_paths(),
    )
    .map_err(ApiError::bad_request)?;
    if let Some(name) = &t.name {
        fs.0.push(("metadata.name".into(), true, name.clone()));
    }
    Ok((ls, fs))
}

pub(crate) fn labels_of(obj: &Value) -> std::collections::BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn metadata_only(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

fn list(
    s: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(t, query)?;
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let start_after: Option<(String, String)> =
        match query.get("continue").filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => {
                let raw = STANDARD
                    .decode(c)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<(String, String)>(&b).ok());
                Some(raw.ok_or_else(|| ApiError::bad_request("continue key is not valid"))?)
            }
        };
    let meta_only = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadataList"));
    let w = s.world.lock().expect("world");
    let ns = (!t.namespace.is_empty()).then_some(t.namespace.as_str());
    let all: Vec<&Value> = w
        .list(&t.rt, ns)
        .into_iter()
        .filter(|o| ls.matches(&labels_of(o)) && fs.matches(o))
        .filter(|o| {
            let key = (
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                o["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            start_after.as_ref().is_none_or(|after| key > *after)
        })
        .collect();
    let page: Vec<Value> = all
        .iter()
        .take(limit)
        .map(|o| {
            if meta_only {
                metadata_only(o)
            } else {
                (*o).clone()
            }
        })
        .collect();
    let remaining = all.len().saturating_sub(page.len());
    let mut metadata = json!({"resourceVersion": w.resource_version().to_string()});
    if remaining > 0
        && let Some(last) = page.last()
    {
        let key = (
            last["metadata"]["namespace"].as_str().unwrap_or(""),
            last["metadata"]["name"].as_str().unwrap_or(""),
        );
        metadata["continue"] = json!(STANDARD.encode(serde_json::to_vec(&key).expect("json")));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let (kind, api_version) = if meta_only {
        (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        )
    } else {
        (format!("{}List", t.rt.kind), t.rt.api_version())
    };
    Ok(respond(
        200,
        &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": page}),
    ))
}

fn watch_response(
    s: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(t, query)?;
    let from: u64 = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => 0,
        Some(rv) => rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion `{rv}`")))?,
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let rt = t.rt;
    let ns = t.namespace.clone();
    let matches = move |o: &Value| {
        (ns.is_empty() || o["metadata"]["namespace"].as_str() == Some(ns.as_str()))
            && ls.matches(&labels_of(o))
            && fs.matches(o)
    };
    let (mut backlog, mut rx, current) = {
        let w = s.world.lock().expect("world");
        let current = w.resource_version();
        if from == 0 || initial {
            let objs: Vec<Value> = w
                .list(&rt, None)
                .into_iter()
                .filter(|o| matches(o))
                .cloned()
                .collect();
            let (_, rx) = w.subscribe_after(current);
            let mut objs = objs;
            objs.sort_by_key(|o| {
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|r| r.parse::<u64>().ok())
                    .unwrap_or(0)
            });
            (
                objs.into_iter()
                    .map(|o| json!({"type": "ADDED", "object": o}))
                    .collect::<Vec<_>>(),
                rx,
                current,
            )
        } else {
            let (evs, rx) = w.subscribe_after(from);
            let lines = evs
                .iter()
                .filter(|e| e.rt == rt && matches(&e.object))
                .map(|e| json!({"type": e.kind, "object": e.object}))
                .collect::<Vec<_>>();
            (lines, rx, current)
        }
    };
    if initial {
        backlog.push(json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": current.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}}));
    }
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let shared = s.clone();
    let mut down = s.down_rx();
    let interval = s.bookmark_interval;
    tokio::spawn(async move {
        let line = |v: &Value| {
            let mut b = serde_json::to_vec(v).expect("json");
            b.push(b'\n');
            Ok(Bytes::from(b))
        };
        for ev in &backlog {
            if tx.send(line(ev)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(e) => {
                        if e.rt == rt && matches(&e.object)
                            && tx.send(line(&json!({"type": e.kind, "object": e.object}))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError::new(410, "Expired", "too old resource version").status();
                        let _ = tx.send(line(&json!({"type": "ERROR", "object": gone}))).await;
                        return;
                    }
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let rv = shared.world.lock().expect("world").resource_version();
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}}});
                    if tx.send(line(&bm)).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = down.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("response"))
}

impl Shared {
    /// TokenRequest: validates like the real server and signs a JWT.
    pub(crate) fn token_request(
        &self,
        ns: &str,
        sa_name: &str,
        req: Value,
    ) -> Result<Value, ApiError> {
        let tr_rt = ResourceType {
            group: "authentication.k8s.io",
            version: "v1",
            resource: "tokenrequests",
            kind: "TokenRequest",
            namespaced: true,
            fields: &[],
            virtual_only: true,
        };
        let typed: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(req)
            .map_err(|e| ApiError::bad_request(format!("TokenRequest cannot be handled: {e}")))?;
        let spec = typed.spec.clone().unwrap_or_default();
        let exp = spec.expiration_seconds.unwrap_or(3600);
        if exp < 600 {
            return Err(ApiError::invalid(
                &tr_rt,
                "",
                &[(
                    "spec.expirationSeconds".into(),
                    format!(
                        "Invalid value: {exp}: may not specify a duration less than 10 minutes"
                    ),
                )],
            ));
        }
        if exp > 1 << 32 {
            return Err(ApiError::invalid(
                &tr_rt,
                "",
                &[(
                    "spec.expirationSeconds".into(),
                    format!(
                        "Invalid value: {exp}: may not specify a duration larger than 2^32 seconds"
                    ),
                )],
            ));
        }
        let w = self.world.lock().expect("world");
        let sa_rt = resource_type("", "v1", "serviceaccounts").expect("sa");
        let sa = w
            .get(&sa_rt, ns, sa_name)
            .ok_or_else(|| ApiError::not_found(&sa_rt, sa_name))?;
        let mut bound = None;
        if let Some(r) = &spec.bound_object_ref {
            if r.kind.as_deref() != Some("Secret")
                || r.api_version.as_deref().unwrap_or("v1") != "v1"
            {
                return Err(ApiError::invalid(
                    &tr_rt,
                    "",
                    &[(
                        "spec.boundObjectRef.kind".into(),
                        format!(
                            "Unsupported value: {:?}: the stand-in binds tokens to v1 Secrets only",
                            r.kind
                        ),
                    )],
                ));
            }
            let name = r.name.clone().unwrap_or_default();
            let secret_rt = resource_type("", "v1", "secrets").expect("secrets");
            let secret = w
                .get(&secret_rt, ns, &name)
                .ok_or_else(|| ApiError::not_found(&secret_rt, &name))?;
            let uid = secret["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if let Some(want) = r.uid.as_deref().filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            bound = Some(ObjRef { name, uid });
        }
        let audiences = spec
            .audiences
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| vec![API_AUDIENCE.to_string()]);
        let now = Utc::now();
        let exp_at = now + chrono::TimeDelta::seconds(exp);
        let claims = SaClaims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{ns}:{sa_name}"),
            aud: audiences.clone(),
            exp: exp_at.timestamp(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: KubernetesClaims {
                namespace: ns.into(),
                serviceaccount: ObjRef {
                    name: sa_name.into(),
                    uid: sa["metadata"]["uid"].as_str().unwrap_or("").into(),
                },
                secret: bound,
            },
        };
        drop(w);
        let token = self.auth.read().expect("auth").sign(&claims);
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": timestamp()},
            "spec": {"audiences": audiences, "expirationSeconds": exp, "boundObjectRef": spec.bound_object_ref},
            "status": {"token": token, "expirationTimestamp": exp_at.to_rfc3339_opts(SecondsFormat::Secs, true)},
        }))
    }

    /// TokenReview (authentication.k8s.io/v1).
    pub(crate) fn token_review(&self, review: Value) -> Value {
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let audiences: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let status = {
            let w = self.world.lock().expect("world");
            match self
                .auth
                .read()
                .expect("auth")
                .authenticate(&w, token, &audiences, Utc::now())
            {
                Ok((u, auds)) => json!({"authenticated": true, "user": u, "audiences": auds}),
                Err(e) => json!({"authenticated": false, "error": e}),
            }
        };
        json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {"creationTimestamp": null},
               "spec": {"audiences": audiences}, "status": status})
    }

    /// SubjectAccessReview (authorization.k8s.io/v1), answered from the stored RBAC.
    pub(crate) fn subject_access_review(&self, review: Value) -> Value {
        let spec = &review["spec"];
        let mut user = UserInfo::new(spec["user"].as_str().unwrap_or(""), &[]);
        user.groups = spec["groups"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        self.access_review(review, &user, "SubjectAccessReview")
    }

    /// SelfSubjectAccessReview: the same question for the caller itself.
    pub(crate) fn self_subject_access_review(&self, review: Value, user: &UserInfo) -> Value {
        self.access_review(review, user, "SelfSubjectAccessReview")
    }

    fn access_review(&self, review: Value, user: &UserInfo, kind: &str) -> Value {
        let spec = &review["spec"];
        let ra = &spec["resourceAttributes"];
        let nra = &spec["nonResourceAttributes"];
        let attrs = if nra.is_object() {
            Attributes {
                verb: nra["verb"].as_str().unwrap_or("").into(),
                path: Some(nra["path"].as_str().unwrap_or("").into()),
                ..Default::default()
            }
        } else {
            Attributes {
                verb: ra["verb"].as_str().unwrap_or("").into(),
                group: ra["group"].as_str().unwrap_or("").into(),
                resource: ra["resource"].as_str().unwrap_or("").into(),
                subresource: ra["subresource"].as_str().unwrap_or("").into(),
                namespace: ra["namespace"].as_str().unwrap_or("").into(),
                name: ra["name"].as_str().unwrap_or("").into(),
                path: None,
            }
        };
        let (allowed, perms) = {
            let w = self.world.lock().expect("world");
            rbac::authorize(&w, user, &attrs)
        };
        let reason = perms
            .first()
            .map(|p| format!("RBAC: allowed by {p}"))
            .unwrap_or_default();
        let mut out = review.clone();
        out["status"] = json!({"allowed": allowed, "reason": reason});
        out["kind"] = json!(kind);
        out["apiVersion"] = json!("authorization.k8s.io/v1");
        out
    }
}
