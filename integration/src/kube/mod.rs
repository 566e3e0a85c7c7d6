//! A Kubernetes API stand-in that the real `kube` client talks to.
//!
//! No kube-apiserver can be installed on these machines, so this is an HTTPS
//! server (its own CA, loopback only) faithful to the API for everything
//! rekey uses: Secrets, ServiceAccounts (+ `token`), Nodes,
//! CertificateSigningRequests (+ `approval` with its `approve`-on-signers
//! admission check, `status`, and a signer for configured signer names:
//! [`signer`]), Deployments, StatefulSets, DaemonSets, Leases, RBAC
//! objects, TokenReview, SubjectAccessReview and SelfSubjectAccessReview. Clients reach it through ordinary kubeconfig files
//! (one bearer token per identity) written by [`KubeStandIn::kubeconfig`].
//!
//! ```text
//!  kube::Client ──TLS──► accept loop (down switch) ──► handlers::handle
//!                                                        │ authenticate (auth)
//!                                                        │ fault injection
//!                                                        │ RBAC (rbac; deploy/ loaded at start)
//!                                                        ▼
//!                                     store::World (objects, resourceVersions, event log → watches)
//! ```
//!
//! With [`Options::storage`] Secrets and ConfigMaps live in a real etcd,
//! stored as the API server stores them (protobuf, then the
//! EncryptionConfiguration's write transformer; see [`storage`]).
//!
//! It runs on its own thread and runtime, so tests may block (on a child
//! process, say) without stalling it. What the real server does that this
//! does not: server-side apply, strategic-merge list semantics (maps only),
//! consistent list snapshots across pages, finalizers and garbage collection.

pub mod auth;
pub mod fixtures;
mod handlers;
pub mod rbac;
mod requests;
pub mod selector;
pub mod signer;
pub mod storage;
pub mod store;
mod validate;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::Utc;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use auth::{SaClaims, UserInfo};
pub use rbac::Permission;
pub use requests::RequestRecord;
use store::{ApiError, ResourceType, World};

/// A fault to inject into matching requests.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub verb: String,
    /// Resource, with `/subresource` if any (`secrets`, `serviceaccounts/token`).
    pub resource: String,
    /// Only in this namespace.
    pub namespace: Option<String>,
    /// Only for this object name.
    pub name: Option<String>,
    /// What happens.
    pub kind: FaultKind,
    /// How many more requests it hits.
    pub remaining: u32,
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy)]
pub enum FaultKind {
    /// Answer with this status (500, 503, 429; 409 answers a Conflict Status).
    Status(u16),
    /// Hang this long, then answer 504.
    Timeout(Duration),
    /// Hang this long, then serve the request as usual (a slow API server).
    Delay(Duration),
}

impl Fault {
    /// A fault on `verb resource` for the next `times` requests.
    pub fn new(verb: &str, resource: &str, kind: FaultKind, times: u32) -> Self {
        Self {
            verb: verb.into(),
            resource: resource.into(),
            namespace: None,
            name: None,
            kind,
            remaining: times,
        }
    }
}

/// State shared by the handlers and the harness.
pub(crate) struct Shared {
    pub world: Mutex<World>,
    pub auth: RwLock<auth::Authenticator>,
    pub faults: Mutex<Vec<Fault>>,
    pub log: Mutex<Vec<RequestRecord>>,
    pub denied: Mutex<Vec<RequestRecord>>,
    pub used: Mutex<BTreeSet<Permission>>,
    pub down_until: Mutex<Option<Instant>>,
    pub down_tx: tokio::sync::watch::Sender<u64>,
    pub bookmark_interval: Duration,
    pub admin_user: String,
    pub storage: std::sync::OnceLock<Arc<storage::EtcdStorage>>,
    /// The CA the CSR signer signs with (the serving CA).
    pub signing_ca: signer::SigningCa,
    /// Signer names the stand-in's controller-manager signs for.
    pub signers: Mutex<Vec<String>>,
    /// Bumped when `signers` changes (the signer looks at pending requests).
    pub signers_changed: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn authenticate(&self, token: &str) -> Result<UserInfo, String> {
        if token.is_empty() {
            return Err("no bearer token".into());
        }
        let w = self.world.lock().expect("world");
        self.auth
            .read()
            .expect("auth")
            .authenticate(&w, token, &[], Utc::now())
            .map(|(u, _)| u)
    }

