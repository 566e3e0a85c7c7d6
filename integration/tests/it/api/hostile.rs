//! The admin API under hostile callers (issue 17), through the real binary:
//! resets after sending never leave an action without its audit event; odd
//! names, query values and reasons are 4xx problem documents and refused
//! attempts are audited with bounded copies; idempotency keys are scoped and
//! remember their body; 414/431 are problem documents; a 500's ERROR line
//! names the request id; a certificate with two CNs is refused.

use std::{sync::Arc, time::Duration};

use rekey_integration::{
    api::{Pki, Serve, certificate_toml, enc},
    pg::{TestDb, fresh_db},
    wait::{Text, eventually},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const WEB: &str = "cert/default/web-tls";

async fn server(api_extra: &str) -> (TestDb, Pki, Serve) {
    let db = fresh_db().await;
    let pki = Pki::new();
    let certs = certificate_toml(WEB, "ecdsa-p256", "24h", &pki.dir.path().join("sink-web"));
    let serve = Serve::start(&db, &pki, api_extra, &certs).await;
    (db, pki, serve)
}

/// Status, content type and JSON body of a response.
async fn answer(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, ct, v)
}

/// A rustls client config trusting the API CA and presenting `cn`'s certificate.
pub fn tls_client(pki: &Pki, cn: &str) -> Arc<rustls::ClientConfig> {
    let (cert, key) = pki.client_files(cn);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca_cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            CertificateDer::pem_file_iter(&cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// The port of a server URL.
pub fn port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Sends `n` requests `POST path(i)` with `body` as `cn` over raw TLS, each
/// reset (RST, not FIN) 0-10 ms after it was sent, so the request's future
/// is cancelled wherever it is. Request `i` carries `{prefix}-{i}` as its
/// request id and idempotency key.
pub(super) async fn send_and_reset(
    pki: &Pki,
    serve: &Serve,
    cn: &str,
    path: impl Fn(u64) -> String,
    body: &str,
    prefix: &str,
    n: u64,
) {
    let tls = tokio_rustls::TlsConnector::from(tls_client(pki, cn));
    let addr = format!("127.0.0.1:{}", port(&serve.url));
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut s = tls
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let request = format!(
            "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             x-request-id: {id}\r\nidempotency-key: {id}\r\ncontent-length: {}\r\n\r\n{body}",
            path(i),
            body.len()
        );
        s.write_all(request.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        let wait = rand::random_range(0..=10u64);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        // A zero linger does not block on drop: it sends RST at once.
        #[allow(deprecated)]
        s.get_ref().0.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    }
}

#[tokio::test]
async fn resets_after_sending_never_leave_an_action_without_its_audit_event() {
    let (db, pki, serve) = server("").await;
    let path = format!("/v1/credentials/{}/rotate", enc(WEB));
    // Each request carries its id as its idempotency key too, so a committed
    // request (its key row) can be matched with its audit event.
    let sent = 60;
    send_and_reset(
        &pki,
        &serve,
        "operator",
        |_| path.clone(),
        r#"{"reason":"reset test"}"#,
        "reset",
        sent,
    )
    .await;
    // A last, ordinary request: when it is answered, the server has read the
    // ones before it.
    let r = pki
        .client("operator")
        .post(format!("{}{path}", serve.url))
        .header("idempotency-key", "last")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let unaudited_keys = async || -> Vec<String> {
        sqlx::query_scalar(
            "SELECT q.idempotency_key FROM rotation_requests q WHERE q.idempotency_key LIKE 'reset-%'
             AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.action = 'credential.rotate'
                             AND a.outcome = 'success' AND a.request_id = q.idempotency_key)",
        )
        .fetch_all(db.pool())
        .await
        .unwrap()
    };
    let unaudited_rotations = async || -> Vec<String> {
        sqlx::query_scalar(
            "SELECT r.id::text FROM rotations r WHERE r.trigger = 'manual'
             AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.action = 'credential.rotate'
                             AND a.details->>'rotation_id' = r.id::text)",
        )
        .fetch_all(db.pool())
        .await
        .unwrap()
    };
    let committed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rotation_requests WHERE idempotency_key LIKE 'reset-%'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    // It looked: requests cut off after sending did commit (the work runs in
    // a task of its own, whatever the client does).
    assert!(committed > 0, "none of {sent} reset requests committed");
    assert_eq!(unaudited_keys().await, Vec::<String>::new());
    assert_eq!(unaudited_rotations().await, Vec::<String>::new());
    // And still none once everything the server took in has finished.
    eventually(
        "every manual rotation to have finished",
        Duration::from_secs(30),
        async || {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM rotations WHERE status IN ('queued', 'running')",
            )
            .fetch_one(db.pool())
            .await
            .unwrap();
            if open == 0 { Ok(()) } else { Err(open) }
        },
    )
    .await;
    assert_eq!(unaudited_keys().await, Vec::<String>::new());
    assert_eq!(unaudited_rotations().await, Vec::<String>::new());
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'credential.rotate' AND request_id LIKE 'reset-%'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(audited >= committed, "{audited} < {committed}");
}

