//! `/v1/issuers` and `POST /v1/issuers/{name}/rotate` through a real
//! `rekey serve` over mutual TLS, and `rekey ca status|rotate --server`:
//! viewers read, only admins rotate, a second request answers the running
//! rotation, abort, bad input as problems, audit and metrics.

use std::time::Duration;

use rekey_integration::{
    api::{Pki, Serve},
    bin::{outcome, run},
    pg::fresh_db,
    wait::eventually,
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn issuers_are_read_by_viewers_and_rotated_by_admins() {
    let db = fresh_db().await;
    let pki = Pki::new();
    let serve = Serve::start(&db, &pki, "", "").await;
    let (viewer, operator, admin) = (
        pki.client("viewer"),
        pki.client("operator"),
        pki.client("admin"),
    );
    let url = |p: &str| format!("{}{p}", serve.url);

    let r = viewer.get(url("/v1/issuers")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    let default = &doc["issuers"][0];
    assert_eq!(default["name"], "default");
    assert_eq!(default["kind"], "ca");
    assert_eq!(default["rotation"], Value::Null);
    let fp = default["ca"]["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(default["bundle"], json!([fp]));
    assert!(default["ca"]["not_after"].is_string());

    let r = viewer.get(url("/v1/issuers/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = operator
        .post(url("/v1/issuers/default/rotate"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "operators do not rotate CAs");
    for (body, want) in [
        (json!({"max_rate": -1}), "max_rate"),
        (json!({"overlap": "soon"}), "invalid duration `soon`"),
        (json!({"new_ca_cert": "x"}), "go together"),
        (
            json!({"new_ca_cert": "not PEM", "new_ca_key": "not PEM"}),
            "issuer[default].new_ca_cert",
        ),
    ] {
        let r = admin
            .post(url("/v1/issuers/default/rotate"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let p: Value = r.json().await.unwrap();
        assert!(
            p["detail"].as_str().unwrap_or_default().contains(want),
            "{body}: {p}"
        );
    }
    let r = admin
        .post(url("/v1/issuers/nope/rotate"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = admin
        .post(url("/v1/issuers/default/rotate"))
        .json(&json!({"overlap": "1h", "max_rate": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["created"], true);
    assert_eq!(started["rotation"]["phase"], "trusting");
    assert_eq!(started["rotation"]["overlap_seconds"], 3600.0);
    let id = started["rotation"]["id"].clone();
    let r = admin
        .post(url("/v1/issuers/default/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "a second request answers the running rotation"
    );
    let again: Value = r.json().await.unwrap();
    assert_eq!(
        (again["created"].clone(), again["rotation"]["id"].clone()),
        (json!(false), id.clone())
    );

    // The serving replica picks it up: a new CA, both trusted, metrics.
    let http = reqwest::Client::new();
    let metrics = format!("{}/metrics", serve.metrics_url);
    eventually(
        "the rotation to trust both CAs",
        Duration::from_secs(30),
        async || {
            let d: Value = viewer
                .get(url("/v1/issuers/default"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if d["bundle"].as_array().map(Vec::len) == Some(2) {
                Ok(())
            } else {
                Err(d.to_string())
            }
        },
    )
    .await;
    eventually("the phase metric", Duration::from_secs(30), async || {
        let text = http
            .get(&metrics)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        if text
            .lines()
            .any(|l| l.starts_with("rekey_ca_rotation_phase{issuer=\"default\"} 1"))
        {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;

    // The command line through the same API.
    let (code, out, err) = outcome(&run(serve
        .cli(&pki, Some("viewer"))
        .args(["ca", "status", "--json"])));
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["issuers"][0]["rotation"]["id"], id);
    let (code, out, err) = outcome(&run(serve.cli(&pki, Some("viewer")).args(["ca", "status"])));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("default") && out.contains("trusting") && out.contains("2 CAs"),
        "{out}"
    );
    let (code, _, err) = outcome(&run(serve
        .cli(&pki, Some("operator"))
        .args(["ca", "rotate", "default", "--abort"])));
    assert_ne!(code, 0, "operators do not abort either: {err}");
    let (code, out, err) = outcome(&run(serve
        .cli(&pki, Some("admin"))
        .args(["ca", "rotate", "default", "--abort", "--json"])));
    assert_eq!(code, 0, "{err}");
    let aborted: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(aborted["rotation"]["phase"], "aborted");
    let (code, _, err) = outcome(&run(serve
        .cli(&pki, Some("admin"))
        .args(["ca", "rotate", "default", "--abort"])));
    assert_eq!(code, 2, "nothing left to abort: {err}");
    eventually(
        "the old CA alone again",
        Duration::from_secs(30),
        async || {
            let d: Value = viewer
                .get(url("/v1/issuers/default"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if d["bundle"] == json!([fp]) && d["rotation"]["finished_at"].is_string() {
                Ok(())
            } else {
                Err(d.to_string())
            }
        },
    )
    .await;

    // Audited with the caller.
    let r = viewer
        .get(url("/v1/audit"))
        .query(&[("target", "issuer/default")])
        .send()
        .await
        .unwrap();
    let events: Value = r.json().await.unwrap();
    let list = events["events"].as_array().cloned().unwrap_or_default();
    let by = |action: &str| {
        list.iter()
            .find(|e| e["action"] == action && e["outcome"] == "success")
            .map(|e| e["actor"].clone())
    };
    assert!(
        by("ca.rotate").is_some_and(|a| a.as_str().unwrap_or_default().contains("admin")),
        "{events:#}"
    );
    assert!(by("ca.rotate.abort").is_some(), "{events:#}");
    assert!(
        list.iter()
            .any(|e| e["action"] == "ca.rotate" && e["outcome"] == "denied"),
        "the operator's refusal: {events:#}"
    );
}