    fn take_fault(&self, user: &UserInfo, a: &rbac::Attributes) -> Option<Fault> {
        if user.username == self.admin_user {
            return None;
        }
        let res = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let mut faults = self.faults.lock().expect("faults");
        let f = faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.verb == a.verb
                && f.resource == res
                && f.namespace.as_ref().is_none_or(|n| *n == a.namespace)
                && f.name.as_ref().is_none_or(|n| *n == a.name)
        })?;
        f.remaining -= 1;
        Some(f.clone())
    }

    fn is_down(&self) -> bool {
        self.down_until
            .lock()
            .expect("down")
            .is_some_and(|t| Instant::now() < t)
    }

    fn down_rx(&self) -> tokio::sync::watch::Receiver<u64> {
        self.down_tx.subscribe()
    }
}

/// Built-in RBAC of a kubeadm cluster that rekey does not ship: nodes
/// bootstrapping with a token may create and read CSRs; every
/// authenticated user may ask what it may do (`system:basic-user`).
const BUILTIN_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:basic-user"}
rules:
- apiGroups: [authorization.k8s.io]
  resources: [selfsubjectaccessreviews, selfsubjectrulesreviews]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:basic-user"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:basic-user"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:authenticated"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:node-bootstrapper"}
rules:
- apiGroups: [certificates.k8s.io]
  resources: [certificatesigningrequests]
  verbs: [create, get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:kubelet-bootstrap"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-bootstrapper"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers"}
"#;

/// Label on shipped ClusterRoles that are bound per namespace (sinks, token
/// namespaces, workloads) rather than cluster-wide.
pub const PER_NAMESPACE_LABEL: &str = "rekey.io/bind-per-namespace";

/// Options for [`KubeStandIn::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Load the RBAC and ServiceAccount objects from `deploy/` (default true).
    pub load_deploy: bool,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Worker threads of the stand-in's runtime.
    pub workers: usize,
    /// Keep Secrets and ConfigMaps in this etcd, encrypted as the API server
    /// would (default: in memory, like everything else).
    pub storage: Option<storage::StorageOptions>,
    /// Signer names whose approved CSRs the stand-in signs (more with
    /// [`KubeStandIn::add_signer`]).
    pub signers: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            load_deploy: true,
            bookmark_interval: Duration::from_secs(1),
            workers: 2,
            storage: None,
            signers: Vec::new(),
        }
    }
}

/// A running stand-in; stopped on drop.
pub struct KubeStandIn {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
    ca_pem: String,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    rekey_token: String,
    admin_token: String,
    deploy_objects: Vec<Value>,
}

/// The namespace and ServiceAccount rekey runs as.
pub const REKEY_NAMESPACE: &str = "rekey";
/// rekey's ServiceAccount.
pub const REKEY_SERVICE_ACCOUNT: &str = "rekey";
/// The harness's all-powerful user (`system:masters`).
pub const ADMIN_USER: &str = "kubernetes-admin";

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

