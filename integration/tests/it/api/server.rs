//! The admin API end to end: a real `rekey serve` (engine + API) on a fresh
//! database, called over mutual TLS with certificates for each role, and
//! through the `rekey rotate` / `rekey status --server` commands.

use std::time::Duration;

use rekey_integration::{
    api::{Pki, Serve, certificate_toml, enc},
    bin::{outcome, run},
    pg::fresh_db,
    wait::{Text, check, eventually},
};
use serde_json::Value;

const WEB: &str = "cert/default/web-tls";

async fn server_with_web() -> (rekey_integration::pg::TestDb, Pki, Serve) {
    let db = fresh_db().await;
    let pki = Pki::new();
    let certs = certificate_toml(WEB, "ecdsa-p256", "24h", &pki.dir.path().join("sink-web"));
    let serve = Serve::start(&db, &pki, "", &certs).await;
    (db, pki, serve)
}

/// Waits until the credential has a published version.
async fn wait_published(db: &rekey_integration::pg::TestDb, name: &str) -> i64 {
    eventually(
        &format!("{name} to be published"),
        Duration::from_secs(30),
        async || {
            let v: Option<i64> =
                sqlx::query_scalar("SELECT current_version FROM credentials WHERE name = $1")
                    .bind(name)
                    .fetch_optional(db.pool())
                    .await
                    .unwrap()
                    .flatten();
            v.ok_or("no current version")
        },
    )
    .await
}

async fn json(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, ct, v)
}

async fn audit_rows(
    db: &rekey_integration::pg::TestDb,
    action: &str,
) -> Vec<(String, String, String, Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT actor, target, outcome, reason, request_id FROM audit_events
         WHERE action = $1 AND request_id IS NOT NULL ORDER BY id",
    )
    .bind(action)
    .fetch_all(db.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn handshake_without_client_certificate_or_from_another_ca_is_refused() {
    let (_db, pki, serve) = server_with_web().await;
    let url = format!("{}/v1/credentials", serve.url);

    pki.client_with(None).get(&url).send().await.unwrap_err();
    let foreign = pki.foreign_client_files("admin");
    pki.client_with(Some(foreign.clone()))
        .get(&url)
        .send()
        .await
        .unwrap_err();
    // Refused by the server during the handshake, not answered with an HTTP
    // error (the server may log just after the client sees the alert). The
    // first refusal of a peer is logged with its cause; further ones from
    // the same peer are summarised once a minute, and all are counted.
    eventually(
        "both handshakes refused: the first in the server's log, both counted",
        Duration::from_secs(10),
        async || {
            let log = serve.log();
            let metrics = reqwest::get(format!("{}/metrics", serve.metrics_url))
                .await
                .map_err(|e| Text(e.to_string()))?
                .text()
                .await
                .map_err(|e| Text(e.to_string()))?;
            let counted = metrics.lines().any(|l| {
                l.starts_with("rekey_api_connections_refused_total{")
                    && l.contains("listener=\"api\"")
                    && l.contains("reason=\"tls\"")
                    && l.ends_with(" 2")
            });
            let refused = log.matches("TLS handshake refused").count() == 1
                && (log.contains("CertificateRequired") || log.contains("no certificate"));
            if refused && counted {
                Ok(())
            } else {
                Err(Text(format!("{log}\n{metrics}")))
            }
        },
    )
    .await;

    // The CLI explains both.
    let out = run(serve.cli(&pki, None).args(["status"]));
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("requires a client certificate"), "{stderr}");
    let out = run(serve
        .cli(&pki, None)
        .args(["status", "--cert"])
        .arg(&foreign.0)
        .arg("--key")
        .arg(&foreign.1));
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("refused the client certificate"),
        "{stderr}"
    );

    // A trusted certificate gets through.
    let r = pki.client("viewer").get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn viewer_cannot_rotate_and_the_denial_is_audited() {
    let (db, pki, serve) = server_with_web().await;
    wait_published(&db, WEB).await;
    let r = pki
        .client("viewer")
        .post(format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB)))
        .header("x-request-id", "deny-1")
        .json(&serde_json::json!({"reason": "curious"}))
        .send()
        .await
        .unwrap();
    let (status, ct, body) = json(r).await;
    assert_eq!(status, 403);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["type"], "urn:rekey:problem:forbidden");
    assert_eq!(body["request_id"], "deny-1");
    assert!(
        body["detail"].as_str().unwrap().contains("operator"),
        "{body}"
    );
    let rows = audit_rows(&db, "credential.rotate").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (actor, target, result, reason, request_id) = &rows[0];
    assert!(actor.contains("CN=viewer"), "{actor}");
    assert_eq!(target, WEB);
    assert_eq!(result, "denied");
    assert_eq!(reason.as_deref(), Some("curious"));
    assert_eq!(request_id.as_deref(), Some("deny-1"));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rotations WHERE trigger = 'manual'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);

    // An unmapped CN is authenticated but has no role.
    let r = pki
        .client("stranger")
        .get(format!("{}/v1/credentials", serve.url))
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(r).await;
    assert_eq!(status, 403);
    assert!(
        body["detail"].as_str().unwrap().contains("no role"),
        "{body}"
    );

    // The CLI says so and exits 1.
    let out = run(serve.cli(&pki, Some("viewer")).args(["rotate", WEB]));
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("Forbidden (403)"), "{stderr}");
}

