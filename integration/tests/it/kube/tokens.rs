//! Service-account tokens through TokenRequest, as rekey's ServiceAccount.

use std::time::Duration;

use rekey::k8s::tokens::{self, fingerprint};
use rekey_integration::{
    bin::{outcome, rekey, run},
    kube::{Fault, FaultKind, KubeStandIn, fixtures},
};
use secrecy::ExposeSecret;

#[tokio::test]
async fn token_has_the_lifetime_and_audiences_asked_for() {
    let k = KubeStandIn::start();
    k.add_namespace("ci");
    k.put(fixtures::service_account("ci", "deployer")).unwrap();
    let client = k.client().await;
    let spec = fixtures::token_spec(
        "ci",
        "deployer",
        &["https://vault.example", "api"],
        Duration::from_secs(3600),
        false,
    );
    let now = chrono::Utc::now();
    let t = tokens::issue(&client, &spec, 1, now).await.unwrap();
    let claims = k.verify_sa_token(t.token.expose_secret()).unwrap();
    assert_eq!(claims.aud, vec!["https://vault.example", "api"]);
    assert_eq!(claims.exp - claims.iat, 3600);
    assert_eq!(claims.sub, "system:serviceaccount:ci:deployer");
    assert_eq!(t.not_after.timestamp(), claims.exp);
    assert_eq!(t.not_before, now);
    assert_eq!(t.fingerprint, fingerprint(t.token.expose_secret()));
    assert_eq!(t.details, serde_json::json!({}));
    assert!(!format!("{t:?}").contains(t.token.expose_secret()));
    // Unbound: retiring is a no-op and the token stays valid until it expires.
    tokens::retire(&client, &spec, &t.details).await.unwrap();
    assert!(
        k.authenticate(t.token.expose_secret(), &["api".into()])
            .is_ok()
    );
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}

#[tokio::test]
async fn bound_token_is_revoked_by_retiring_its_secret() {
    let k = KubeStandIn::start();
    k.add_namespace("ci");
    k.put(fixtures::service_account("ci", "deployer")).unwrap();
    let client = k.client().await;
    let spec = fixtures::token_spec("ci", "deployer", &["api"], Duration::from_secs(600), true);
    let t = tokens::issue(&client, &spec, 7, chrono::Utc::now())
        .await
        .unwrap();
    let bound = &t.details["bound_secret"];
    assert_eq!(bound["name"], "deployer-rekey-token-7");
    let secret = k.get("Secret", "ci", "deployer-rekey-token-7").unwrap();
    assert_eq!(secret["metadata"]["annotations"]["rekey.io/version"], "7");
    assert_eq!(bound["uid"], secret["metadata"]["uid"]);
    let claims = k.verify_sa_token(t.token.expose_secret()).unwrap();
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(
        claims.kubernetes.secret.as_ref().unwrap().name,
        "deployer-rekey-token-7"
    );
    assert!(
        k.authenticate(t.token.expose_secret(), &["api".into()])
            .is_ok()
    );

    // Issuing the same version again (a retried rotation) reuses the Secret.
    let again = tokens::issue(&client, &spec, 7, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(again.details["bound_secret"]["uid"], bound["uid"]);

    tokens::retire(&client, &spec, &t.details).await.unwrap();
    assert!(k.get("Secret", "ci", "deployer-rekey-token-7").is_none());
    let e = k
        .authenticate(t.token.expose_secret(), &["api".into()])
        .unwrap_err();
    assert!(e.contains("deleted"), "{e}");
    tokens::retire(&client, &spec, &t.details).await.unwrap();
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}

#[tokio::test]
async fn failed_token_request_is_retryable_and_leaves_no_secret() {
    let k = KubeStandIn::start();
    k.add_namespace("ci");
    k.put(fixtures::service_account("ci", "deployer")).unwrap();
    let client = k.client().await;
    let spec = fixtures::token_spec("ci", "deployer", &[], Duration::from_secs(3600), true);
    k.inject(Fault::new(
        "create",
        "serviceaccounts/token",
        FaultKind::Status(500),
        1,
    ));
    let e = tokens::issue(&client, &spec, 3, chrono::Utc::now())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(k.get("Secret", "ci", "deployer-rekey-token-3").is_none());
    // A missing service account is not retryable.
    let ghost = fixtures::token_spec("ci", "ghost", &[], Duration::from_secs(3600), false);
    let e = tokens::issue(&client, &ghost, 1, chrono::Utc::now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(404), "{e}");
    assert!(!e.is_retryable());
}

#[test]
fn token_lifetime_below_ten_minutes_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rekey.toml");
    std::fs::write(
        &cfg,
        r#"
[database]
url = "postgres://rekey@127.0.0.1:1/rekey"

[[token]]
name = "sa-token/ci/deployer"
namespace = "ci"
service_account = "deployer"
lifetime = "599s"
sink = { kind = "kubernetes-secret", namespace = "ci", name = "deployer-token" }
"#,
    )
    .unwrap();
    let out = run(rekey().args(["token", "list", "--config"]).arg(&cfg));
    let (code, _, err) = outcome(&out);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("token[0].lifetime"), "{err}");
    assert!(err.contains("expirationSeconds >= 600"), "{err}");
}