impl KubeStandIn {
    /// Starts with the default options: `deploy/` RBAC loaded.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts a stand-in.
    pub fn start_with(opts: Options) -> Self {
        rekey::install_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix("rekey-test-kube-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // CA and a server certificate for 127.0.0.1 / localhost.
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube stand-in CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        // kubeadm's CA has a subjectKeyIdentifier: the signed leaves' AKI points at it.
        ca_params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(
            rekey::issue::x509::key_identifier(rcgen::PublicKeyData::der_bytes(&ca_key)),
        );
        let ca_cert = ca_params.clone().self_signed(&ca_key).expect("CA cert");
        let ca_pem = ca_cert.pem();
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let mut sp = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        sp.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        sp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let server_cert = sp.signed_by(&server_key, &issuer).expect("server cert");
        drop(issuer);

        let (down_tx, _) = tokio::sync::watch::channel(0u64);
        let rekey_token;
        let admin_token = random_token();
        let mut authn = auth::Authenticator::new();
        authn.add_static(
            admin_token.clone(),
            UserInfo::new(ADMIN_USER, &["system:masters"]),
        );
        let shared = Arc::new(Shared {
            world: Mutex::new(World::new()),
            auth: RwLock::new(authn),
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            denied: Mutex::new(Vec::new()),
            used: Mutex::new(BTreeSet::new()),
            down_until: Mutex::new(None),
            down_tx,
            bookmark_interval: opts.bookmark_interval,
            admin_user: ADMIN_USER.into(),
            storage: std::sync::OnceLock::new(),
            signing_ca: signer::SigningCa {
                params: ca_params,
                key: ca_key,
            },
            signers: Mutex::new(opts.signers.clone()),
            signers_changed: tokio::sync::watch::channel(0u64).0,
        });
        let mut deploy_objects = Vec::new();
        {
            let mut w = shared.world.lock().expect("world");
            for ns in [
                "default",
                "kube-system",
                "kube-public",
                "kube-node-lease",
                REKEY_NAMESPACE,
            ] {
                put(
                    &mut w,
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )
                .expect("namespace");
            }
            let builtin: Vec<Value> =
                serde_saphyr::from_multiple(BUILTIN_RBAC).expect("built-in RBAC");
            for o in builtin {
                put(&mut w, o).expect("built-in RBAC");
            }
            if opts.load_deploy {
                let objs = rbac::load_manifests(&rbac::deploy_dir())
                    .unwrap_or_else(|e| panic!("loading deploy/ manifests: {e}"));
                for (file, o) in objs {
                    put(&mut w, o.clone()).unwrap_or_else(|e| {
                        panic!(
                            "{}: the API would reject this object: {}",
                            file.display(),
                            e.message
                        )
                    });
                    deploy_objects.push(o);
                }
            }
            let sa_rt = store::resource_type("", "v1", "serviceaccounts").expect("sa");
            if w.get(&sa_rt, REKEY_NAMESPACE, REKEY_SERVICE_ACCOUNT)
                .is_none()
            {
                put(
                    &mut w,
                    json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": REKEY_SERVICE_ACCOUNT, "namespace": REKEY_NAMESPACE}}),
                )
                .expect("service account");
            }
            let sa_uid = w
                .get(&sa_rt, REKEY_NAMESPACE, REKEY_SERVICE_ACCOUNT)
                .expect("sa")["metadata"]["uid"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let now = Utc::now();
            let claims = SaClaims {
                iss: auth::ISSUER.into(),
                sub: format!("system:serviceaccount:{REKEY_NAMESPACE}:{REKEY_SERVICE_ACCOUNT}"),
                aud: vec![auth::API_AUDIENCE.into()],
                exp: (now + chrono::TimeDelta::days(2)).timestamp(),
                iat: now.timestamp(),
                nbf: now.timestamp(),
                jti: uuid::Uuid::new_v4().to_string(),
                kubernetes: auth::KubernetesClaims {
                    namespace: REKEY_NAMESPACE.into(),
                    serviceaccount: auth::ObjRef {
                        name: REKEY_SERVICE_ACCOUNT.into(),
                        uid: sa_uid,
                    },
                    secret: None,
                },
            };
            rekey_token = shared.auth.read().expect("auth").sign(&claims);
        }

        let shutdown = CancellationToken::new();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let tls = tls_config(&server_cert.pem(), &server_key.serialize_pem());
        let sh = shared.clone();
        let stop = shutdown.clone();
        let workers = opts.workers.max(1);
        let storage_opts = opts.storage.clone();
        let signing = (shared.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name("kube-stand-in".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
                    .expect("stand-in runtime");
                if let Some(so) = &storage_opts {
                    let st = rt
                        .block_on(storage::EtcdStorage::start(so))
                        .unwrap_or_else(|e| panic!("the stand-in's etcd storage: {e}"));
                    let _ = sh.storage.set(Arc::new(st));
                }
                rt.spawn(signer::run(signing.0, signing.1));
                rt.block_on(serve(sh, tls, stop, addr_tx));
            })
            .expect("stand-in thread");
        let addr = addr_rx.recv().expect("stand-in did not start");
        let me = Self {
            url: format!("https://127.0.0.1:{}", addr.port()),
            shared,
            dir,
            ca_pem,
            shutdown,
            thread: Some(thread),
            rekey_token,
            admin_token,
            deploy_objects,
        };
        me.write_kubeconfig("rekey", &me.rekey_token.clone(), Some(REKEY_NAMESPACE));
        me.write_kubeconfig("admin", &me.admin_token.clone(), Some("default"));
        me
    }

    /// Swaps the EncryptionConfiguration of the etcd storage mode, as
    /// restarting the API servers with a new `--encryption-provider-config`
    /// does. Panics when the stand-in keeps everything in memory.
    pub fn set_encryption_config(&self, path: &std::path::Path) {
        self.shared
            .storage
            .get()
            .expect("the stand-in was started without etcd storage (Options::storage)")
            .set_encryption_config(path)
            .unwrap_or_else(|e| panic!("the stand-in's EncryptionConfiguration: {e}"));
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes a kubeconfig for `token` as `DIR/<name>.kubeconfig`.
    pub fn write_kubeconfig(&self, name: &str, token: &str, namespace: Option<&str>) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let ns = namespace
            .map(|n| format!("\n    namespace: {n}"))
            .unwrap_or_default();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: stand-in\n    user: {name}{ns}\ncurrent-context: {name}\n",
            url = self.url,
            ca = STANDARD.encode(&self.ca_pem),
        );
        std::fs::write(&path, text).expect("writing kubeconfig");
        path
    }

    /// The kubeconfig of rekey's ServiceAccount (`rekey/rekey`, RBAC from `deploy/`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("rekey.kubeconfig")
    }

