//! The stand-in's etcd storage mode: Secrets and ConfigMaps kept in a real
//! etcd, stored exactly as the API server's storage stores them.
//!
//! ```text
//!  handler ──► storage::dispatch ──► Coders (Python k8s_encrypt.py --serve, a small pool)
//!                   │                   encode: object → k8s\x00 protobuf → write transformer
//!                   │                   decode: every transformer whose prefix matches, in order
//!                   ▼
//!              etcd (etcd-client): /registry/<resource>/<namespace>/<name>,
//!              resourceVersion = the key's mod revision, writes guarded by it (txn)
//! ```
//!
//! The encoding is the independent encoder's (`integration/scripts/k8s_encrypt.py`),
//! never rekey's: what rekey scans, decrypts and migrates in these tests is
//! what an API server would have written. Reads open a value with any
//! configured transformer (a value opened by any but the first is *stale*);
//! writes always use the current write transformer. An update whose object
//! is unchanged and whose stored value is not stale writes nothing (the API
//! server's `GuaranteedUpdate` short cut), so the storage-migration
//! procedure (a GET and an unchanged PUT) rewrites exactly the stale values.
//!
//! [`KubeStandIn::set_encryption_config`](super::KubeStandIn::set_encryption_config)
//! swaps the EncryptionConfiguration, as restarting the API servers with a
//! new `--encryption-provider-config` does. Watches of these two resources
//! are not served in this mode; every other resource stays in memory.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    body::Bytes,
    http::{HeaderMap, Method},
    response::Response,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde_json::{Value, json};

use super::{
    handlers::{Target, check_kind, labels_of, parse_body, respond, selectors},
    store::{ApiError, ResourceType, timestamp},
    validate,
};

/// The resources kept in etcd in this mode.
pub const STORED: &[&str] = &["secrets", "configmaps"];

/// How to start the storage mode.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// etcd client URL (plain HTTP), e.g. `http://127.0.0.1:2379`.
    pub endpoint: String,
    /// The EncryptionConfiguration the "API server" runs with.
    pub encryption_config: PathBuf,
    /// Encoder processes (each serves one request at a time).
    pub coders: usize,
}

impl StorageOptions {
    /// Storage in the etcd at `endpoint` under `encryption_config`.
    pub fn new(endpoint: &str, encryption_config: &Path) -> Self {
        Self {
            endpoint: endpoint.into(),
            encryption_config: encryption_config.into(),
            coders: 4,
        }
    }
}

/// One encoder process.
struct Coder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Coder {
    fn start() -> Self {
        let mut child = Command::new(crate::k8s_values::python())
            .arg(crate::k8s_values::script())
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the independent encoder (python k8s_encrypt.py --serve)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, request: &Value) -> Value {
        let mut line = serde_json::to_vec(request).expect("json");
        line.push(b'\n');
        self.stdin.write_all(&line).expect("writing to the encoder");
        self.stdin.flush().expect("flushing the encoder's input");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("reading the encoder");
        assert!(
            !answer.is_empty(),
            "the independent encoder exited (are `cryptography` and `pynacl` installed?)"
        );
        serde_json::from_str(&answer).expect("the encoder answers JSON")
    }
}

impl Drop for Coder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pool of encoder processes, all configured alike.
struct Coders {
    pool: Vec<Mutex<Coder>>,
    next: AtomicUsize,
}

impl Coders {
    fn call(&self, request: &Value) -> Value {
        let n = self.pool.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(mut c) = self.pool[(start + i) % n].try_lock() {
                return c.call(request);
            }
        }
        self.pool[start % n].lock().expect("coder").call(request)
    }

    fn configure(&self, resources: &Value) {
        for c in &self.pool {
            let answer = c
                .lock()
                .expect("coder")
                .call(&json!({"op": "configure", "resources": resources}));
            assert_eq!(answer["ok"], true, "configuring the encoder: {answer}");
        }
    }
}

/// Transformers (the encoder's `T` objects) per stored resource, in the API
/// server's order, from an EncryptionConfiguration file. Parsed here, not
/// by rekey: rules naming the resource, else `*.` (the core group), else `*.*`.
pub fn transformers(config_yaml: &str) -> Result<Value, String> {
    let doc: Value = serde_saphyr::from_str(config_yaml).map_err(|e| e.to_string())?;
    let rules = doc["resources"].as_array().cloned().unwrap_or_default();
    let mut out = serde_json::Map::new();
    for resource in STORED {
        let mut found = Vec::new();
        for wanted in [*resource, "*.", "*.*"] {
            for rule in &rules {
                let names = rule["resources"].as_array().cloned().unwrap_or_default();
                if names.iter().any(|n| n.as_str() == Some(wanted)) {
                    for p in rule["providers"].as_array().cloned().unwrap_or_default() {
                        found.extend(provider_transformers(&p)?);
                    }
                }
            }
            if !found.is_empty() {
                break;
            }
        }
        if found.is_empty() {
            found.push(json!({"format": "identity"}));
        }
        out.insert((*resource).into(), Value::Array(found));
    }
    Ok(Value::Object(out))
}

