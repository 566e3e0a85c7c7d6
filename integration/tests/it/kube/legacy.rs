//! Legacy long-lived service-account token Secrets are found and shown as no-expiry.

use rekey::{k8s::legacy, store::credentials::State};
use rekey_integration::{
    bin::{outcome, rekey, run},
    kube::KubeStandIn,
    pg::fresh_db,
};
use serde_json::json;

fn legacy_secret(ns: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "annotations": {"kubernetes.io/service-account.name": "old-sa"}},
        "type": "kubernetes.io/service-account-token", "stringData": {"token": "never-read-by-rekey"}})
}

#[tokio::test]
async fn legacy_tokens_are_discovered_without_expiry() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    k.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "old"}}))
        .unwrap();
    k.put(legacy_secret("old", "old-sa-token")).unwrap();
    k.put(legacy_secret("default", "builder-token")).unwrap();
    k.put(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "plain", "namespace": "old"}, "type": "Opaque"})).unwrap();
    let client = k.client().await;
    assert_eq!(legacy::discover(&db.store, &client).await.unwrap(), 2);
    let creds = db.store.list_credentials().await.unwrap();
    let names: Vec<&str> = creds.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "legacy-sa-token/default/builder-token",
            "legacy-sa-token/old/old-sa-token"
        ]
    );
    let c = &creds[1];
    assert_eq!(
        (c.kind.as_str(), c.source.as_str(), c.managed),
        ("service_account_token", "discovered", false)
    );
    assert!(c.not_after.is_none());
    assert_eq!(c.state(chrono::Utc::now()), State::NoExpiry);
    assert_eq!(c.spec["service_account"], "old-sa");
    // Metadata only: the listing never carried the token.
    assert!(
        k.requests()
            .iter()
            .any(|r| r.verb == "list" && r.resource == "secrets" && r.namespace.is_empty())
    );

    // `rekey status` shows them as no-expiry, with a warning, and does not fail on them.
    let out = run(rekey().args(["status", "--json", "--database-url", &db.url]));
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let row = v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "legacy-sa-token/old/old-sa-token")
        .unwrap()
        .clone();
    assert_eq!(row["state"], "no-expiry");
    assert_eq!(row["kind"], "service_account_token");
    assert!(row["not_after"].is_null());
    let out = run(rekey().args(["status", "--database-url", &db.url]));
    let (_, table, err) = outcome(&out);
    assert!(table.contains("no-expiry"), "{table}");
    assert!(
        format!("{table}{err}").contains("never expire"),
        "{table}{err}"
    );

    // Gone from the cluster: removed from the inventory.
    k.delete("Secret", "old", "old-sa-token").unwrap();
    assert_eq!(legacy::discover(&db.store, &client).await.unwrap(), 1);
    let names: Vec<String> = db
        .store
        .list_credentials()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["legacy-sa-token/default/builder-token"]);
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}