    /// The kubeconfig of the harness's admin (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A client as rekey's ServiceAccount, built the way the product builds it.
    pub async fn client(&self) -> kube::Client {
        rekey::k8s::client(Some(&self.kubeconfig()), None)
            .await
            .expect("kube client for the stand-in")
    }

    /// A client as the admin.
    pub async fn admin_client(&self) -> kube::Client {
        rekey::k8s::client(Some(&self.admin_kubeconfig()), None)
            .await
            .expect("admin kube client for the stand-in")
    }

    /// Registers a user with a static bearer token; returns the token.
    pub fn add_user(&self, username: &str, groups: &[&str]) -> String {
        let token = random_token();
        self.shared
            .auth
            .write()
            .expect("auth")
            .add_static(token.clone(), UserInfo::new(username, groups));
        token
    }

    /// Signs a token for a ServiceAccount (which must exist for it to authenticate).
    pub fn mint_sa_token(&self, ns: &str, name: &str, audiences: &[&str], ttl: Duration) -> String {
        let uid = self
            .get("ServiceAccount", ns, name)
            .and_then(|sa| sa["metadata"]["uid"].as_str().map(String::from))
            .unwrap_or_default();
        let now = Utc::now();
        let claims = SaClaims {
            iss: auth::ISSUER.into(),
            sub: format!("system:serviceaccount:{ns}:{name}"),
            aud: audiences.iter().map(|a| a.to_string()).collect(),
            exp: (now + chrono::TimeDelta::from_std(ttl).expect("ttl")).timestamp(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: auth::KubernetesClaims {
                namespace: ns.into(),
                serviceaccount: auth::ObjRef {
                    name: name.into(),
                    uid,
                },
                secret: None,
            },
        };
        self.shared.auth.read().expect("auth").sign(&claims)
    }

    /// Verifies a service-account token's signature and expiry; returns its claims.
    pub fn verify_sa_token(&self, token: &str) -> Result<SaClaims, String> {
        self.shared.auth.read().expect("auth").verify_jwt(token)
    }

    /// Authenticates a bearer token for `audiences` as a TokenReview would.
    pub fn authenticate(&self, token: &str, audiences: &[String]) -> Result<UserInfo, String> {
        let w = self.shared.world.lock().expect("world");
        self.shared
            .auth
            .read()
            .expect("auth")
            .authenticate(&w, token, audiences, Utc::now())
            .map(|(u, _)| u)
    }

    /// The bootstrap-token authenticator's check of a `<id>.<secret>` token.
    pub fn check_bootstrap_token(&self, token: &str) -> Result<UserInfo, String> {
        let w = self.shared.world.lock().expect("world");
        auth::check_bootstrap_token(&w, token, Utc::now())
    }

    /// The public key (PEM) service-account tokens are signed with.
    pub fn public_key_pem(&self) -> String {
        self.shared
            .auth
            .read()
            .expect("auth")
            .public_key_pem
            .clone()
    }

    /// Injects a fault (applies to every identity but the admin).
    pub fn inject(&self, fault: Fault) {
        self.shared.faults.lock().expect("faults").push(fault);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().expect("faults").clear();
    }

    /// Remaining hits of injected faults.
    pub fn faults_remaining(&self) -> u32 {
        self.shared
            .faults
            .lock()
            .expect("faults")
            .iter()
            .map(|f| f.remaining)
            .sum()
    }

    /// Makes the API unreachable for `d`: open connections are cut and new
    /// ones closed at once.
    pub fn down_for(&self, d: Duration) {
        *self.shared.down_until.lock().expect("down") = Some(Instant::now() + d);
        self.shared.down_tx.send_modify(|g| *g += 1);
    }

    /// Brings the API back now.
    pub fn up(&self) {
        *self.shared.down_until.lock().expect("down") = None;
    }

    /// Every permission the roles in `deploy/` grant.
    pub fn deploy_permissions(&self) -> BTreeSet<Permission> {
        rbac::permissions_of(&self.deploy_objects)
    }

    /// The objects loaded from `deploy/`.
    pub fn deploy_objects(&self) -> &[Value] {
        &self.deploy_objects
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.world.lock().expect("world").resource_version()
    }

    /// Reads an object directly (no HTTP, no RBAC).
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let rt = store::RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .expect("known kind");
        self.shared
            .world
            .lock()
            .expect("world")
            .get(rt, ns, name)
            .cloned()
    }