fn provider_transformers(p: &Value) -> Result<Vec<Value>, String> {
    let obj = p.as_object().ok_or("a provider is not a map")?;
    let (kind, body) = obj.iter().next().ok_or("an empty provider")?;
    Ok(match kind.as_str() {
        "identity" => vec![json!({"format": "identity"})],
        "kms" => vec![json!({
            "format": if body["apiVersion"].as_str() == Some("v2") { "kms-v2" } else { "kms-v1" },
            "key_name": body["name"],
        })],
        "aescbc" | "aesgcm" | "secretbox" => body["keys"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|k| json!({"format": kind, "key_name": k["name"], "secret": k["secret"]}))
            .collect(),
        other => return Err(format!("unknown provider `{other}`")),
    })
}

/// A value as read from etcd.
struct Stored {
    object: Value,
    plain: String,
    stale: bool,
    mod_revision: i64,
}

/// Secrets and ConfigMaps in etcd.
pub struct EtcdStorage {
    client: etcd_client::Client,
    coders: Arc<Coders>,
    /// The configuration file in force (for error messages).
    config: Mutex<PathBuf>,
}

impl EtcdStorage {
    /// Connects to etcd and starts the encoders with `opts.encryption_config`.
    pub async fn start(opts: &StorageOptions) -> Result<Self, String> {
        let client = etcd_client::Client::connect([opts.endpoint.as_str()], None)
            .await
            .map_err(|e| format!("etcd at {}: {e}", opts.endpoint))?;
        let coders = Arc::new(Coders {
            pool: (0..opts.coders.max(1))
                .map(|_| Mutex::new(Coder::start()))
                .collect(),
            next: AtomicUsize::new(0),
        });
        let me = Self {
            client,
            coders,
            config: Mutex::new(opts.encryption_config.clone()),
        };
        me.set_encryption_config(&opts.encryption_config)?;
        Ok(me)
    }

    /// Reads, parses and applies an EncryptionConfiguration file.
    pub fn set_encryption_config(&self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let t = transformers(&text)?;
        self.coders.configure(&t);
        *self.config.lock().expect("config") = path.to_path_buf();
        Ok(())
    }

    /// Whether this resource is kept in etcd.
    pub fn serves(&self, rt: &ResourceType) -> bool {
        rt.group.is_empty() && STORED.contains(&rt.resource)
    }

    async fn coder(&self, request: Value) -> Value {
        let coders = self.coders.clone();
        tokio::task::spawn_blocking(move || coders.call(&request))
            .await
            .expect("encoder task")
    }

    fn key(rt: &ResourceType, ns: &str, name: &str) -> String {
        format!("/registry/{}/{ns}/{name}", rt.resource)
    }

    async fn decode(&self, rt: &ResourceType, key: &str, value: &[u8]) -> Result<Stored, ApiError> {
        let answer = self
            .coder(
                json!({"op": "decode", "resource": rt.resource, "etcd_key": key,
                           "value": STANDARD.encode(value)}),
            )
            .await;
        if let Some(e) = answer["error"].as_str() {
            return Err(ApiError::new(
                500,
                "InternalError",
                format!("Internal error occurred: unable to transform key \"{key}\": {e}"),
            ));
        }
        Ok(Stored {
            object: answer["object"].clone(),
            plain: answer["plain"].as_str().unwrap_or("").to_string(),
            stale: answer["stale"].as_bool().unwrap_or(false),
            mod_revision: 0,
        })
    }

    async fn encode(
        &self,
        rt: &ResourceType,
        key: &str,
        obj: &Value,
    ) -> Result<(Vec<u8>, String), ApiError> {
        let answer = self
            .coder(json!({"op": "encode", "resource": rt.resource, "etcd_key": key, "object": obj}))
            .await;
        if let Some(e) = answer["error"].as_str() {
            return Err(ApiError::new(
                500,
                "InternalError",
                format!("Internal error occurred: {e}"),
            ));
        }
        let value = STANDARD
            .decode(answer["value"].as_str().unwrap_or(""))
            .expect("base64 from the encoder");
        Ok((value, answer["plain"].as_str().unwrap_or("").to_string()))
    }