/// The audit rows of `action` whose request id is `id`: (actor, target, outcome, reason, details).
async fn audited(db: &TestDb, id: &str) -> Vec<(String, String, String, Option<String>, Value)> {
    sqlx::query_as(
        "SELECT actor, target, outcome, reason, details FROM audit_events WHERE request_id = $1",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn odd_names_query_values_and_reasons_are_4xx_problems_and_refusals_are_audited_bounded() {
    let (db, pki, serve) = server("").await;
    let operator = pki.client("operator");
    let viewer = pki.client("viewer");
    let long = "x".repeat(3000);
    let names = [
        ("%00", "control character"),
        ("a%00b", "control character"),
        ("%FF%FE", "UTF-8"),
        (long.as_str(), "253"),
    ];
    for (client, who) in [(&operator, "operator"), (&viewer, "viewer")] {
        for (n, (name, why)) in names.iter().enumerate() {
            let id = format!("odd-{who}-{n}");
            let r = client
                .post(format!("{}/v1/credentials/{name}/rotate", serve.url))
                .header("x-request-id", &id)
                .send()
                .await
                .unwrap();
            let (status, ct, body) = answer(r).await;
            assert_eq!(
                (status, ct.as_str()),
                (400, "application/problem+json"),
                "{name:.40}: {body}"
            );
            assert!(body["detail"].as_str().unwrap().contains(why), "{body}");
            // The refused attempt is audited, with a bounded, sanitised target.
            let rows = audited(&db, &id).await;
            assert_eq!(rows.len(), 1, "{who} {name:.40}: {rows:?}");
            let (actor, target, outcome, _, details) = &rows[0];
            assert!(actor.contains(&format!("CN={who}")), "{rows:?}");
            assert_eq!(outcome, "failure", "{rows:?}");
            assert_eq!(details["status"], 400);
            assert!(target.len() <= 512 && !target.contains('\0'), "{target}");
        }
        // Reads answer the same.
        let r = client
            .get(format!("{}/v1/credentials/%00", serve.url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer(r).await.0, 400);
    }
    // The NUL is kept, escaped, in the audit copy.
    let rows = audited(&db, "odd-viewer-1").await;
    assert_eq!(rows[0].1, "a\\0b");

    // A refused caller cannot write a large reason: the limit comes first.
    let reason = "r".repeat(60_000);
    let r = viewer
        .post(format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB)))
        .header("x-request-id", "big-reason")
        .json(&serde_json::json!({ "reason": reason }))
        .send()
        .await
        .unwrap();
    let (status, _, body) = answer(r).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("1024"), "{body}");
    let rows = audited(&db, "big-reason").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].3.as_ref().unwrap().len() <= 1024);
    // A viewer with an acceptable request is denied, and audited as such.
    let r = viewer
        .post(format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB)))
        .header("x-request-id", "viewer-denied")
        .json(&serde_json::json!({ "reason": "a\u{1b}[31m" }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await.0, 400, "a control character in a reason");
    let r = viewer
        .post(format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB)))
        .header("x-request-id", "viewer-denied-2")
        .json(&serde_json::json!({ "reason": "drill" }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await.0, 403);
    let rows = audited(&db, "viewer-denied-2").await;
    assert_eq!(rows[0].2, "denied", "{rows:?}");

    // Query values on /v1/audit: NUL, non-UTF-8, over-long are 400 problems.
    for q in [
        "actor=%00".to_string(),
        "target=%FF%FE".to_string(),
        "action=a%00".to_string(),
        format!("actor={}", "a".repeat(2000)),
        "%00=1".to_string(),
    ] {
        let r = viewer
            .get(format!("{}/v1/audit?{q}", serve.url))
            .send()
            .await
            .unwrap();
        let (status, ct, body) = answer(r).await;
        assert_eq!(
            (status, ct.as_str()),
            (400, "application/problem+json"),
            "{q:.40}: {body}"
        );
    }
    // Nothing above was a server error.
    let log = plain(&serve.log());
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn idempotency_keys_belong_to_a_caller_and_credential_and_remember_the_body() {
    let (db, pki, serve) = server("").await;
    let url = format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB));
    let post = async |client: &reqwest::Client, reason: &str| {
        answer(
            client
                .post(&url)
                .header("idempotency-key", "k-1")
                .json(&serde_json::json!({ "reason": reason }))
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    let operator = pki.client("operator");
    let (status, _, first) = post(&operator, "a").await;
    assert_eq!(status, 202, "{first}");
    // The same key and body: the same rotation.
    let (status, _, again) = post(&operator, "a").await;
    assert_eq!((status, &again["id"]), (202, &first["id"]), "{again}");
    // The same key with another body: 409, and nothing queued.
    let (status, ct, body) = post(&operator, "b").await;
    assert_eq!(
        (status, ct.as_str()),
        (409, "application/problem+json"),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("different request body"),
        "{body}"
    );
    // Another caller's key of the same name is its own.
    let (status, _, other) = post(&pki.client("admin"), "b").await;
    assert_eq!(status, 202, "{other}");
    // Keys expire (24 hours): an old one no longer conflicts.
    sqlx::query("UPDATE rotation_requests SET created_at = now() - interval '25 hours'")
        .execute(db.pool())
        .await
        .unwrap();
    let (status, _, body) = post(&operator, "b").await;
    assert_eq!(status, 202, "{body}");
    let conflicts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'credential.rotate' AND outcome = 'failure'
         AND details->>'status' = '409'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(conflicts, 1);
}

#[tokio::test]
async fn long_targets_and_large_heads_are_414_and_431_problems() {
    let (_db, pki, serve) = server("").await;
    let viewer = pki.client("viewer");
    let plain = reqwest::Client::new();
    for (client, base) in [(&viewer, &serve.url), (&plain, &serve.metrics_url)] {
        let r = client
            .get(format!("{base}/v1/audit?actor={}", "a".repeat(10_000)))
            .send()
            .await
            .unwrap();
        let (status, ct, body) = answer(r).await;
        assert_eq!(
            (status, ct.as_str()),
            (414, "application/problem+json"),
            "{body}"
        );
        assert_eq!(body["type"], "urn:rekey:problem:uri-too-long");
        let mut req = client.get(format!("{base}/healthz"));
        for i in 0..150 {
            req = req.header(format!("x-h-{i}"), "v");
        }
        let (status, ct, body) = answer(req.send().await.unwrap()).await;
        assert_eq!(
            (status, ct.as_str()),
            (431, "application/problem+json"),
            "{body}"
        );
        assert_eq!(body["type"], "urn:rekey:problem:headers-too-large");
    }
}

#[tokio::test]
async fn a_server_error_names_its_request_id_in_the_error_line() {
    let (db, pki, serve) = server("").await;
    // The audit log cannot be written: rotate-now is a 500.
    sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_away")
        .execute(db.pool())
        .await
        .unwrap();
    let r = pki
        .client("operator")
        .post(format!("{}/v1/credentials/{}/rotate", serve.url, enc(WEB)))
        .header("x-request-id", "the-failing-one")
        .send()
        .await
        .unwrap();
    let (status, _, body) = answer(r).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("request id"),
        "{body}"
    );
    eventually(
        "an ERROR line with the request id",
        Duration::from_secs(10),
        async || {
            let log = plain(&serve.log());
            let found = log
                .lines()
                .any(|l| l.contains("ERROR") && l.contains("request_id=the-failing-one"));
            if found { Ok(()) } else { Err(Text(log)) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_certificate_with_two_common_names_is_refused() {
    let (_db, pki, serve) = server("").await;
    // Whichever CN came first, it would have been admin or viewer.
    for (subject, file) in [
        ("/CN=admin/CN=viewer", "two-a"),
        ("/CN=viewer/CN=admin", "two-v"),
    ] {
        let client = pki.client_with(Some(pki.client_files_with_subject(subject, file)));
        let (status, ct, body) = answer(
            client
                .get(format!("{}/v1/credentials", serve.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, ct.as_str()),
            (403, "application/problem+json"),
            "{body}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains("common names"),
            "{body}"
        );
    }
    // A one-CN certificate from the same CA is allowed (the refusal is the CNs).
    let one = pki.client_with(Some(
        pki.client_files_with_subject("/O=rekey/CN=viewer", "one"),
    ));
    let r = one
        .get(format!("{}/v1/credentials", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `log` without its ANSI colour sequences.
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn resets_after_sending_never_leave_an_etcd_check_without_its_audit_event() {
    let db = fresh_db().await;
    let pki = Pki::new();
    let etcd = rekey_integration::etcd::Etcd::start();
    let rest = rekey_integration::api::etcd_and_backup_toml(&etcd, pki.dir.path());
    let serve = Serve::start(&db, &pki, "", &rest).await;
    send_and_reset(
        &pki,
        &serve,
        "admin",
        |_| "/v1/etcd/verify".into(),
        r#"{"sample":0}"#,
        "everify",
        20,
    )
    .await;
    // A last, ordinary verification: when it is answered, the server has read the ones before.
    let r = pki
        .client("admin")
        .post(format!("{}/v1/etcd/verify", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let unaudited: Vec<i64> = sqlx::query_scalar(
        "SELECT c.id FROM etcd_checks c WHERE c.trigger = 'api' AND NOT EXISTS
           (SELECT 1 FROM audit_events a WHERE a.action = 'etcd.verify' AND a.outcome = 'success'
            AND a.details->>'check_id' = c.id::text)",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let checks: i64 = sqlx::query_scalar("SELECT count(*) FROM etcd_checks WHERE trigger = 'api'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    // It looked: reset requests did record checks (the last one is one of them).
    assert!(checks > 1, "only {checks} checks recorded");
    assert_eq!(unaudited, Vec::<i64>::new());
}
