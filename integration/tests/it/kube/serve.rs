//! `rekey serve` against the Kubernetes API stand-in: kubernetes-secret
//! sinks, service-account tokens, consumer reload, bootstrap tokens — all
//! through the real binary, as rekey's ServiceAccount under `deploy/` RBAC.

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::STANDARD};
use rekey_integration::{
    bin::{outcome, rekey, run},
    kube::{Fault, FaultKind, KubeStandIn, fixtures},
    serve::{Scenario, Server, wait_for},
    wait::{Text, check, eventually},
};
use serde_json::{Value, json};

fn kube_section(k: &KubeStandIn, extra: &str) -> String {
    format!(
        "[kubernetes]\nkubeconfig = \"{}\"\n{extra}\n",
        k.kubeconfig().display()
    )
}

fn cert(name: &str, ns: &str, secret: &str, lifetime: &str, fraction: f64, extra: &str) -> String {
    format!(
        "[[certificate]]\nname = \"{name}\"\ndns_names = [\"{secret}.{ns}.svc\"]\nlifetime = \"{lifetime}\"\nrenew_fraction = {fraction}\n\
         sink = {{ kind = \"kubernetes-secret\", namespace = \"{ns}\", name = \"{secret}\" }}\n{extra}\n"
    )
}

fn version_of(s: &Value) -> Option<i64> {
    s["metadata"]["annotations"]["rekey.io/version"]
        .as_str()?
        .parse()
        .ok()
}

fn data(s: &Value, key: &str) -> String {
    String::from_utf8(
        STANDARD
            .decode(s["data"][key].as_str().unwrap_or(""))
            .unwrap(),
    )
    .unwrap()
}

/// Waits until the Secret carries a version other than `not`; returns it.
fn next_version(
    k: &KubeStandIn,
    ns: &str,
    name: &str,
    not: Option<i64>,
    patience: Duration,
    server: &Server,
) -> Value {
    wait_for(patience, || {
        k.get("Secret", ns, name)
            .filter(|s| version_of(s).is_some() && version_of(s) != not)
    })
    .unwrap_or_else(|| {
        panic!(
            "secret {ns}/{name} did not get a version after {not:?}:\n{}",
            server.log()
        )
    })
}

fn alive(server: &mut Server) -> bool {
    matches!(server.child.try_wait(), Ok(None))
}

