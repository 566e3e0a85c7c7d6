//! Bootstrap tokens end to end against the stand-in: the watcher
//! (`k8s::bootstrap::run`) as rekey's ServiceAccount, the `rekey token` CLI
//! through the real binary, nodes joining with their token.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rekey::{
    k8s::{BootstrapTokensConfig, bootstrap},
    store::audit::Filter,
};
use rekey_integration::{
    bin::{outcome, rekey, run},
    kube::{KubeStandIn, fixtures},
    pg::{TestDb, fresh_db},
    wait::{check, eventually},
};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

struct Watcher {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn start(db: &TestDb, k: &KubeStandIn, config: BootstrapTokensConfig) -> Self {
        let stop = CancellationToken::new();
        let client = k.client().await;
        let store = db.store.clone();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            bootstrap::run(store, client, config, s)
                .await
                .expect("watcher");
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

async fn state_of(db: &TestDb, id: &str) -> Option<String> {
    bootstrap::db::token(&db.store, id)
        .await
        .unwrap()
        .map(|t| t.state)
}

/// Waits until the token's row is in `state`.
async fn wait_state(db: &TestDb, id: &str, state: &str, limit: Duration) {
    eventually(&format!("token {id} to be {state}"), limit, async || {
        check(state_of(db, id).await, |s| s.as_deref() == Some(state))
    })
    .await;
}

/// Waits until the Secret `kube-system/<name>` is gone.
async fn wait_secret_gone(k: &KubeStandIn, name: &str, limit: Duration) {
    eventually(&format!("Secret {name} to be deleted"), limit, async || {
        let version = k
            .get("Secret", "kube-system", name)
            .map(|s| s["metadata"]["resourceVersion"].clone());
        check(version, Option::is_none)
    })
    .await;
}

/// Waits until a watcher started after `before` (the stand-in's request
/// counts then) has relisted Secrets, CSRs and Nodes and handled what it
/// found: the watcher handles a list's end (`InitDone`) before it polls that
/// stream again, and only that poll opens the WATCH, so a new WATCH of each
/// resource after a new LIST means the relist's work is done.
async fn wait_relisted(k: &KubeStandIn, before: &BTreeMap<(String, String), usize>) {
    let resources = ["secrets", "certificatesigningrequests", "nodes"];
    eventually(
        "the new watcher to relist and then watch",
        Duration::from_secs(20),
        async || {
            let now = k.request_counts();
            let grew = |verb: &str, r: &str| {
                let key = (verb.to_string(), r.to_string());
                now.get(&key).copied().unwrap_or(0) > before.get(&key).copied().unwrap_or(0)
            };
            let pending: Vec<&str> = resources
                .into_iter()
                .filter(|r| !(grew("list", r) && grew("watch", r)))
                .collect();
            check(pending, Vec::is_empty)
        },
    )
    .await;
}

async fn revoke_events(db: &TestDb, id: &str) -> usize {
    db.store
        .audit_events(&Filter {
            action: Some("bootstrap_token.revoke".into()),
            target: Some(format!("bootstrap-token/{id}")),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

fn cli_create(k: &KubeStandIn, db: &TestDb, extra: &[&str]) -> String {
    let out = run(rekey()
        .args(["token", "create", "--kubeconfig"])
        .arg(k.kubeconfig())
        .args(["--database-url", &db.url])
        .args(extra));
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    let token = stdout.trim().to_string();
    assert_eq!(
        stdout.lines().count(),
        1,
        "the token alone on stdout: {stdout}"
    );
    token
}

#[tokio::test]
async fn token_used_by_a_node_is_revoked_within_seconds() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    let w = Watcher::start(&db, &k, BootstrapTokensConfig::default()).await;
    let token = cli_create(&k, &db, &["--ttl", "1h", "--description", "worker pool a"]);
    // The stand-in's bootstrap authenticator accepts what `rekey token create` wrote.
    let user = k.check_bootstrap_token(&token).unwrap();
    let id = token.split('.').next().unwrap().to_string();
    assert_eq!(user.username, format!("system:bootstrap:{id}"));
    assert!(
        user.groups
            .contains(&"system:bootstrappers:kubeadm:default-node-token".to_string())
    );
    let secret = k
        .get("Secret", "kube-system", &format!("bootstrap-token-{id}"))
        .unwrap();
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    let mut keys: Vec<&str> = secret["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "auth-extra-groups",
            "description",
            "expiration",
            "token-id",
            "token-secret",
            "usage-bootstrap-authentication",
            "usage-bootstrap-signing"
        ]
    );
    assert_eq!(state_of(&db, &id).await.as_deref(), Some("active"));

    k.join_node(&token, "worker-1").await;
    let joined = Instant::now();
    wait_secret_gone(
        &k,
        &format!("bootstrap-token-{id}"),
        Duration::from_secs(10),
    )
    .await;
    let took = joined.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "revoked {took:?} after the node registered"
    );
    wait_state(&db, &id, "revoked", Duration::from_secs(5)).await;
    let row = bootstrap::db::token(&db.store, &id).await.unwrap().unwrap();
    assert_eq!(row.revoked_reason.as_deref(), Some("joined"));
    assert_eq!(row.revoked_node.as_deref(), Some("worker-1"));
    assert_eq!(revoke_events(&db, &id).await, 1);
    // The token no longer authenticates.
    assert!(k.check_bootstrap_token(&token).is_err());

    let out = run(rekey().args(["token", "list", "--json", "--database-url", &db.url]));
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let t = &v["tokens"][0];
    assert_eq!(
        (t["id"].as_str(), t["state"].as_str()),
        (Some(id.as_str()), Some("revoked"))
    );
    assert_eq!(t["joins"][0]["node_name"], "worker-1");
    assert_eq!(t["description"], "worker pool a");
    assert!(
        !stdout.contains(token.split('.').nth(1).unwrap()),
        "the secret part never appears"
    );
    let out = run(rekey().args(["token", "list", "--database-url", &db.url]));
    let (code, table, _) = outcome(&out);
    assert_eq!(code, 0);
    assert!(
        table.contains(&id) && table.contains("revoked") && table.contains("joined: worker-1"),
        "{table}"
    );
    w.stop().await;
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}

#[tokio::test]
async fn join_is_recorded_when_the_csr_is_deleted_right_after_approval() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    let w = Watcher::start(&db, &k, BootstrapTokensConfig::default()).await;
    let (secret, token) =
        fixtures::bootstrap_secret("abc123", Some(chrono::TimeDelta::hours(1)), None);
    k.put(secret).unwrap();
    eventually("discovery of abc123", Duration::from_secs(5), async || {
        check(state_of(&db, "abc123").await, Option::is_some)
    })
    .await;
    // The kubelet's CSR, approved and issued, then garbage-collected at once,
    // all before the node registers.
    let kc = k.write_kubeconfig("node-x", token.expose_secret(), None);
    let node_client = rekey::k8s::client(Some(&kc), None).await.unwrap();
    let csrs: kube::Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        kube::Api::all(node_client);
    csrs.create(
        &Default::default(),
        &serde_json::from_value(fixtures::node_csr("csr-x", "node-x")).unwrap(),
    )
    .await
    .unwrap();
    k.approve_and_issue("csr-x").unwrap();
    k.delete("CertificateSigningRequest", "", "csr-x").unwrap();
    eventually(
        "the join to be recorded with its CSR deleted",
        Duration::from_secs(5),
        async || {
            let joins = bootstrap::db::joins(&db.store, "abc123").await.unwrap();
            let deleted: Vec<_> = joins.iter().map(|j| j.csr_deleted_at).collect();
            check(deleted, |d| d.first().is_some_and(Option::is_some))
        },
    )
    .await;
    let j = &bootstrap::db::joins(&db.store, "abc123").await.unwrap()[0];
    assert_eq!(j.node_name, "node-x");
    assert!(j.approved_at.is_some() && j.issued_at.is_some());
    assert_eq!(
        state_of(&db, "abc123").await.as_deref(),
        Some("active"),
        "no node yet"
    );
    // The node registers only now.
    k.put(fixtures::node("node-x")).unwrap();
    wait_state(&db, "abc123", "revoked", Duration::from_secs(5)).await;
    assert!(
        k.get("Secret", "kube-system", "bootstrap-token-abc123")
            .is_none()
    );
    w.stop().await;
}

#[tokio::test]
async fn token_kept_until_expiry_survives_two_joins() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    let cfg = BootstrapTokensConfig {
        keep_until_expiry: vec!["keep02".into()],
        ..Default::default()
    };
    let w = Watcher::start(&db, &k, cfg).await;
    // One by label, one by the config list.
    let (s1, t1) = fixtures::bootstrap_secret(
        "keep01",
        Some(chrono::TimeDelta::seconds(8)),
        Some("keep-until-expiry"),
    );
    let (s2, t2) = fixtures::bootstrap_secret("keep02", Some(chrono::TimeDelta::hours(1)), None);
    k.put(s1).unwrap();
    k.put(s2).unwrap();
    k.join_node(t1.expose_secret(), "a-1").await;
    k.join_node(t1.expose_secret(), "a-2").await;
    k.join_node(t2.expose_secret(), "b-1").await;
    k.join_node(t2.expose_secret(), "b-2").await;
    wait_state(&db, "keep01", "used", Duration::from_secs(5)).await;
    wait_state(&db, "keep02", "used", Duration::from_secs(5)).await;
    let used_at = chrono::Utc::now();
    // At expiry keep01 goes: the sweep revokes it. Sweeps run every
    // SWEEP_INTERVAL, so several ran between the joins and its expiry, and
    // none of them revoked either token early.
    wait_state(&db, "keep01", "revoked", Duration::from_secs(15)).await;
    let row = bootstrap::db::token(&db.store, "keep01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.revoked_reason.as_deref(), Some("expired"));
    let (revoked_at, expiration) = (row.revoked_at.unwrap(), row.expiration.unwrap());
    assert!(
        revoked_at >= expiration,
        "keep01 revoked early: at {revoked_at}, expiring {expiration}"
    );
    assert!(
        expiration - used_at >= chrono::TimeDelta::from_std(bootstrap::SWEEP_INTERVAL).unwrap(),
        "the scenario needs a sweep between the joins and the expiry"
    );
    assert!(
        k.get("Secret", "kube-system", "bootstrap-token-keep02")
            .is_some(),
        "keep02 revoked early"
    );
    for id in ["keep01", "keep02"] {
        assert_eq!(bootstrap::db::joins(&db.store, id).await.unwrap().len(), 2);
    }
    assert_eq!(state_of(&db, "keep02").await.as_deref(), Some("used"));
    w.stop().await;
}

#[tokio::test]
async fn unused_token_past_max_age_is_revoked() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    let cfg = BootstrapTokensConfig {
        max_age: Some(Duration::from_secs(3).into()),
        ..Default::default()
    };
    let w = Watcher::start(&db, &k, cfg).await;
    let (secret, _) = fixtures::bootstrap_secret(
        "old001",
        Some(chrono::TimeDelta::hours(24)),
        Some("keep-until-expiry"),
    );
    k.put(secret).unwrap();
    wait_state(&db, "old001", "active", Duration::from_secs(5)).await;
    wait_state(&db, "old001", "revoked", Duration::from_secs(15)).await;
    let row = bootstrap::db::token(&db.store, "old001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.revoked_reason.as_deref(), Some("max-age"));
    assert!(
        k.get("Secret", "kube-system", "bootstrap-token-old001")
            .is_none()
    );
    assert_eq!(revoke_events(&db, "old001").await, 1);
    w.stop().await;
}

#[tokio::test]
async fn no_token_is_revoked_twice() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    // Two watchers on one database (as if two replicas ran one), plus the CLI.
    let w1 = Watcher::start(&db, &k, BootstrapTokensConfig::default()).await;
    let w2 = Watcher::start(&db, &k, BootstrapTokensConfig::default()).await;
    let (secret, token) =
        fixtures::bootstrap_secret("twice1", Some(chrono::TimeDelta::hours(1)), None);
    k.put(secret).unwrap();
    k.join_node(token.expose_secret(), "n-1").await;
    wait_state(&db, "twice1", "revoked", Duration::from_secs(5)).await;
    let out = run(rekey()
        .args(["token", "revoke", "twice1", "--kubeconfig"])
        .arg(k.kubeconfig())
        .args(["--database-url", &db.url]));
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("already revoked"), "{stdout}");
    // A restarted watcher relists everything and does nothing more.
    w1.stop().await;
    let before = k.request_counts();
    let w3 = Watcher::start(&db, &k, BootstrapTokensConfig::default()).await;
    wait_relisted(&k, &before).await;
    let deletes = k
        .requests()
        .into_iter()
        .filter(|r| r.verb == "delete" && r.name == "bootstrap-token-twice1")
        .count();
    assert_eq!(deletes, 1, "one DELETE of the token's secret");
    assert_eq!(revoke_events(&db, "twice1").await, 1, "one audit event");
    w2.stop().await;
    w3.stop().await;
}