    async fn read(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
    ) -> Result<Option<Stored>, ApiError> {
        let key = Self::key(rt, ns, name);
        let resp = self
            .client
            .kv_client()
            .get(key.as_str(), None)
            .await
            .map_err(etcd_error)?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let mut st = self.decode(rt, &key, kv.value()).await?;
        st.mod_revision = kv.mod_revision();
        with_rv(&mut st.object, st.mod_revision);
        Ok(Some(st))
    }

    async fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.read(rt, ns, name)
            .await?
            .map(|s| s.object)
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    async fn list(&self, t: &Target, query: &HashMap<String, String>) -> Result<Value, ApiError> {
        let (ls, fs) = selectors(t, query)?;
        let prefix = if t.namespace.is_empty() {
            format!("/registry/{}/", t.rt.resource)
        } else {
            format!("/registry/{}/{}/", t.rt.resource, t.namespace)
        };
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let start = match query.get("continue").filter(|c| !c.is_empty()) {
            None => prefix.clone(),
            Some(c) => {
                let after = STANDARD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|k| k.starts_with(&prefix))
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                format!("{after}\0")
            }
        };
        let end = prefix_end(&prefix);
        let mut kv = self.client.kv_client();
        let mut items = Vec::new();
        let mut cursor = start;
        let mut revision = 0i64;
        let mut last_key = None;
        let mut more = false;
        'pages: loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(500);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let mut resp = kv
                .get(cursor.as_str(), Some(opts))
                .await
                .map_err(etcd_error)?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let page_more = resp.more();
            let kvs = resp.take_kvs();
            for (i, pair) in kvs.iter().enumerate() {
                let key = String::from_utf8_lossy(pair.key()).into_owned();
                let mut st = self.decode(&t.rt, &key, pair.value()).await?;
                with_rv(&mut st.object, pair.mod_revision());
                if ls.matches(&labels_of(&st.object)) && fs.matches(&st.object) {
                    if items.len() == limit {
                        more = true;
                        break 'pages;
                    }
                    items.push(st.object);
                    last_key = Some(key.clone());
                }
                if i + 1 == kvs.len() {
                    cursor = format!("{key}\0");
                }
            }
            if !page_more || kvs.is_empty() {
                break;
            }
        }
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if more && let Some(k) = last_key {
            metadata["continue"] = json!(STANDARD.encode(k.as_bytes()));
        }
        Ok(
            json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(),
                  "metadata": metadata, "items": items}),
        )
    }

    async fn create(&self, rt: &ResourceType, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = Self::key(rt, ns, &name);
        obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        obj["metadata"]["creationTimestamp"] = json!(timestamp());
        obj["metadata"]["namespace"] = json!(ns);
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let (value, _) = self.encode(rt, &key, &obj).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(etcd_error)?;
        if !resp.succeeded() {
            return Err(ApiError::already_exists(rt, &name));
        }
        with_rv(&mut obj, resp.header().map(|h| h.revision()).unwrap_or(0));
        Ok(obj)
    }

    /// `GuaranteedUpdate`: `change` turns the current object into the new
    /// one; the write is guarded by the mod revision read.
    async fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        change: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, ns, name);
        loop {
            let old = self
                .read(rt, ns, name)
                .await?
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            let mut new = change(&old.object)?;
            let want_rv = new["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if !want_rv.is_empty() && want_rv != old.mod_revision.to_string() {
                return Err(ApiError::conflict(rt, name));
            }
            if new["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| Some(u) != old.object["metadata"]["uid"].as_str())
            {
                return Err(ApiError::conflict(rt, name));
            }
            let meta = &mut new["metadata"];
            meta["uid"] = old.object["metadata"]["uid"].clone();
            meta["creationTimestamp"] = old.object["metadata"]["creationTimestamp"].clone();
            meta["namespace"] = json!(ns);
            meta["name"] = json!(name);
            if let Some(m) = meta.as_object_mut() {
                m.remove("resourceVersion");
            }
            new["apiVersion"] = json!(rt.api_version());
            new["kind"] = json!(rt.kind);
            let (value, plain) = self.encode(rt, &key, &new).await?;
            if !old.stale && plain == old.plain {
                // Nothing changed and the value is under the write key: no write.
                return Ok(old.object);
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    old.mod_revision,
                )])
                .and_then([TxnOp::put(key.as_str(), value, None)]);
            let resp = self.client.kv_client().txn(txn).await.map_err(etcd_error)?;
            if resp.succeeded() {
                with_rv(&mut new, resp.header().map(|h| h.revision()).unwrap_or(0));
                return Ok(new);
            }
            if !want_rv.is_empty() {
                return Err(ApiError::conflict(rt, name));
            }
        }
    }

    async fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        pre_uid: Option<&str>,
        pre_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let key = Self::key(rt, ns, name);
        let old = self
            .read(rt, ns, name)
            .await?
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if pre_uid.is_some_and(|u| Some(u) != old.object["metadata"]["uid"].as_str())
            || pre_rv.is_some_and(|r| r != old.mod_revision.to_string())
        {
            return Err(ApiError::conflict(rt, name));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                old.mod_revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(etcd_error)?;
        if !resp.succeeded() {
            return Err(ApiError::conflict(rt, name));
        }
        Ok(old.object)
    }
}