    /// Lists objects of a kind directly (all namespaces when `ns` is None).
    pub fn list(&self, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let rt = store::RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .expect("known kind");
        self.shared
            .world
            .lock()
            .expect("world")
            .list(rt, ns)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Creates or replaces an object directly as the admin would (validated,
    /// events emitted). `apiVersion` and `kind` pick the resource.
    pub fn put(&self, obj: Value) -> Result<Value, String> {
        let mut w = self.shared.world.lock().expect("world");
        put(&mut w, obj).map_err(|e| e.message)
    }

    /// Puts a deleted object back exactly as a restore of etcd from an older
    /// snapshot would: same uid and creationTimestamp, a new resourceVersion,
    /// an ADDED event.
    pub fn restore(&self, obj: Value) -> Result<Value, String> {
        let (rt, ns) = placement(&obj).map_err(|e| e.message)?;
        let mut w = self.shared.world.lock().expect("world");
        w.restore(&rt, &ns, obj).map_err(|e| e.message)
    }

    /// Deletes an object directly.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> Result<Value, String> {
        let rt = store::RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .expect("known kind");
        self.shared
            .world
            .lock()
            .expect("world")
            .delete(rt, ns, name, None, None)
            .map_err(|e| e.message)
    }

    /// Creates a namespace and binds the shipped per-namespace ClusterRoles
    /// (label [`PER_NAMESPACE_LABEL`]) to rekey's ServiceAccount in it, as the
    /// operator does for each namespace rekey publishes to.
    pub fn add_namespace(&self, ns: &str) {
        if self.get("Namespace", "", ns).is_none() {
            self.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                .expect("namespace");
        }
        let roles: Vec<String> = self
            .deploy_objects
            .iter()
            .filter(|o| {
                o["kind"] == "ClusterRole" && o["metadata"]["labels"][PER_NAMESPACE_LABEL] == "true"
            })
            .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
            .collect();
        for role in roles {
            let name = role.replace(':', "-");
            if self.get("RoleBinding", ns, &name).is_some() {
                continue;
            }
            self.put(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": REKEY_SERVICE_ACCOUNT, "namespace": REKEY_NAMESPACE}],
            }))
            .expect("role binding");
        }
    }

    /// Approves a CSR and issues its certificate (signed by the stand-in's
    /// CA), as the controller-manager's approver and signer do.
    pub fn approve_and_issue(&self, name: &str) -> Result<(), String> {
        self.approve(name)?;
        self.issue(name)
    }

    /// Sets the `Approved` condition of a CSR.
    pub fn approve(&self, name: &str) -> Result<(), String> {
        let mut csr = self
            .get("CertificateSigningRequest", "", name)
            .ok_or_else(|| format!("no CSR {name}"))?;
        csr["status"]["conditions"] = json!([{
            "type": "Approved", "status": "True", "reason": "AutoApproved",
            "message": "Auto approving kubelet client certificate after SubjectAccessReview.",
            "lastUpdateTime": store::timestamp(),
        }]);
        self.put(csr).map(|_| ())
    }

    /// Signs a CSR now, whatever its signer, as the controller-manager's
    /// signer would (usages, `expirationSeconds`, the `kubernetes.io/*`
    /// rules): sets `status.certificate`.
    pub fn issue(&self, name: &str) -> Result<(), String> {
        let mut csr = self
            .get("CertificateSigningRequest", "", name)
            .ok_or_else(|| format!("no CSR {name}"))?;
        let pem = signer::sign(&self.shared.signing_ca, &csr)?;
        csr["status"]["certificate"] = json!(STANDARD.encode(pem));
        self.put(csr).map(|_| ())
    }

    /// Signs approved CSRs of signer `name` from now on (and those already
    /// approved), as kube-controller-manager does for its signers.
    pub fn add_signer(&self, name: &str) {
        self.shared
            .signers
            .lock()
            .expect("signers")
            .push(name.to_string());
        self.shared.signers_changed.send_modify(|n| *n += 1);
    }

    /// Sets the `Denied` condition of a CSR, as `kubectl certificate deny` does.
    pub fn deny(&self, name: &str, message: &str) -> Result<(), String> {
        let mut csr = self
            .get("CertificateSigningRequest", "", name)
            .ok_or_else(|| format!("no CSR {name}"))?;
        csr["status"]["conditions"] = json!([{
            "type": "Denied", "status": "True", "reason": "KubectlDeny",
            "message": message, "lastUpdateTime": store::timestamp(),
        }]);
        self.put(csr).map(|_| ())
    }
}

