//! Bearer ServiceAccount tokens on the admin API, against the Kubernetes API
//! stand-in: authenticated with TokenReview, authorized per action with
//! SubjectAccessReview (API group `rekey.io`), audited like certificates.

use std::time::Duration;

use rekey_integration::{
    api::{Pki, Serve, certificate_toml, enc},
    kube::KubeStandIn,
    pg::fresh_db,
};
use serde_json::json;

const WEB: &str = "cert/default/web-tls";

#[tokio::test]
async fn bearer_tokens_are_allowed_or_denied_per_subject_access_review() {
    let db = fresh_db().await;
    let pki = Pki::new();
    let k = KubeStandIn::start();
    k.add_namespace("ci");
    for sa in ["deployer", "reader"] {
        k.put(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": "ci"}}))
            .unwrap();
    }
    // deployer may list and rotate; reader may only list.
    k.put(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "rekey-operator"},
        "rules": [
            {"apiGroups": ["rekey.io"], "resources": ["credentials"], "verbs": ["list", "get"]},
            {"apiGroups": ["rekey.io"], "resources": ["credentials/rotate"], "verbs": ["create"]}
        ]}),
    )
    .unwrap();
    k.put(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "rekey-viewer"},
        "rules": [{"apiGroups": ["rekey.io"], "resources": ["credentials"], "verbs": ["list"]}]}),
    )
    .unwrap();
    for (sa, role) in [("deployer", "rekey-operator"), ("reader", "rekey-viewer")] {
        k.put(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("{sa}-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "ci"}]}))
        .unwrap();
    }
    let deployer = k.mint_sa_token("ci", "deployer", &["rekey"], Duration::from_secs(3600));
    let reader = k.mint_sa_token("ci", "reader", &["rekey"], Duration::from_secs(3600));
    let wrong_audience = k.mint_sa_token("ci", "deployer", &["other"], Duration::from_secs(3600));

    let mut rest = certificate_toml(WEB, "ecdsa-p256", "24h", &pki.dir.path().join("sink-web"));
    rest.push_str(&format!(
        "\n[kubernetes]\nkubeconfig = \"{}\"\n",
        k.kubeconfig().display()
    ));
    let serve = Serve::start(
        &db,
        &pki,
        "token_review = true\ntoken_audiences = [\"rekey\"]\n",
        &rest,
    )
    .await;
    // No client certificate: the handshake is allowed now, the token decides.
    let anon = pki.client_with(None);
    let list = format!("{}/v1/credentials", serve.url);
    let rotate = format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB));

    let r = anon.get(&list).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = anon
        .post(&rotate)
        .bearer_auth(&reader)
        .json(&json!({"reason": "not mine to do"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("RBAC"),
        "{problem}"
    );

    let r = anon
        .post(&rotate)
        .bearer_auth(&deployer)
        .json(&json!({"reason": "ci deploy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Unauthenticated: no token, a token for another audience, garbage.
    for token in [None, Some(wrong_audience.as_str()), Some("not-a-token")] {
        let mut req = anon.get(&list);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
    }
    // Certificates still work beside tokens.
    let r = pki.client("viewer").get(&list).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT actor, outcome, reason FROM audit_events
         WHERE action = 'credential.rotate' AND request_id IS NOT NULL ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "system:serviceaccount:ci:reader".to_string(),
                "denied".to_string(),
                Some("not mine to do".to_string())
            ),
            (
                "system:serviceaccount:ci:deployer".to_string(),
                "success".to_string(),
                Some("ci deploy".to_string())
            ),
        ]
    );
    // Bootstrap tokens through the API: revoke one (operator), list them (viewer).
    k.put(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
        "stringData": {"token-id": "abcdef", "token-secret": "0123456789abcdef",
            "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true"}}),
    )
    .unwrap();
    let operator = pki.client("operator");
    let revoke = |id: &str| format!("{}/v1/bootstrap-tokens/{id}/revoke", serve.url);
    let r = pki
        .client("viewer")
        .post(revoke("abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = operator
        .post(revoke("abcdef"))
        .json(&json!({"reason": "node joined"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["outcome"], "revoked", "{body}");
    assert!(
        k.get("Secret", "kube-system", "bootstrap-token-abcdef")
            .is_none()
    );
    let r = operator.post(revoke("zzzzzz")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = operator.post(revoke("NOT-AN-ID")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = pki
        .client("viewer")
        .get(format!("{}/v1/bootstrap-tokens", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: serde_json::Value = r.json().await.unwrap();
    assert!(list["tokens"].is_array(), "{list}");
    let revoked: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, outcome FROM audit_events
         WHERE action = 'bootstrap_token.revoke' AND request_id IS NOT NULL ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert!(
        revoked
            .iter()
            .any(|(a, o)| a.contains("CN=viewer") && o == "denied"),
        "{revoked:?}"
    );
    assert!(
        revoked
            .iter()
            .any(|(a, o)| a.contains("CN=operator") && o == "success"),
        "{revoked:?}"
    );

    assert!(
        k.denied().is_empty(),
        "rekey's own reviews were refused: {:#?}",
        k.denied()
    );
}
