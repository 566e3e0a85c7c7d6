//! The Kubernetes API stand-in answers the real `kube` client like the real
//! server: writes, conflicts, Status errors, selectors, pagination, watch,
//! patches, TokenRequest/TokenReview/SubjectAccessReview, RBAC, faults.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use rekey_integration::{
    kube::{Fault, FaultKind, KubeStandIn},
    wait::eventually,
};
use serde_json::json;

fn secret(name: &str, labels: serde_json::Value) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "type": "Opaque",
        "stringData": {"k": "v"},
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_conflicts_and_status_errors() {
    let k = KubeStandIn::start();
    let admin = k.admin_client().await;
    let api: Api<Secret> = Api::namespaced(admin, "default");
    let created = api
        .create(&PostParams::default(), &secret("a", json!({})))
        .await
        .unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.data.unwrap()["k"].0, b"v");

    let dup = api
        .create(&PostParams::default(), &secret("a", json!({})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = dup else {
        panic!("{dup}")
    };
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));

    let mut upd = api.get("a").await.unwrap();
    upd.metadata.labels = Some([("x".to_string(), "1".to_string())].into());
    let after = api
        .replace("a", &PostParams::default(), &upd)
        .await
        .unwrap();
    assert_ne!(after.metadata.resource_version.unwrap(), rv1);
    // The same (now stale) resourceVersion again: 409 Conflict.
    let stale = api
        .replace("a", &PostParams::default(), &upd)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = stale else {
        panic!("{stale}")
    };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(
        s.message.contains("the object has been modified"),
        "{}",
        s.message
    );

    let missing = api.get("nope").await.unwrap_err();
    let kube::Error::Api(s) = missing else {
        panic!("{missing}")
    };
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, "secrets \"nope\" not found");

    // kubernetes.io/tls without tls.key: 422; type change: 422.
    let bad: Secret = serde_json::from_value(json!({"metadata": {"name": "t"}, "type": "kubernetes.io/tls", "stringData": {"tls.crt": "x"}})).unwrap();
    let e = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(
        (s.code, s.reason.as_str()),
        (422, "Invalid"),
        "{}",
        s.message
    );
    let mut retyped = api.get("a").await.unwrap();
    retyped.type_ = Some("kubernetes.io/tls".into());
    retyped.data = Some(
        [
            (
                "tls.crt".to_string(),
                k8s_openapi::ByteString(b"c".to_vec()),
            ),
            (
                "tls.key".to_string(),
                k8s_openapi::ByteString(b"k".to_vec()),
            ),
        ]
        .into(),
    );
    let e = api
        .replace("a", &PostParams::default(), &retyped)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(s.code, 422);
    assert!(s.message.contains("field is immutable"), "{}", s.message);

    // A namespace that does not exist: 404.
    let other: Api<Secret> = Api::namespaced(k.admin_client().await, "nowhere");
    let e = other
        .create(&PostParams::default(), &secret("a", json!({})))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(s.code, 404);

    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("a").await.unwrap().is_none());
}