#[tokio::test]
async fn operator_rotates_now_and_a_new_version_is_published() {
    let (db, pki, serve) = server_with_web().await;
    let first_id = wait_published(&db, WEB).await;
    let first = 1;
    let before = std::fs::read(pki.dir.path().join("sink-web/tls.crt")).unwrap();
    let client = pki.client("operator");
    let list_version = || async {
        let (_, _, list) = json(
            client
                .get(format!("{}/v1/credentials", serve.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        list["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == WEB)
            .unwrap()["current_version"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(list_version().await, first);
    let r = client
        .post(format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB)))
        .json(&serde_json::json!({"reason": "key compromise drill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let (_, _, rotation) = json(r).await;
    let id = rotation["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/rotations/{id}"));
    assert_eq!(rotation["trigger"], "manual");
    assert_eq!(rotation["credential"], WEB);

    // Poll the Location until it has finished.
    let done = eventually(
        "the rotation to finish (its Location)",
        Duration::from_secs(30),
        async || {
            let (status, _, r) = json(
                client
                    .get(format!("{}{location}", serve.url))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, 200);
            check(r, |r| r["finished"] == true)
        },
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (_, _, cred) = json(
        client
            .get(format!("{}/v1/credentials/{}", serve.url, enc(WEB)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // `current_version` counts this credential's versions; the id is the
    // stable key (`version_id` of the rotation).
    assert_eq!(cred["current_version"].as_i64().unwrap(), 2, "{cred}");
    assert_ne!(cred["current_version_id"].as_i64().unwrap(), first_id);
    assert_eq!(cred["current_version_id"], done["version_id"]);
    // The list (served from its rendered copy until the table changes) follows at once.
    assert_eq!(
        list_version().await,
        cred["current_version"].as_i64().unwrap()
    );
    assert_eq!(cred["recent_rotations"][0]["id"].as_str().unwrap(), id);
    let after = std::fs::read(pki.dir.path().join("sink-web/tls.crt")).unwrap();
    assert_ne!(before, after, "the sink still holds the old certificate");

    let rows = audit_rows(&db, "credential.rotate").await;
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| r.4.as_deref() == Some(request_id.as_str()))
        .collect();
    assert_eq!(mine.len(), 1, "{rows:?}");
    assert!(mine[0].0.contains("CN=operator"), "{:?}", mine[0]);
    assert_eq!(mine[0].2, "success");
    assert_eq!(mine[0].3.as_deref(), Some("key compromise drill"));
    let requested_by: String =
        sqlx::query_scalar("SELECT requested_by FROM rotations WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert!(requested_by.contains("CN=operator"));

    // The audit log over the API, filtered and paged.
    let (status, _, page) = json(
        client
            .get(format!(
                "{}/v1/audit?action=credential.rotate&limit=1",
                serve.url
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["target"], WEB);
    let next = page["next_after"].as_i64().unwrap();
    let (_, _, page2) = json(
        client
            .get(format!(
                "{}/v1/audit?action=credential.rotate&after={next}",
                serve.url
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        page2["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"].as_i64().unwrap() > next)
    );

    // Metrics: the credential gauges and the engine's counter.
    let text = reqwest::get(format!("{}/metrics", serve.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!(
            "rekey_credential_not_after_seconds{{name=\"{WEB}\",kind=\"certificate\"}}"
        )),
        "{text}"
    );
    assert!(
        text.contains("rekey_credential_next_rotation_seconds{"),
        "{text}"
    );
    assert!(text.contains("rekey_rotations_total{"), "{text}");
    assert!(
        text.contains("rekey_rotation_duration_seconds_bucket{"),
        "{text}"
    );
    // The API listener serves metrics to viewers only.
    let r = pki
        .client("viewer")
        .get(format!("{}/metrics", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn wait_true_answers_with_the_finished_rotation() {
    let (db, pki, serve) = server_with_web().await;
    wait_published(&db, WEB).await;
    let r = pki
        .client("operator")
        .post(format!(
            "{}/v1/credentials/{}/rotate?wait=true",
            serve.url,
            enc(WEB)
        ))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/rotations/")
    );
    let (status, _, body) = json(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["finished"], true);
    assert_eq!(body["status"], "succeeded");
    assert!(body["version_id"].as_i64().is_some());

    // The CLI does the same.
    let out = run(serve.cli(&pki, Some("operator")).args([
        "rotate",
        WEB,
        "--wait",
        "--reason",
        "from the cli",
    ]));
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT reason FROM audit_events WHERE action = 'credential.rotate' AND request_id IS NOT NULL
         ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(reason.as_deref(), Some("from the cli"));

    // And `rekey status --server` prints the inventory (exactly as local status does).
    let out = run(serve.cli(&pki, Some("viewer")).args(["status", "--json"]));
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, 0, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    // ca/default (the issuer's CA) first, then the certificate.
    assert_eq!(doc["credentials"][0]["name"], "ca/default");
    assert_eq!(doc["credentials"][1]["name"], WEB);
    assert_eq!(doc["credentials"][1]["state"], "valid");
    let local = run(rekey_integration::bin::rekey()
        .args(["status", "--json", "--database-url"])
        .arg(&db.url));
    let local: Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(doc, local);
    let out = run(serve.cli(&pki, Some("viewer")).args(["status"]));
    assert!(outcome(&out).1.contains(WEB));
}

#[tokio::test]
async fn concurrent_rotate_now_calls_make_one_rotation() {
    let (db, pki, serve) = server_with_web().await;
    wait_published(&db, WEB).await;
    let client = pki.client("operator");
    let url = format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB));
    let calls = (0..8).map(|_| client.post(&url).send());
    let answers = futures::future::join_all(calls).await;
    let mut ids = std::collections::BTreeSet::new();
    for a in answers {
        let (status, _, body) = json(a.unwrap()).await;
        assert_eq!(status, 202, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    // They all joined one rotation, unless the first had already finished
    // before a later call arrived (then a second one is legitimate).
    let manual: i64 = sqlx::query_scalar("SELECT count(*) FROM rotations WHERE trigger = 'manual'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(manual as usize, ids.len());
    assert!(ids.len() <= 2, "{ids:?}");

    // Idempotency-Key: the same key answers the same rotation even after it finished.
    let open_rotations = async || {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rotations WHERE status IN ('queued', 'running')",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        check(open, |&n| n == 0)
    };
    eventually(
        "no rotation queued or running",
        Duration::from_secs(30),
        open_rotations,
    )
    .await;
    let a = client
        .post(&url)
        .header("idempotency-key", "k-1")
        .send()
        .await
        .unwrap();
    let (_, _, a) = json(a).await;
    eventually(
        "the keyed rotation to finish",
        Duration::from_secs(30),
        async || {
            let status: String =
                sqlx::query_scalar("SELECT status FROM rotations WHERE id = $1::uuid")
                    .bind(a["id"].as_str().unwrap())
                    .fetch_one(db.pool())
                    .await
                    .unwrap();
            check(status, |s| s != "queued" && s != "running")
        },
    )
    .await;
    let b = client
        .post(&url)
        .header("idempotency-key", "k-1")
        .send()
        .await
        .unwrap();
    let (_, _, b) = json(b).await;
    assert_eq!(a["id"], b["id"]);
}

#[tokio::test]
async fn rotate_now_while_the_scheduler_rotates_joins_that_rotation() {
    let db = fresh_db().await;
    let pki = Pki::new();
    const SLOW: &str = "cert/default/slow-rsa";
    // RSA-4096 key generation keeps the engine's first issuance busy for a while
    // after it has claimed (leased) the credential.
    let certs = certificate_toml(SLOW, "rsa-4096", "24h", &pki.dir.path().join("sink-slow"));
    let serve = Serve::start(&db, &pki, "", &certs).await;
    let client = pki.client("operator");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let busy: Option<bool> = sqlx::query_scalar(
            "SELECT lease_owner IS NOT NULL AND current_version IS NULL FROM credentials WHERE name = $1",
        )
        .bind(SLOW)
        .fetch_optional(db.pool())
        .await
        .unwrap();
        if busy == Some(true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never claimed the credential:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The scheduler is rotating it: rotate-now must not make a second rotation.
    let r = client
        .post(format!(
            "{}/v1/credentials/{}/rotate?wait=true",
            serve.url,
            enc(SLOW)
        ))
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "succeeded", "{body}");
    let rotations: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM rotations ORDER BY requested_at")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        rotations.len(),
        1,
        "rotate-now during the scheduler's rotation made a second one: {rotations:?} (answer {body})"
    );
    assert_eq!(body["id"].as_str().unwrap(), rotations[0].0.to_string());
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM credential_versions")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(versions, 1);
}

#[tokio::test]
async fn errors_are_problem_documents() {
    let (_db, pki, serve) = server_with_web().await;
    let client = pki.client("admin");

    let r = client
        .post(format!(
            "{}/v1/credentials/{}/rotate",
            serve.url,
            enc("cert/nope")
        ))
        .send()
        .await
        .unwrap();
    let (status, ct, body) = json(r).await;
    assert_eq!((status, ct.as_str()), (404, "application/problem+json"));
    assert_eq!(body["type"], "urn:rekey:problem:not-found");
    assert!(body["detail"].as_str().unwrap().contains("cert/nope"));

    // The CLI: an unknown credential is bad input (exit 2), and so is a missing server.
    let out = run(serve
        .cli(&pki, Some("operator"))
        .args(["rotate", "cert/nope"]));
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cert/nope"), "{stderr}");
    let out = run(rekey_integration::bin::rekey().args(["rotate", "cert/nope"]));
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--server"), "{stderr}");

    let r = client
        .get(format!("{}/v1/credentials/{}", serve.url, enc("cert/nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await.0, 404);

    // Unencoded slashes: 404 with a hint.
    let r = client
        .get(format!("{}/v1/credentials/cert/default/web-tls", serve.url))
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(r).await;
    assert_eq!(status, 404);
    assert!(
        body["detail"].as_str().unwrap().contains("URL-encoded"),
        "{body}"
    );

    // Oversized body: 413.
    let big = serde_json::json!({ "reason": "x".repeat(200_000) });
    let r = client
        .post(format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB)))
        .json(&big)
        .send()
        .await
        .unwrap();
    let (status, ct, body) = json(r).await;
    assert_eq!((status, ct.as_str()), (413, "application/problem+json"));
    assert_eq!(body["type"], "urn:rekey:problem:payload-too-large");

    // Malformed JSON and unknown fields: 400; not JSON: 415.
    for (ct, body, want) in [
        ("application/json", "{", 400),
        ("application/json", r#"{"colour":"red"}"#, 400),
        ("text/plain", "please", 415),
    ] {
        let r = client
            .post(format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB)))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, pct, p) = json(r).await;
        assert_eq!(status, want, "{body}: {p}");
        assert_eq!(pct, "application/problem+json");
    }

    // Bad query and path values: 400.
    let r = client
        .post(format!(
            "{}/v1/credentials/{}/rotate?wait=maybe",
            serve.url,
            enc(WEB)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await.0, 400);
    let r = client
        .get(format!("{}/v1/rotations/not-a-uuid", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await.0, 400);

    // Wrong method: 405 problem with Allow.
    let r = client
        .delete(format!("{}/v1/credentials", serve.url))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("allow").is_some());
    assert_eq!(json(r).await.0, 405);

    // Capabilities not in this build: 501.
    let r = client
        .post(format!("{}/v1/backups", serve.url))
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(r).await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["type"], "urn:rekey:problem:not-implemented");

    // The document, health and readiness.
    let (status, _, doc) = json(
        client
            .get(format!("{}/openapi.json", serve.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/credentials/{name}/rotate"]["post"].is_object());
    let (status, _, ready) = json(
        reqwest::get(format!("{}/readyz", serve.metrics_url))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ready["engine"], true);
    assert_eq!(ready["database"], true);
    let (status, _, _) = json(
        client
            .get(format!("{}/healthz", serve.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn excess_and_slow_requests_get_503_problems() {
    let db = fresh_db().await;
    let pki = Pki::new();
    let certs = certificate_toml(WEB, "ecdsa-p256", "24h", &pki.dir.path().join("sink-web"));
    let limits = "max_concurrent_requests = 1\nrequest_timeout = \"2s\"\nwait_timeout = \"1s\"\n";
    let serve = Serve::start(&db, &pki, limits, &certs).await;
    let client = pki.client("operator");
    // A request whose body never finishes holds the only slot...
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(b"{".to_vec())).await.unwrap();
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    // On a connection of its own: the server logs its handshake, and the
    // request follows on it at once.
    let slow = tokio::spawn({
        let client = pki.client("operator");
        let url = format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB));
        async move {
            let started = std::time::Instant::now();
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (started.elapsed(), json(r).await)
        }
    });
    eventually(
        "the slow request's TLS handshake in the server's log",
        Duration::from_secs(10),
        async || {
            let log = serve.log();
            if log.contains("TLS handshake done") {
                Ok(())
            } else {
                Err(Text(log))
            }
        },
    )
    .await;
    // ...so another is refused at once rather than queued (tried until the
    // slow one, right behind its handshake, holds the slot).
    let (status, ct, body) = eventually(
        "a second request to be refused while the slow one holds the slot",
        Duration::from_secs(10),
        async || {
            let answer = json(
                client
                    .get(format!("{}/v1/credentials", serve.url))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            check(answer, |(status, _, _)| *status == 503)
        },
    )
    .await;
    assert_eq!(
        (status, ct.as_str()),
        (503, "application/problem+json"),
        "{body}"
    );
    assert_eq!(body["type"], "urn:rekey:problem:unavailable");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_requests"),
        "{body}"
    );
    // The slow one is cut off by the request timeout.
    let (elapsed, (status, _, body)) = slow.await.unwrap();
    drop(tx);
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("request_timeout"),
        "{body}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // And the server still answers.
    let r = client
        .get(format!("{}/healthz", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn etcd_verification_and_backups_through_the_api() {
    let db = fresh_db().await;
    let pki = Pki::new();
    let etcd = rekey_integration::etcd::Etcd::start();
    // One plaintext Secret: the verification must report it.
    let mut kv = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    kv.put(
        "/registry/secrets/default/plain",
        b"k8s\x00plaintext".to_vec(),
        None,
    )
    .await
    .unwrap();
    let rest = rekey_integration::api::etcd_and_backup_toml(&etcd, pki.dir.path());
    let serve = Serve::start(&db, &pki, "", &rest).await;
    let admin = pki.client("admin");

    // Operators may not; the refusal is audited.
    let r = pki
        .client("operator")
        .post(format!("{}/v1/etcd/verify", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await.0, 403);
    let rows = audit_rows(&db, "etcd.verify").await;
    assert_eq!(rows[0].2, "denied", "{rows:?}");

    let r = admin
        .post(format!("{}/v1/etcd/verify", serve.url))
        .json(&serde_json::json!({ "sample": 0 }))
        .send()
        .await
        .unwrap();
    let (status, _, report) = json(r).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["config"]["valid"], true, "{report}");
    assert_eq!(report["scan"]["total"], 1, "{report}");
    assert_eq!(
        report["scan"]["plaintext"][0], "/registry/secrets/default/plain",
        "{report}"
    );
    assert_eq!(report["exit_code"], 1);
    let checks: i64 = sqlx::query_scalar("SELECT count(*) FROM etcd_checks")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(checks, 1);
    let r = admin
        .post(format!("{}/v1/etcd/verify", serve.url))
        .json(&serde_json::json!({ "prefix": "no-slash" }))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await.0, 400);

    // A backup, then the list.
    let r = admin
        .post(format!("{}/v1/backups", serve.url))
        .send()
        .await
        .unwrap();
    let (status, _, record) = json(r).await;
    assert_eq!(status, 201, "{record}\n{}", serve.log());
    assert_eq!(record["status"], "completed", "{record}");
    let (status, _, list) = json(
        pki.client("viewer")
            .get(format!("{}/v1/backups", serve.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["backups"][0]["id"], record["id"]);
    // /metrics reads the newest backup from Postgres: when, and how large.
    let text = reqwest::get(format!("{}/metrics", serve.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!(
            "\nrekey_backup_latest_completed_bytes {}\n",
            record["size_bytes"]
        )),
        "{record}\n{text}"
    );
    assert!(
        text.contains("\nrekey_backup_latest_completed_timestamp_seconds "),
        "{text}"
    );
    let rows = audit_rows(&db, "backup.run").await;
    assert!(
        rows.iter()
            .any(|r| r.0.contains("CN=admin") && r.2 == "success"),
        "{rows:?}"
    );
}