fn leaf_validity(pem: &str) -> i64 {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let x = p.parse_x509().unwrap();
    x.validity().not_after.timestamp() - x.validity().not_before.timestamp()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_secret_published_rotated_and_consumers_rolled() {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    k.add_namespace("web");
    k.put(fixtures::workload("Deployment", "web", "web"))
        .unwrap();
    // Someone else's Secrets: one left alone, one taken over (adopt = true).
    for name in ["foreign", "adopted"] {
        k.put(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "web", "labels": {"team": "a"}},
            "type": "Opaque", "stringData": {"password": "x"}}))
            .unwrap();
    }
    let foreign_before = k.get("Secret", "web", "foreign").unwrap();
    let config = format!(
        "{}{}{}{}{}",
        s.config_head("max_jitter = \"0s\""),
        kube_section(&k, ""),
        cert(
            "cert/web/web-tls",
            "web",
            "web-tls",
            "20s",
            0.5,
            "reload = [\"deployment/web/web\"]"
        ),
        cert("cert/web/foreign", "web", "foreign", "1h", 0.5, ""),
        cert(
            "cert/web/adopted",
            "web",
            "adopted",
            "1h",
            0.5,
            "adopt = true"
        ),
    );
    let config = s.write_config("rekey.toml", &config);
    let mut server = s.serve(&config, &[]);

    let v1 = next_version(&k, "web", "web-tls", None, Duration::from_secs(30), &server);
    assert_eq!(v1["type"], "kubernetes.io/tls");
    let mut keys: Vec<&str> = v1["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    let not_after = v1["metadata"]["annotations"]["rekey.io/not-after"]
        .as_str()
        .unwrap();
    chrono::DateTime::parse_from_rfc3339(not_after).unwrap();
    assert_eq!(leaf_validity(&data(&v1, "tls.crt")), 20);
    assert!(data(&v1, "tls.key").contains("PRIVATE KEY"));
    let restarted = wait_for(Duration::from_secs(10), || {
        k.get("Deployment", "web", "web")?["spec"]["template"]["metadata"]["annotations"]["rekey.io/restarted-at"]
            .as_str()
            .map(String::from)
    })
    .expect("the consumer was not restarted");

    // Rotated at half its lifetime: a new version, a new certificate, consumers rolled again.
    let v2 = next_version(
        &k,
        "web",
        "web-tls",
        version_of(&v1),
        Duration::from_secs(30),
        &server,
    );
    assert!(version_of(&v2) > version_of(&v1));
    // Beside the version id recovery reads, the number people read.
    let number =
        |v: &serde_json::Value| v["metadata"]["annotations"]["rekey.io/version-number"].clone();
    assert_eq!((number(&v1), number(&v2)), (json!("1"), json!("2")));
    assert_ne!(data(&v2, "tls.crt"), data(&v1, "tls.crt"));
    assert_eq!(v2["metadata"]["uid"], v1["metadata"]["uid"]);
    wait_for(Duration::from_secs(10), || {
        let d = k.get("Deployment", "web", "web")?;
        (d["spec"]["template"]["metadata"]["annotations"]["rekey.io/restarted-at"].as_str()?
            != restarted)
            .then_some(())
    })
    .expect("the consumer was not restarted after the rotation");
    let current: Option<i64> = sqlx::query_scalar(
        "SELECT current_version FROM credentials WHERE name = 'cert/web/web-tls'",
    )
    .fetch_one(s.db.pool())
    .await
    .unwrap();
    assert!(current >= version_of(&v2));

    // The adopted Secret is rekey's now; the foreign one is untouched and the failure is recorded.
    let adopted = next_version(&k, "web", "adopted", None, Duration::from_secs(10), &server);
    assert_eq!(adopted["type"], "kubernetes.io/tls");
    assert_eq!(adopted["metadata"]["labels"]["team"], "a");
    let err: Option<String> = wait_for(Duration::from_secs(10), || {
        futures::executor::block_on(
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT last_error FROM credentials WHERE name = 'cert/web/foreign'",
            )
            .fetch_one(s.db.pool()),
        )
        .ok()
        .flatten()
    });
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("refusing to overwrite")),
        "{err:?}"
    );
    assert_eq!(k.get("Secret", "web", "foreign").unwrap(), foreign_before);
    assert!(alive(&mut server));
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_are_retried_and_an_api_outage_is_survived() {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    k.add_namespace("web");
    // A Secret rekey published before (it carries the annotation): the first publish is an update.
    k.put(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "web-tls", "namespace": "web", "annotations": {"rekey.io/version": "0"}},
        "type": "kubernetes.io/tls", "stringData": {"tls.crt": "old", "tls.key": "old"}}))
        .unwrap();
    k.inject(Fault::new("update", "secrets", FaultKind::Status(409), 3));
    let config = format!(
        "{}{}{}",
        s.config_head("max_jitter = \"0s\""),
        kube_section(&k, ""),
        cert("cert/web/web-tls", "web", "web-tls", "30s", 0.5, ""),
    );
    let config = s.write_config("rekey.toml", &config);
    let mut server = s.serve(&config, &[]);
    let v1 = next_version(
        &k,
        "web",
        "web-tls",
        Some(0),
        Duration::from_secs(30),
        &server,
    );
    assert_eq!(k.faults_remaining(), 0, "the three conflicts were hit");
    let conflicts = k
        .requests()
        .iter()
        .filter(|r| r.verb == "update" && r.code == 409)
        .count();
    assert_eq!(conflicts, 3);

    // The API goes away for 30 s, across the rotation due at ~15 s (the
    // outage's length is the scenario).
    let down_at = Instant::now();
    k.down_for(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        alive(&mut server),
        "rekey serve exited during the outage:\n{}",
        server.log()
    );
    // The rotation was due and tried during the outage (so the Secret below
    // is unchanged because that attempt failed, not because none was made).
    eventually(
        "a rotation attempt to have failed during the outage",
        Duration::from_secs(10),
        async || {
            let failed: i64 =
                sqlx::query_scalar("SELECT count(*) FROM rotations WHERE status = 'failed'")
                    .fetch_one(s.db.pool())
                    .await
                    .unwrap();
            if failed >= 1 {
                Ok(())
            } else {
                Err(Text(format!("no failed attempt; log:\n{}", server.log())))
            }
        },
    )
    .await;
    assert_eq!(
        version_of(&k.get("Secret", "web", "web-tls").unwrap()),
        version_of(&v1)
    );
    let v2 = next_version(
        &k,
        "web",
        "web-tls",
        version_of(&v1),
        Duration::from_secs(60),
        &server,
    );
    assert!(down_at.elapsed() >= Duration::from_secs(30));
    assert!(version_of(&v2) > version_of(&v1));
    // The Secret shows v2 as soon as it is published; the commit that
    // records it (and resets the failure count) follows.
    let (_, failures) = eventually(
        "the commit of v2 (current version, failures)",
        Duration::from_secs(15),
        async || {
            let row: (Option<i64>, i32) = sqlx::query_as(
                "SELECT current_version, failures FROM credentials WHERE name = 'cert/web/web-tls'",
            )
            .fetch_one(s.db.pool())
            .await
            .unwrap();
            check(row, |(current, _)| *current >= version_of(&v2))
        },
    )
    .await;
    assert_eq!(failures, 0, "the rotation completed after the outage");
    let statuses: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, error FROM rotations ORDER BY requested_at")
            .fetch_all(s.db.pool())
            .await
            .unwrap();
    let failed_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE outcome = 'failure'")
            .fetch_one(s.db.pool())
            .await
            .unwrap();
    assert!(
        failed_events >= 1,
        "attempts during the outage failed and were retried: {statuses:?}"
    );
    assert!(alive(&mut server));
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_token_rotated_with_exp_and_aud() {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    k.add_namespace("ci");
    k.put(fixtures::service_account("ci", "deployer")).unwrap();
    k.put(fixtures::service_account("ci", "builder")).unwrap();
    let config = format!(
        "{}{}\
         [[token]]\nname = \"sa-token/ci/deployer\"\nnamespace = \"ci\"\nservice_account = \"deployer\"\n\
         audiences = [\"https://vault.example\", \"ci\"]\nlifetime = \"10m\"\nrenew_fraction = 0.01\n\
         sink = {{ kind = \"kubernetes-secret\", namespace = \"ci\", name = \"deployer-token\" }}\n\n\
         [[token]]\nname = \"sa-token/ci/builder\"\nnamespace = \"ci\"\nservice_account = \"builder\"\n\
         lifetime = \"10m\"\nrenew_fraction = 0.01\nbound = true\ngrace = \"1s\"\n\
         sink = {{ kind = \"kubernetes-secret\", namespace = \"ci\", name = \"builder-token\" }}\n",
        s.config_head("max_jitter = \"0s\""),
        kube_section(&k, ""),
    );
    let config = s.write_config("rekey.toml", &config);
    let server = s.serve(&config, &[]);
    let v1 = next_version(
        &k,
        "ci",
        "deployer-token",
        None,
        Duration::from_secs(30),
        &server,
    );
    assert_eq!(v1["type"], "Opaque");
    let t1 = data(&v1, "token");
    let c1 = k.verify_sa_token(&t1).unwrap();
    assert_eq!(c1.aud, vec!["https://vault.example", "ci"]);
    assert_eq!(c1.exp - c1.iat, 600);
    assert_eq!(c1.sub, "system:serviceaccount:ci:deployer");
    let not_after = chrono::DateTime::parse_from_rfc3339(
        v1["metadata"]["annotations"]["rekey.io/not-after"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(not_after.timestamp(), c1.exp);
    // renew_fraction 0.01 of 10 minutes: rotated after ~6 s.
    let v2 = next_version(
        &k,
        "ci",
        "deployer-token",
        version_of(&v1),
        Duration::from_secs(30),
        &server,
    );
    let t2 = data(&v2, "token");
    assert_ne!(t1, t2);
    let c2 = k.verify_sa_token(&t2).unwrap();
    assert_eq!(c2.exp - c2.iat, 600);
    assert!(c2.iat >= c1.iat);
    let db_not_after: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT not_after FROM credential_versions WHERE id = $1")
            .bind(version_of(&v2).unwrap())
            .fetch_one(s.db.pool())
            .await
            .unwrap();
    assert_eq!(db_not_after.unwrap().timestamp(), c2.exp);
    // The unrotated old token still works: TokenRequest tokens expire, they are not revoked.
    assert!(k.authenticate(&t1, &["ci".into()]).is_ok());

    // A bound token: its per-version Secret exists and the token is bound to it.
    let b = next_version(
        &k,
        "ci",
        "builder-token",
        None,
        Duration::from_secs(30),
        &server,
    );
    let claims = k.verify_sa_token(&data(&b, "token")).unwrap();
    let bound = claims.kubernetes.secret.expect("bound to a Secret");
    assert_eq!(
        bound.name,
        format!("builder-rekey-token-{}", version_of(&b).unwrap())
    );
    assert!(k.get("Secret", "ci", &bound.name).is_some());
    assert_eq!(
        claims.aud,
        vec![rekey_integration::kube::auth::API_AUDIENCE]
    );
    // Rotated after ~6 s; after the 1 s grace the superseded version is
    // retired: its per-version Secret deleted, so its token stops working.
    let b2 = next_version(
        &k,
        "ci",
        "builder-token",
        version_of(&b),
        Duration::from_secs(30),
        &server,
    );
    let old_token = data(&b, "token");
    let audience = vec![rekey_integration::kube::auth::API_AUDIENCE.to_string()];
    assert!(k.authenticate(&data(&b2, "token"), &audience).is_ok());
    eventually(
        "the superseded bound token's Secret to be deleted",
        Duration::from_secs(20),
        async || match k.get("Secret", "ci", &bound.name) {
            None => Ok(()),
            Some(_) => Err(Text(format!("still there; log:\n{}", server.log()))),
        },
    )
    .await;
    assert!(
        k.authenticate(&old_token, &audience).is_err(),
        "a retired bound token must stop authenticating"
    );
    let status = eventually(
        "the superseded version to be marked revoked",
        Duration::from_secs(5),
        async || {
            let status: String =
                sqlx::query_scalar("SELECT status FROM credential_versions WHERE id = $1")
                    .bind(version_of(&b).unwrap())
                    .fetch_one(s.db.pool())
                    .await
                    .unwrap();
            check(status, |s| s == "revoked")
        },
    )
    .await;
    assert_eq!(status, "revoked");
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}

#[tokio::test]
async fn token_expiration_below_600_seconds_exits_2_at_load() {
    let s = Scenario::new().await;
    let config = format!(
        "{}[[token]]\nname = \"sa-token/ci/deployer\"\nnamespace = \"ci\"\nservice_account = \"deployer\"\nlifetime = \"9m\"\n\
         sink = {{ kind = \"kubernetes-secret\", namespace = \"ci\", name = \"deployer-token\" }}\n",
        s.config_head(""),
    );
    let config = s.write_config("rekey.toml", &config);
    let out = run(rekey().arg("serve").arg("--config").arg(&config));
    let (code, _, err) = outcome(&out);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("token[0].lifetime") && err.contains("10m"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_restarts_are_rate_limited() {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    k.add_namespace("web");
    let mut certs = String::new();
    for i in 0..4 {
        k.put(fixtures::workload("Deployment", "web", &format!("app{i}")))
            .unwrap();
        certs.push_str(&cert(
            &format!("cert/web/c{i}"),
            "web",
            &format!("c{i}"),
            "1h",
            0.5,
            &format!("reload = [\"deployment/web/app{i}\"]"),
        ));
    }
    // One restart every 2 s after the first, across the fleet.
    let config = format!(
        "{}{}{certs}",
        s.config_head("max_jitter = \"0s\""),
        kube_section(&k, "reload_per_minute = 30\nreload_burst = 1"),
    );
    let config = s.write_config("rekey.toml", &config);
    let server = s.serve(&config, &[]);
    let times = wait_for(Duration::from_secs(30), || {
        let mut ts = Vec::new();
        for i in 0..4 {
            let d = k.get("Deployment", "web", &format!("app{i}"))?;
            let at = d["spec"]["template"]["metadata"]["annotations"]["rekey.io/restarted-at"]
                .as_str()?;
            ts.push(chrono::DateTime::parse_from_rfc3339(at).ok()?);
        }
        Some(ts)
    })
    .unwrap_or_else(|| panic!("not every consumer was restarted:\n{}", server.log()));
    let mut ts = times;
    ts.sort();
    for w in ts.windows(2) {
        let gap = (w[1] - w[0]).num_milliseconds();
        assert!(
            gap >= 1900,
            "restarts {gap} ms apart: the bucket allows one per 2 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_revokes_a_bootstrap_token_after_join() {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    // No [kubernetes] section: KUBECONFIG (the --kubeconfig flag's variable) says where.
    let config = format!(
        "{}[bootstrap_tokens]\nrevoke_after_join = true\nmax_age = \"24h\"\n",
        s.config_head(""),
    );
    let config = s.write_config("rekey.toml", &config);
    let kubeconfig = k.kubeconfig().display().to_string();
    let server = s.serve(&config, &[("KUBECONFIG", &kubeconfig)]);
    let out = run(rekey()
        .args(["token", "create", "--config"])
        .arg(&config)
        .arg("--kubeconfig")
        .arg(&kubeconfig));
    let (code, token, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let id = token.split('.').next().unwrap().to_string();
    k.join_node(&token, "worker-9").await;
    wait_for(Duration::from_secs(10), || {
        k.get("Secret", "kube-system", &format!("bootstrap-token-{id}"))
            .is_none()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not revoked:\n{}", server.log()));
    let out = run(rekey()
        .args(["token", "list", "--json", "--config"])
        .arg(&config));
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["tokens"][0]["state"], "revoked");
    assert_eq!(v["tokens"][0]["revoked_node"], "worker-9");
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}
