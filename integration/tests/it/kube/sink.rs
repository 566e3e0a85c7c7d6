//! The kubernetes-secret sink against the stand-in, through rekey's RBAC.

use rekey::{
    k8s::{NOT_AFTER_ANNOTATION, VERSION_ANNOTATION},
    sink::{Material, Publication, Sink, SinkContext, SinkError, SinkSpec, build},
};
use rekey_integration::kube::{Fault, FaultKind, KubeStandIn, fixtures};
use secrecy::SecretString;
use serde_json::json;

fn publication<'a>(
    m: &'a Material,
    version: i64,
    not_after: chrono::DateTime<chrono::Utc>,
    adopt: bool,
) -> Publication<'a> {
    Publication {
        credential: "cert/web/web-tls",
        version,
        number: version,
        not_after,
        material: m,
        adopt,
    }
}

async fn sink(k: &KubeStandIn, ns: &str, name: &str) -> std::sync::Arc<dyn Sink> {
    let ctx = SinkContext {
        kube: Some(k.client().await),
    };
    build(
        &SinkSpec::KubernetesSecret {
            namespace: ns.into(),
            name: name.into(),
        },
        &ctx,
    )
    .unwrap()
}

fn data(k: &KubeStandIn, ns: &str, name: &str, key: &str) -> String {
    use base64::Engine;
    let s = k.get("Secret", ns, name).unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(s["data"][key].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn tls_secret_published_and_rotated() {
    let k = KubeStandIn::start();
    k.add_namespace("web");
    let s = sink(&k, "web", "web-tls").await;
    assert_eq!(s.describe(), "kubernetes-secret:web/web-tls");
    assert_eq!(s.published_version().await.unwrap(), None);
    let ca = fixtures::test_ca();
    let (m1, na1) = fixtures::tls_material(&ca, "web.web.svc");
    s.publish(&publication(&m1, 1, na1, false)).await.unwrap();
    let obj = k.get("Secret", "web", "web-tls").unwrap();
    assert_eq!(obj["type"], "kubernetes.io/tls");
    let mut keys: Vec<&str> = obj["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    assert_eq!(obj["metadata"]["annotations"][VERSION_ANNOTATION], "1");
    assert_eq!(
        obj["metadata"]["annotations"][NOT_AFTER_ANNOTATION],
        na1.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert!(data(&k, "web", "web-tls", "tls.key").contains("PRIVATE KEY"));
    assert_eq!(s.published_version().await.unwrap(), Some(1));
    let uid = obj["metadata"]["uid"].clone();
    let crt1 = data(&k, "web", "web-tls", "tls.crt");

    let (m2, na2) = fixtures::tls_material(&ca, "web.web.svc");
    s.publish(&publication(&m2, 2, na2, false)).await.unwrap();
    let obj = k.get("Secret", "web", "web-tls").unwrap();
    assert_eq!(obj["metadata"]["uid"], uid, "replaced in place");
    assert_eq!(obj["metadata"]["annotations"][VERSION_ANNOTATION], "2");
    assert_ne!(data(&k, "web", "web-tls", "tls.crt"), crt1);
    assert_eq!(s.published_version().await.unwrap(), Some(2));
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}

#[tokio::test]
async fn foreign_secret_is_not_overwritten_unless_adopted() {
    let k = KubeStandIn::start();
    k.add_namespace("web");
    k.put(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "web-tls", "namespace": "web", "labels": {"owner": "team-a"}},
        "type": "Opaque", "stringData": {"password": "hunter2"}}))
        .unwrap();
    let before = k.get("Secret", "web", "web-tls").unwrap();
    let s = sink(&k, "web", "web-tls").await;
    let (m, na) = fixtures::tls_material(&fixtures::test_ca(), "web");
    let e = s.publish(&publication(&m, 1, na, false)).await.unwrap_err();
    assert!(matches!(e, SinkError::NotOwned(_)), "{e}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("adopt = true"), "{e}");
    assert_eq!(
        k.get("Secret", "web", "web-tls").unwrap(),
        before,
        "untouched"
    );
    assert_eq!(s.published_version().await.unwrap(), None);

    // adopt = true: taken over; the type must change, so the object is replaced.
    s.publish(&publication(&m, 1, na, true)).await.unwrap();
    let after = k.get("Secret", "web", "web-tls").unwrap();
    assert_eq!(after["type"], "kubernetes.io/tls");
    assert_eq!(
        after["metadata"]["labels"]["owner"], "team-a",
        "foreign labels kept"
    );
    assert!(after["data"].get("password").is_none());
    assert_eq!(s.published_version().await.unwrap(), Some(1));
}

#[tokio::test]
async fn conflict_on_publish_is_retried_and_wins() {
    let k = KubeStandIn::start();
    k.add_namespace("ci");
    let s = sink(&k, "ci", "deployer-token").await;
    let t1 = Material::Token {
        token: SecretString::from("token-one"),
    };
    let na = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    s.publish(&publication(&t1, 1, na, false)).await.unwrap();
    let obj = k.get("Secret", "ci", "deployer-token").unwrap();
    assert_eq!(obj["type"], "Opaque");
    assert_eq!(data(&k, "ci", "deployer-token", "token"), "token-one");

    k.inject(Fault::new("update", "secrets", FaultKind::Status(409), 3));
    let t2 = Material::Token {
        token: SecretString::from("token-two"),
    };
    s.publish(&publication(&t2, 2, na, false)).await.unwrap();
    assert_eq!(k.faults_remaining(), 0);
    assert_eq!(data(&k, "ci", "deployer-token", "token"), "token-two");
    assert_eq!(s.published_version().await.unwrap(), Some(2));
    let updates: Vec<_> = k
        .requests()
        .into_iter()
        .filter(|r| r.verb == "update" && r.resource == "secrets")
        .collect();
    assert_eq!(
        updates.len(),
        4,
        "three conflicts, then the write: {updates:?}"
    );

    // A 500 is reported as retryable; nothing is half-written.
    k.inject(Fault::new("update", "secrets", FaultKind::Status(500), 1));
    let t3 = Material::Token {
        token: SecretString::from("token-three"),
    };
    let e = s
        .publish(&publication(&t3, 3, na, false))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(s.published_version().await.unwrap(), Some(2));
    assert!(!e.to_string().contains("token-three"));
}