#[tokio::test]
async fn selectors_pagination_and_patches() {
    let k = KubeStandIn::start();
    let api: Api<Secret> = Api::namespaced(k.admin_client().await, "default");
    for i in 0..7 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        api.create(
            &PostParams::default(),
            &secret(&format!("s{i}"), json!({"tier": tier})),
        )
        .await
        .unwrap();
    }
    let odd = api
        .list(&ListParams::default().labels("tier=odd"))
        .await
        .unwrap();
    assert_eq!(odd.items.len(), 3);
    let notin = api
        .list(&ListParams::default().labels("tier notin (odd)"))
        .await
        .unwrap();
    assert_eq!(notin.items.len(), 4);
    let named = api
        .list(&ListParams::default().fields("metadata.name=s3"))
        .await
        .unwrap();
    assert_eq!(named.items.len(), 1);
    let bad = api
        .list(&ListParams::default().fields("data.k=v"))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = bad else {
        panic!("{bad}")
    };
    assert_eq!(s.code, 400);

    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = api.list(&lp).await.unwrap();
        assert!(page.items.len() <= 3);
        names.extend(page.items.iter().map(|s| s.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names.len(), 7);

    let pp = PatchParams::default();
    let merged = api
        .patch(
            "s1",
            &pp,
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.metadata.annotations.unwrap()["a"], "1");
    let json_patched = api
        .patch(
            "s1",
            &pp,
            &Patch::<()>::Json(
                serde_json::from_value(
                    json!([{"op": "add", "path": "/metadata/labels/extra", "value": "y"}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(json_patched.metadata.labels.unwrap()["extra"], "y");
    let stale = api
        .patch(
            "s1",
            &pp,
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"z": "1"}}})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(s) = stale else {
        panic!("{stale}")
    };
    assert_eq!(s.code, 409);
}

#[tokio::test]
async fn watch_streams_changes_and_bookmarks() {
    let k = KubeStandIn::start();
    let admin = k.admin_client().await;
    let api: Api<Secret> = Api::namespaced(admin.clone(), "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = api
        .watch(
            &WatchParams::default()
                .labels("app=w")
                .timeout(10)
                .disable_bookmarks(),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    api.create(
        &PostParams::default(),
        &secret("other", json!({"app": "x"})),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &secret("w1", json!({"app": "w"})))
        .await
        .unwrap();
    api.delete("w1", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(s)) => seen.push(format!("ADDED {}", s.metadata.name.unwrap())),
            Some(WatchEvent::Deleted(s)) => {
                seen.push(format!("DELETED {}", s.metadata.name.unwrap()))
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    assert_eq!(seen, ["ADDED w1", "DELETED w1"]);

    let mut bm = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut got_bookmark = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(4), bm.try_next())
        .await
        .unwrap()
    {
        if matches!(ev, WatchEvent::Bookmark(_)) {
            got_bookmark = true;
            break;
        }
    }
    assert!(got_bookmark);
}

#[tokio::test]
async fn token_request_review_and_access_review() {
    let k = KubeStandIn::start();
    let admin = k.admin_client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
    )
    .await
    .unwrap();
    let req = |secs: i64| TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["vault".into()]),
            expiration_seconds: Some(secs),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = sas
        .create_subresource::<_, TokenRequest>("token", "app", &PostParams::default(), &req(599))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(s.code, 422);
    assert!(
        s.message
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        s.message
    );
    let tr: TokenRequest = sas
        .create_subresource("token", "app", &PostParams::default(), &req(600))
        .await
        .unwrap();
    let status = tr.status.unwrap();
    let token = status.token.unwrap();
    let claims = k.verify_sa_token(&token).unwrap();
    assert_eq!(claims.aud, vec!["vault"]);
    assert_eq!(claims.sub, "system:serviceaccount:default:app");
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(
        rekey::k8s::to_chrono(&status.expiration_timestamp.unwrap()).timestamp(),
        claims.exp
    );

    let reviews: Api<TokenReview> = Api::all(admin.clone());
    let review = |aud: &str| TokenReview {
        spec: TokenReviewSpec {
            token: token.clone(),
            audiences: Some(vec![aud.into()]),
        },
        ..Default::default()
    };
    let ok = reviews
        .create(&PostParams::default(), &review("vault"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ok.authenticated, Some(true));
    assert_eq!(
        ok.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:default:app")
    );
    let wrong = reviews
        .create(&PostParams::default(), &review("other"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(wrong.authenticated, Some(false));

    let sar: Api<SubjectAccessReview> = Api::all(admin);
    let ask = |verb: &str, ns: &str| SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some("system:serviceaccount:rekey:rekey".into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some("secrets".into()),
                namespace: Some(ns.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let yes = sar
        .create(&PostParams::default(), &ask("delete", "kube-system"))
        .await
        .unwrap();
    assert!(yes.status.unwrap().allowed);
    let no = sar
        .create(&PostParams::default(), &ask("delete", "default"))
        .await
        .unwrap();
    assert!(!no.status.unwrap().allowed);
}

#[tokio::test]
async fn rbac_forbids_what_deploy_does_not_grant() {
    let k = KubeStandIn::start();
    let client = k.client().await;
    let api: Api<Secret> = Api::namespaced(client.clone(), "default");
    let e = api.get_opt("x").await.unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert!(
        s.message
            .contains("User \"system:serviceaccount:rekey:rekey\" cannot get resource \"secrets\""),
        "{}",
        s.message
    );
    assert_eq!(k.denied().len(), 1);
    k.add_namespace("default");
    assert!(api.get_opt("x").await.unwrap().is_none());
    let deploys: Api<Deployment> = Api::namespaced(client, "default");
    let e = deploys.get_opt("x").await.unwrap_err();
    assert!(matches!(e, kube::Error::Api(s) if s.code == 403));
}

#[tokio::test]
async fn faults_and_down_switch() {
    let k = KubeStandIn::start();
    k.add_namespace("default");
    let client = k.client().await;
    let api: Api<Secret> = Api::namespaced(client, "default");
    k.inject(Fault::new("get", "secrets", FaultKind::Status(500), 2));
    for _ in 0..2 {
        let e = api.get_opt("x").await.unwrap_err();
        assert!(matches!(e, kube::Error::Api(s) if s.code == 500));
    }
    assert!(api.get_opt("x").await.unwrap().is_none());
    k.inject(Fault::new(
        "get",
        "secrets",
        FaultKind::Timeout(Duration::from_secs(30)),
        1,
    ));
    let e = rekey::k8s::call("get", api.get_opt("x")).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(matches!(e, rekey::k8s::K8sError::Timeout { .. }), "{e}");

    k.down_for(Duration::from_secs(2));
    let e = rekey::k8s::call("get", api.get_opt("x")).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let back = eventually(
        "the API to answer again after its 2 s outage",
        Duration::from_secs(10),
        async || api.get_opt("x").await.map_err(|e| e.to_string()),
    )
    .await;
    assert!(back.is_none());
}