#[tokio::test]
async fn token_cli_revoke_and_bad_input() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    let token = cli_create(&k, &db, &["--ttl", "2h", "--keep-until-expiry"]);
    let id = token.split('.').next().unwrap().to_string();
    let row = bootstrap::db::token(&db.store, &id).await.unwrap().unwrap();
    assert_eq!(row.policy, "keep-until-expiry");
    let exp = row.expiration.unwrap() - chrono::Utc::now();
    assert!(
        exp > chrono::TimeDelta::minutes(119) && exp <= chrono::TimeDelta::hours(2),
        "{exp}"
    );

    // Live tokens show in `rekey status` with their expiry.
    let status = || {
        let out = run(rekey().args(["status", "--json", "--database-url", &db.url]));
        let (code, stdout, err) = outcome(&out);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let v = status();
    let row = v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == format!("bootstrap-token/{id}"))
        .cloned()
        .expect("the token in rekey status");
    assert_eq!(
        (row["kind"].as_str(), row["state"].as_str()),
        (Some("bootstrap_token"), Some("valid"))
    );
    assert!(row["not_after"].is_string());

    let revoke = |id: &str| {
        run(rekey()
            .args(["token", "revoke", id, "--kubeconfig"])
            .arg(k.kubeconfig())
            .args(["--database-url", &db.url]))
    };
    let (code, stdout, err) = outcome(&revoke(&id));
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("revoked"), "{stdout}");
    assert!(
        k.get("Secret", "kube-system", &format!("bootstrap-token-{id}"))
            .is_none()
    );
    let row = bootstrap::db::token(&db.store, &id).await.unwrap().unwrap();
    assert_eq!(
        (row.state.as_str(), row.revoked_reason.as_deref()),
        ("revoked", Some("manual"))
    );
    assert_eq!(revoke_events(&db, &id).await, 1);
    let v = status();
    assert!(
        !v["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == format!("bootstrap-token/{id}")),
        "a revoked token leaves rekey status: {v}"
    );

    // A token rekey never saw is read from the cluster, then revoked.
    let (secret, _) = fixtures::bootstrap_secret("fresh1", None, None);
    k.put(secret).unwrap();
    assert_eq!(outcome(&revoke("fresh1")).0, 0);
    assert_eq!(state_of(&db, "fresh1").await.as_deref(), Some("revoked"));

    let (code, _, err) = outcome(&revoke("zzzzzz"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no bootstrap token `zzzzzz`"), "{err}");
    let (code, _, err) = outcome(&revoke("NOT-AN-ID"));
    assert_eq!(code, 2, "{err}");
    let out = run(rekey()
        .args([
            "token",
            "create",
            "--groups",
            "system:masters",
            "--kubeconfig",
        ])
        .arg(k.kubeconfig()));
    let (code, _, err) = outcome(&out);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("system:masters"), "{err}");
    let out = run(rekey()
        .args(["token", "create", "--ttl", "soon", "--kubeconfig"])
        .arg(k.kubeconfig()));
    assert_eq!(outcome(&out).0, 2);
    let out = run(rekey().args(["token", "create", "--kubeconfig", "/nonexistent/kubeconfig"]));
    let (code, _, err) = outcome(&out);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    // KUBECONFIG works like --kubeconfig.
    let out = run(rekey()
        .args(["token", "create"])
        .env("KUBECONFIG", k.kubeconfig()));
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    assert!(k.check_bootstrap_token(stdout.trim()).is_ok());
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}

/// An etcd restore from a snapshot taken before a revocation brings the
/// token's Secret back with its old uid, and the token authenticates again.
/// The watcher's relist finds a Secret for a token Postgres says was revoked,
/// and deletes it again (one more revoke event), instead of trusting its row.
#[tokio::test]
async fn revoked_token_brought_back_by_an_etcd_restore_is_deleted_again() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    let w = Watcher::start(&db, &k, BootstrapTokensConfig::default()).await;
    let token = cli_create(&k, &db, &["--ttl", "1h"]);
    let id = token.split('.').next().unwrap().to_string();
    let name = format!("bootstrap-token-{id}");
    let snapshot = k.get("Secret", "kube-system", &name).unwrap();
    k.join_node(&token, "worker-restored").await;
    wait_state(&db, &id, "revoked", Duration::from_secs(10)).await;
    assert!(k.get("Secret", "kube-system", &name).is_none());
    assert_eq!(revoke_events(&db, &id).await, 1);
    w.stop().await;

    // The restore: the Secret is back as it was, and the token works again.
    let restored = k.restore(snapshot.clone()).unwrap();
    assert_eq!(restored["metadata"]["uid"], snapshot["metadata"]["uid"]);
    assert!(k.check_bootstrap_token(&token).is_ok());

    // rekey starts (or relists) and deletes it again; the relist's work
    // (the DELETE, then its audit event) is done once the watches are open.
    let before = k.request_counts();
    let w = Watcher::start(&db, &k, BootstrapTokensConfig::default()).await;
    wait_secret_gone(&k, &name, Duration::from_secs(10)).await;
    wait_relisted(&k, &before).await;
    assert!(k.check_bootstrap_token(&token).is_err());
    assert_eq!(state_of(&db, &id).await.as_deref(), Some("revoked"));
    assert_eq!(revoke_events(&db, &id).await, 2);
    let events = db
        .store
        .audit_events(&Filter {
            action: Some("bootstrap_token.revoke".into()),
            target: Some(format!("bootstrap-token/{id}")),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| e.details["reason"] == "reappeared"),
        "{events:?}"
    );
    // A later relist finds nothing more to do.
    w.stop().await;
    let before = k.request_counts();
    let w = Watcher::start(&db, &k, BootstrapTokensConfig::default()).await;
    wait_relisted(&k, &before).await;
    assert_eq!(revoke_events(&db, &id).await, 2);
    w.stop().await;
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}
