//! Resets after sending on the mutating endpoints that hostile.rs does not
//! cover (issue 17): a backup run (`POST /v1/backups`) and a bootstrap-token
//! revocation (`POST /v1/bootstrap-tokens/{id}/revoke`), through the real
//! binary. Whatever the client does, a backup recorded completed or failed,
//! a token marked revoked and a token Secret deleted each have their audit
//! event naming the caller, under the request's id.

use std::{collections::BTreeMap, time::Duration};

use rekey_integration::{
    api::{Pki, Serve, certificate_toml, etcd_and_backup_toml},
    etcd::Etcd,
    kube::{KubeStandIn, fixtures},
    pg::fresh_db,
    wait::eventually,
};

use super::hostile::send_and_reset;

/// A backup and its audit event, if any: id, status, actor, outcome, request id.
type Audited = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

#[tokio::test]
async fn resets_after_sending_never_leave_a_backup_without_its_audit_event() {
    let db = fresh_db().await;
    let pki = Pki::new();
    let etcd = Etcd::start();
    let rest = etcd_and_backup_toml(&etcd, pki.dir.path());
    let serve = Serve::start(&db, &pki, "", &rest).await;
    let sent = 20;
    send_and_reset(
        &pki,
        &serve,
        "admin",
        |_| "/v1/backups".into(),
        "",
        "breset",
        sent,
    )
    .await;
    // A last, ordinary backup: when it is answered, the server has read the ones before.
    let r = pki
        .client("admin")
        .post(format!("{}/v1/backups", serve.url))
        .header("x-request-id", "blast")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // The backups the reset requests started finish in their own tasks.
    eventually(
        "every backup to have completed or failed",
        Duration::from_secs(60),
        async || {
            let running: Vec<String> =
                sqlx::query_scalar("SELECT id::text FROM backups WHERE status = 'running'")
                    .fetch_all(db.pool())
                    .await
                    .unwrap();
            if running.is_empty() {
                Ok(())
            } else {
                Err(running)
            }
        },
    )
    .await;
    // Every recorded backup: its `backup.run` event (found by the backup's
    // id), with the outcome its status says, naming the caller.
    let rows: Vec<Audited> = sqlx::query_as(
        "SELECT b.id::text, b.status, a.actor, a.outcome, a.request_id FROM backups b
             LEFT JOIN audit_events a ON a.action = 'backup.run'
                  AND a.details->>'backup_id' = b.id::text
             ORDER BY b.started_at",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut from_resets = 0;
    for (id, status, actor, outcome, request_id) in &rows {
        let actor = actor
            .as_deref()
            .unwrap_or_else(|| panic!("backup {id} ({status}) has no audit event: {rows:?}"));
        assert!(actor.contains("CN=admin"), "{id}: {actor}");
        let expected = if status == "completed" {
            "success"
        } else {
            "failure"
        };
        assert_eq!(outcome.as_deref(), Some(expected), "{id} ({status})");
        let request_id = request_id.as_deref().unwrap_or_default();
        assert!(
            request_id == "blast" || request_id.starts_with("breset-"),
            "{id}: request id {request_id:?}"
        );
        if request_id.starts_with("breset-") {
            from_resets += 1;
        }
    }
    // One event per backup, not two.
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'backup.run' AND outcome <> 'denied'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(events, rows.len() as i64, "{rows:?}");
    // It looked: requests cut off after sending did record backups.
    assert!(
        from_resets > 0,
        "none of {sent} reset requests recorded a backup"
    );
}

#[tokio::test]
async fn resets_after_sending_never_leave_a_revoked_bootstrap_token_without_its_audit_event() {
    let db = fresh_db().await;
    let pki = Pki::new();
    let k = KubeStandIn::start();
    let sent = 30;
    let id = |i: u64| format!("rv{i:04}");
    // One token per reset request, and one for the last, ordinary request.
    for i in 0..=sent {
        let (secret, _) = fixtures::bootstrap_secret(&id(i), None, None);
        k.put(secret).unwrap();
    }
    // The watcher runs too: its sweep finishes revocations left `revoking`,
    // so a revocation cut off half-way would show as the watcher's alone.
    let mut rest = certificate_toml(
        "cert/default/web-tls",
        "ecdsa-p256",
        "24h",
        &pki.dir.path().join("sink-web"),
    );
    rest.push_str(&format!(
        "\n[kubernetes]\nkubeconfig = \"{}\"\n\n[bootstrap_tokens]\nrevoke_after_join = true\n",
        k.kubeconfig().display()
    ));
    let serve = Serve::start(&db, &pki, "", &rest).await;
    send_and_reset(
        &pki,
        &serve,
        "operator",
        |i| format!("/v1/bootstrap-tokens/{}/revoke", id(i)),
        r#"{"reason":"reset test"}"#,
        "treset",
        sent,
    )
    .await;
    let r = pki
        .client("operator")
        .post(format!(
            "{}/v1/bootstrap-tokens/{}/revoke",
            serve.url,
            id(sent)
        ))
        .header("x-request-id", format!("treset-{sent}"))
        .json(&serde_json::json!({ "reason": "reset test" }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (status.as_u16(), &body["outcome"]),
        (200, &"revoked".into()),
        "{body}"
    );
    // No revocation is left half-way (claimed, not finished).
    eventually(
        "no bootstrap token to be left revoking",
        Duration::from_secs(30),
        async || {
            let revoking: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM bootstrap_tokens WHERE state = 'revoking' ORDER BY id",
            )
            .fetch_all(db.pool())
            .await
            .unwrap();
            if revoking.is_empty() {
                Ok(())
            } else {
                Err(revoking)
            }
        },
    )
    .await;
    // The caller's events: target → (actor, request id).
    let events: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT target, actor, request_id FROM audit_events
         WHERE action = 'bootstrap_token.revoke' AND outcome = 'success' AND actor <> $1",
    )
    .bind("rekey/bootstrap-watcher")
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut by_target: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
    for (target, actor, request_id) in events {
        by_target
            .entry(target)
            .or_default()
            .push((actor, request_id));
    }
    let states: BTreeMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT id, state FROM bootstrap_tokens")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut revoked = 0;
    for i in 0..=sent {
        let token = id(i);
        let state = states.get(&token).map(String::as_str);
        let secret_gone = k
            .get("Secret", "kube-system", &format!("bootstrap-token-{token}"))
            .is_none();
        let audited = by_target
            .get(&format!("bootstrap-token/{token}"))
            .cloned()
            .unwrap_or_default();
        if state == Some("revoked") || secret_gone {
            // Done, in Postgres or in the cluster: revoked in both, and the
            // caller's event, once, under this request's id.
            assert_eq!(state, Some("revoked"), "{token}: secret gone");
            assert!(
                secret_gone,
                "{token}: revoked, but its Secret is still there"
            );
            assert_eq!(audited.len(), 1, "{token}: {audited:?}");
            let (actor, request_id) = &audited[0];
            assert!(actor.contains("CN=operator"), "{token}: {actor}");
            assert_eq!(
                request_id.as_deref(),
                Some(format!("treset-{i}").as_str()),
                "{token}"
            );
            revoked += 1;
        } else {
            assert!(audited.is_empty(), "{token}: not revoked, yet {audited:?}");
        }
    }
    // It looked: requests cut off after sending did revoke tokens (the last,
    // ordinary one is one of them).
    assert!(
        revoked > 1,
        "none of {sent} reset requests revoked its token"
    );
    assert!(
        k.denied().is_empty(),
        "rekey's own requests were refused: {:#?}",
        k.denied()
    );
}
