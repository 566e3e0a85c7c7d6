//! The RBAC shipped in `deploy/` is sufficient and minimal.
//!
//! One stand-in serves every flow rekey has against Kubernetes — sink
//! publish/rotate/replace, TokenRequest and bound-token retirement, consumer
//! reload of each workload kind, the bootstrap watcher and revocation, the
//! `rekey token` CLI, legacy-token discovery — as rekey's ServiceAccount,
//! authorized against `deploy/` only. The test fails if any request was
//! refused, and if any permission (role, rule, group, resource, verb) that
//! `deploy/` grants was never used.

use std::time::Duration;

use rekey::{
    k8s::{BootstrapTokensConfig, bootstrap, legacy, reload::Reloader, tokens},
    sink::{Material, Publication, SinkContext, SinkSpec, build},
};
use rekey_integration::{
    bin::{outcome, rekey, run},
    kube::{KubeStandIn, fixtures},
    pg::fresh_db,
    wait::{check, eventually},
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[test]
fn deploy_rbac_has_no_wildcards() {
    let k = KubeStandIn::start();
    let objs = k.deploy_objects();
    assert!(objs.iter().any(|o| o["kind"] == "ServiceAccount"
        && o["metadata"]["name"] == "rekey"
        && o["metadata"]["namespace"] == "rekey"));
    for o in objs {
        for rule in o["rules"].as_array().into_iter().flatten() {
            for field in ["apiGroups", "resources", "verbs", "nonResourceURLs"] {
                for v in rule[field].as_array().into_iter().flatten() {
                    assert!(
                        !v.as_str().unwrap_or("").contains('*'),
                        "wildcard in {}: {rule}",
                        o["metadata"]["name"]
                    );
                }
            }
        }
    }
    assert!(!k.deploy_permissions().is_empty());
}

#[tokio::test]
async fn every_request_is_allowed_and_every_permission_is_used() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    for ns in ["web", "ci"] {
        k.add_namespace(ns);
    }
    let client = k.client().await;

    // Sink: create, then rotate (get + update), then replace a foreign Secret (delete + create).
    let ctx = SinkContext {
        kube: Some(client.clone()),
    };
    let sink = build(
        &SinkSpec::KubernetesSecret {
            namespace: "web".into(),
            name: "web-tls".into(),
        },
        &ctx,
    )
    .unwrap();
    let ca = fixtures::test_ca();
    for v in 1..=2 {
        let (m, na) = fixtures::tls_material(&ca, "web.web.svc");
        sink.publish(&Publication {
            credential: "cert/web/web-tls",
            version: v,
            number: v,
            not_after: na,
            material: &m,
            adopt: false,
        })
        .await
        .unwrap();
    }
    k.put(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "legacy-app", "namespace": "web"}, "type": "Opaque"})).unwrap();
    let adopt = build(
        &SinkSpec::KubernetesSecret {
            namespace: "web".into(),
            name: "legacy-app".into(),
        },
        &ctx,
    )
    .unwrap();
    let (m, na) = fixtures::tls_material(&ca, "legacy.web.svc");
    adopt
        .publish(&Publication {
            credential: "cert/web/legacy",
            version: 1,
            number: 1,
            not_after: na,
            material: &m,
            adopt: true,
        })
        .await
        .unwrap();

    // A [[bundle]] target in a ConfigMap: created (get + create), then
    // replaced with a new bundle (get + update).
    for (i, bundle_ca) in [&ca, &fixtures::test_ca()].into_iter().enumerate() {
        let target = rekey::sink::trust::BundleTargetSpec {
            name: "bundle/web".into(),
            issuer: "default".into(),
            sink: rekey::sink::trust::BundleSinkSpec::ConfigMap {
                namespace: "web".into(),
                name: "cluster-ca".into(),
                key: "ca.crt".into(),
            },
            adopt: false,
        };
        let bundle = rekey::issue::TrustBundle::from_pem(bundle_ca.cert_pem()).unwrap();
        rekey::sink::trust::write(&target, &bundle, &ctx)
            .await
            .unwrap_or_else(|e| panic!("bundle round {i}: {e}"));
    }

    // Tokens: TokenRequest bound to a per-version Secret, published, retired.
    k.put(fixtures::service_account("ci", "deployer")).unwrap();
    let spec = fixtures::token_spec("ci", "deployer", &["api"], Duration::from_secs(3600), true);
    let t = tokens::issue(&client, &spec, 1, chrono::Utc::now())
        .await
        .unwrap();
    let tsink = build(&spec.sink, &ctx).unwrap();
    let mat = Material::Token {
        token: SecretString::from(t.token.expose_secret().to_string()),
    };
    tsink
        .publish(&Publication {
            credential: &spec.name,
            version: 1,
            number: 1,
            not_after: t.not_after,
            material: &mat,
            adopt: false,
        })
        .await
        .unwrap();
    tokens::retire(&client, &spec, &t.details).await.unwrap();

    // Consumer reload of each workload kind.
    for kind in ["Deployment", "StatefulSet", "DaemonSet"] {
        k.put(fixtures::workload(kind, "web", "app")).unwrap();
    }
    Reloader::new(client.clone(), 600, 10)
        .restart(&[
            "deployment/web/app".into(),
            "statefulset/web/app".into(),
            "daemonset/web/app".into(),
        ])
        .await
        .unwrap();

    // Bootstrap: the watcher sees a token made by the CLI, a node joins, it is revoked;
    // the CLI revokes a token the watcher has not recorded (get + delete).
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(bootstrap::run(
        db.store.clone(),
        client.clone(),
        BootstrapTokensConfig::default(),
        stop.clone(),
    ));
    let out = run(rekey()
        .args(["token", "create", "--kubeconfig"])
        .arg(k.kubeconfig())
        .args(["--database-url", &db.url]));
    let (code, token, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    let id = token.trim().split('.').next().unwrap().to_string();
    k.join_node(token.trim(), "rbac-node").await;
    eventually(
        "the token to be revoked",
        Duration::from_secs(10),
        async || {
            let secret = k.get("Secret", "kube-system", &format!("bootstrap-token-{id}"));
            check(
                secret.map(|s| s["metadata"]["name"].clone()),
                Option::is_none,
            )
        },
    )
    .await;
    // The revocation can come from the watcher's initial lists, before its
    // watches are open: stop it only once every watch has been made.
    eventually(
        "the watcher to open its watches",
        Duration::from_secs(10),
        async || {
            let unwatched: Vec<&str> = ["secrets", "certificatesigningrequests", "nodes"]
                .into_iter()
                .filter(|r| k.request_count("watch", r) == 0)
                .collect();
            check(unwatched, Vec::is_empty)
        },
    )
    .await;
    stop.cancel();
    watcher.await.unwrap().unwrap();
    let (secret, _) = fixtures::bootstrap_secret("cliget", None, None);
    k.put(secret).unwrap();
    let out = run(rekey()
        .args(["token", "revoke", "cliget", "--kubeconfig"])
        .arg(k.kubeconfig())
        .args(["--database-url", &db.url]));
    assert_eq!(outcome(&out).0, 0, "{}", outcome(&out).2);

    // Legacy long-lived tokens.
    k.put(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "old-token", "namespace": "ci", "annotations": {"kubernetes.io/service-account.name": "deployer"}},
        "type": "kubernetes.io/service-account-token"}))
    .unwrap();
    assert_eq!(legacy::discover(&db.store, &client).await.unwrap(), 1);

    // kubernetes-csr issuers: create the request, may rekey approve it (no:
    // deploy/ grants no `approve`), get and watch it until someone approves.
    {
        use rekey::issue::{CertificateSpec, CsrRequest, CsrSigner};
        let spec: CertificateSpec = serde_json::from_value(json!({
            "name": "cert/ci/deployer", "common_name": "deployer", "usages": ["client"],
            "lifetime": "1h", "sink": {"kind": "file", "dir": "/nonexistent"}
        }))
        .unwrap();
        let signer =
            rekey::k8s::csr_signer::KubeCsrSigner::new(client.clone(), "example.com/clients");
        let req = |wait| CsrRequest {
            spec: &spec,
            version: 1,
            now: chrono::Utc::now(),
            wait,
        };
        let e = signer
            .issue(req(Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert!(
            matches!(e, rekey::issue::CsrError::AwaitingApproval { .. }),
            "{e}"
        );
        let csr = k
            .list("CertificateSigningRequest", None)
            .into_iter()
            .find(|c| c["spec"]["signerName"] == "example.com/clients")
            .expect("the request");
        k.approve_and_issue(csr["metadata"]["name"].as_str().unwrap())
            .unwrap();
        signer.issue(req(Duration::from_secs(5))).await.unwrap();
    }

    // Storage migration, once an administrator binds rekey:etcd-migrate
    // (not bound by deploy/): get and unchanged update of a Secret and a
    // ConfigMap, as the migration rewrites each stale object.
    k.put(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "rekey:etcd-migrate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rekey:etcd-migrate"},
        "subjects": [{"kind": "ServiceAccount", "name": "rekey", "namespace": "rekey"}]}))
    .unwrap();
    k.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "ci"}, "data": {"k": "v"}}))
        .unwrap();
    for (resource, ns, name) in [
        ("secrets", "web", "web-tls"),
        ("configmaps", "ci", "settings"),
    ] {
        let gr = rekey::etcd::encryption::GroupResource::parse(resource);
        let rewriter = rekey::etcd::migrate::rewrite::Rewriter::resolve(&client, &gr)
            .await
            .unwrap();
        rewriter.rewrite(Some(ns), name).await.unwrap();
    }

    // Admin API bearer tokens: TokenReview, then SubjectAccessReview.
    k.put(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "api-caller", "namespace": "ci"}}))
        .unwrap();
    let token = k.mint_sa_token("ci", "api-caller", &["rekey"], Duration::from_secs(3600));
    let reviews = rekey::api::auth::TokenAuthenticator::new(client.clone(), vec!["rekey".into()]);
    let user = reviews
        .authenticate(&SecretString::from(token))
        .await
        .unwrap()
        .expect("the stand-in accepts its own ServiceAccount token");
    assert!(
        !reviews
            .authorize(&user, rekey::api::auth::Action::ListCredentials, None)
            .await
            .unwrap()
    );

    assert!(
        k.denied().is_empty(),
        "requests refused by deploy/ RBAC: {:#?}",
        k.denied()
    );
    let used = k.used_permissions();
    let unused: Vec<String> = k
        .deploy_permissions()
        .difference(&used)
        .map(|p| p.to_string())
        .collect();
    assert!(
        unused.is_empty(),
        "permissions in deploy/ that no flow uses (remove them, or add the flow):\n{}",
        unused.join("\n")
    );
}