/// The resource an object belongs to (by `apiVersion` and `kind`) and its
/// namespace (`default` when unset; empty for cluster-scoped resources).
fn placement(obj: &Value) -> Result<(ResourceType, String), ApiError> {
    let av = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    let rt = store::by_kind(av, kind)
        .ok_or_else(|| ApiError::bad_request(format!("no resource for {av} {kind}")))?;
    let ns = if rt.namespaced {
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    } else {
        String::new()
    };
    Ok((rt, ns))
}

/// Creates or replaces (keeping uid) an object in the world, validated.
fn put(w: &mut World, obj: Value) -> Result<Value, ApiError> {
    let (rt, ns) = placement(&obj)?;
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let old = w.get(&rt, &ns, &name).cloned();
    let mut v = validate::validate(&rt, &name, obj, old.as_ref())?;
    match old {
        Some(_) => {
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            w.replace(&rt, &ns, &name, v)
        }
        None => w.create(&rt, &ns, v),
    }
}

fn tls_config(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("server cert");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("server key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server TLS config");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

async fn serve(
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    addr_tx
        .send(listener.local_addr().expect("addr"))
        .expect("report addr");
    let app = axum::Router::new()
        .fallback(handlers::handle)
        .layer(axum::extract::DefaultBodyLimit::max(3 * 1024 * 1024))
        .with_state(shared.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        if shared.is_down() {
            drop(tcp);
            continue;
        }
        let acceptor = acceptor.clone();
        let app = app.clone();
        let mut down = shared.down_rx();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = down.changed() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