fn with_rv(obj: &mut Value, rv: i64) {
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
}

fn etcd_error(e: etcd_client::Error) -> ApiError {
    ApiError::new(
        500,
        "InternalError",
        format!("Internal error occurred: etcd: {e}"),
    )
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Serves a request for a stored resource.
pub(crate) async fn dispatch(
    st: &EtcdStorage,
    method: &Method,
    t: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    watch: bool,
) -> Result<Response, ApiError> {
    let rt = &t.rt;
    match (method.as_str(), &t.name, t.sub.as_deref()) {
        (_, _, Some(sub)) => Err(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({sub})"),
        )),
        ("GET", _, None) if watch => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "watch is not served in the stand-in's etcd storage mode",
        )),
        ("GET", Some(name), None) => st
            .get(rt, &t.namespace, name)
            .await
            .map(|v| respond(200, &v)),
        ("GET", None, None) => st.list(t, query).await.map(|v| respond(200, &v)),
        ("POST", None, None) => {
            let obj = parse_body(body)?;
            check_kind(rt, &obj)?;
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            if name.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
            let obj = validate::validate(rt, &name, obj, None)?;
            st.create(rt, &t.namespace, obj)
                .await
                .map(|v| respond(201, &v))
        }
        ("PUT", Some(name), None) => {
            let obj = parse_body(body)?;
            check_kind(rt, &obj)?;
            if obj["metadata"]["name"].as_str() != Some(name.as_str()) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            st.update(rt, &t.namespace, name, |old| {
                validate::validate(rt, name, obj.clone(), Some(old))
            })
            .await
            .map(|v| respond(200, &v))
        }
        ("PATCH", Some(name), None) => {
            let ct = headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .to_string();
            let patch = parse_body(body)?;
            st.update(rt, &t.namespace, name, |old| {
                let mut doc = old.clone();
                match ct.as_str() {
                    "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                        json_patch::merge(&mut doc, &patch)
                    }
                    "application/json-patch+json" => {
                        let p: json_patch::Patch =
                            serde_json::from_value(patch.clone()).map_err(|e| {
                                ApiError::bad_request(format!("invalid JSON patch: {e}"))
                            })?;
                        json_patch::patch(&mut doc, &p)
                            .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
                    }
                    other => {
                        return Err(ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            format!(
                                "the body of the request was in an unknown format (got `{other}`)"
                            ),
                        ));
                    }
                }
                validate::validate(rt, name, doc, Some(old))
            })
            .await
            .map(|v| respond(200, &v))
        }
        ("DELETE", Some(name), None) => {
            let opts: Value = if body.is_empty() {
                json!({})
            } else {
                parse_body(body)?
            };
            let gone = st
                .delete(
                    rt,
                    &t.namespace,
                    name,
                    opts["preconditions"]["uid"].as_str(),
                    opts["preconditions"]["resourceVersion"].as_str(),
                )
                .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformers_follow_the_api_servers_rule_order() {
        let yaml = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [configmaps]\n    providers:\n      - identity: {}\n  - resources: ['*.*']\n    providers:\n      - aesgcm:\n          keys:\n            - {name: a, secret: AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=}\n            - {name: b, secret: AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=}\n      - identity: {}\n";
        let t = transformers(yaml).unwrap();
        assert_eq!(t["configmaps"], json!([{"format": "identity"}]));
        let s = t["secrets"].as_array().unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0]["key_name"], "a");
        assert_eq!(s[2]["format"], "identity");
    }
}
