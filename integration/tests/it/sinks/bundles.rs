//! Trust bundles published without re-issuing: recorded on every publish,
//! republished by `rotate::bundles::republish_issuer` (file sink, against
//! real Postgres), by the Secret sink (against the stand-in, through
//! rekey's RBAC), and `[[bundle]]` targets (a file and a ConfigMap).

use std::sync::Arc;

use base64::Engine as _;
use chrono::{TimeDelta, Utc};
use rekey::{
    issue::{CertAuthority, CertificateSpec, Issuers, KeyType, TrustBundle, Usage},
    k8s::VERSION_ANNOTATION,
    rotate::{
        Engine, EngineConfig, EngineDeps,
        bundles::{BundleTargets, TargetOutcome, republish_issuer},
    },
    sink::{
        BundleOutcome, BundleUpdate, SinkContext, SinkSpec, build,
        file::FileSink,
        trust::{BUNDLE_TARGET_ANNOTATION, BundleSinkSpec, BundleTargetSpec},
    },
    store::sync::Declared,
};
use rekey_integration::{
    kube::{Fault, FaultKind, KubeStandIn, fixtures},
    pg::fresh_db,
};
use serde_json::json;

fn spec(name: &str, dir: &std::path::Path) -> CertificateSpec {
    CertificateSpec {
        name: name.into(),
        issuer: None,
        common_name: None,
        organizations: vec![],
        dns_names: vec!["web.bundle.svc".into()],
        ip_addresses: vec![],
        key: KeyType::EcdsaP256,
        usages: vec![Usage::Server],
        lifetime: std::time::Duration::from_secs(3600).into(),
        renew_fraction: None,
        renew_before: None,
        schedule: None,
        sink: SinkSpec::File {
            dir: dir.to_path_buf(),
        },
        adopt: false,
        reload: vec![],
        probe: None,
        probe_grace: None,
    }
}

fn new_ca(cn: &str) -> CertAuthority {
    CertAuthority::generate(cn, KeyType::EcdsaP256, TimeDelta::days(1), Utc::now())
        .unwrap()
        .0
}

#[tokio::test]
async fn a_file_sink_gets_a_new_bundle_without_reissuing_and_the_record_follows() {
    let db = fresh_db().await;
    let ca = Arc::new(new_ca("current CA"));
    let next = new_ca("next CA");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("web");
    let s = spec("cert/bundle/web", &dir);
    db.store
        .sync_declared(
            "config",
            &[Declared {
                name: s.name.clone(),
                kind: "certificate",
                spec: serde_json::to_value(&s).unwrap(),
                sink: serde_json::to_value(&s.sink).unwrap(),
                schedule: None,
                material_hash: "h".into(),
            }],
            "test",
        )
        .await
        .unwrap();
    let engine = Engine::new(EngineDeps {
        store: db.store.clone(),
        replica: "r1".into(),
        config: EngineConfig::default(),
        issuers: Arc::new(Issuers::default_ca(ca.clone())),
        sinks: SinkContext::default(),
        tokens: None,
        reload: None,
        probes: None,
    });
    assert_eq!(engine.run_once().await.unwrap(), 1);
    let current = TrustBundle::from_pem(ca.cert_pem()).unwrap();
    let holders = db.store.bundle_holders("default").await.unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(
        holders[0].bundle_fingerprint.as_deref(),
        Some(current.fingerprint()),
        "every publish records the bundle it carries"
    );
    assert!(holders[0].bundle_published_at.is_some());
    assert!(db.store.bundle_holders("cluster").await.unwrap().is_empty());
    let version = holders[0].current_version.unwrap();
    let crt_before = std::fs::read_to_string(dir.join("tls.crt")).unwrap();
    let key_before = std::fs::read_to_string(dir.join("tls.key")).unwrap();

    let both = TrustBundle::from_pem(&format!("{}{}", ca.cert_pem(), next.cert_pem())).unwrap();
    let ctx = SinkContext::default();
    let report = republish_issuer(&db.store, &ctx, "r1", "default", &both)
        .await
        .unwrap();
    assert_eq!(report.published, ["cert/bundle/web"], "{report:?}");
    assert!(report.complete());
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        both.pem()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("tls.crt")).unwrap(),
        crt_before
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("tls.key")).unwrap(),
        key_before
    );
    let sink = FileSink::new(dir.clone());
    assert_eq!(sink.published_version_blocking().unwrap(), Some(version));
    let h = &db.store.bundle_holders("default").await.unwrap()[0];
    assert_eq!(h.bundle_fingerprint.as_deref(), Some(both.fingerprint()));
    assert_eq!(h.current_version, Some(version), "no new version");
    let (events, released): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_events WHERE action = 'credential.publish_bundle'
                   AND target = 'cert/bundle/web' AND details->>'bundle_fingerprint' = $1),
                (SELECT lease_owner IS NULL FROM credentials WHERE name = 'cert/bundle/web')",
    )
    .bind(both.fingerprint())
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((events, released), (1, true));

    // Nothing left to do: the record says the sink holds it.
    let again = republish_issuer(&db.store, &ctx, "r1", "default", &both)
        .await
        .unwrap();
    assert_eq!(again, Default::default());

    // A rotation in flight holds the lease: busy, untouched.
    let only_next = TrustBundle::from_pem(next.cert_pem()).unwrap();
    sqlx::query("UPDATE credentials SET lease_owner = 'other', lease_expires_at = now() + interval '1 minute'")
        .execute(db.pool())
        .await
        .unwrap();
    let busy = republish_issuer(&db.store, &ctx, "r1", "default", &only_next)
        .await
        .unwrap();
    assert_eq!(busy.busy, ["cert/bundle/web"]);
    assert!(!busy.complete());
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        both.pem()
    );

    // The sink lost the current version: marked due for a re-issue instead.
    sqlx::query("UPDATE credentials SET lease_owner = NULL, lease_expires_at = NULL")
        .execute(db.pool())
        .await
        .unwrap();
    std::fs::write(dir.join(".rekey-version"), format!("{}\n", version - 1)).unwrap();
    let drift = republish_issuer(&db.store, &ctx, "r1", "default", &only_next)
        .await
        .unwrap();
    assert_eq!(drift.drifted, ["cert/bundle/web"]);
    let reason: String = sqlx::query_scalar(
        "SELECT next_rotation_reason FROM credentials WHERE name = 'cert/bundle/web'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(reason, "sink_drift");
    // The re-issue publishes the issuer's bundle of the day and records it.
    assert_eq!(engine.run_once().await.unwrap(), 1);
    let h = &db.store.bundle_holders("default").await.unwrap()[0];
    assert!(h.current_version.unwrap() > version);
    assert_eq!(h.bundle_fingerprint.as_deref(), Some(current.fingerprint()));
}

fn secret_data(k: &KubeStandIn, ns: &str, name: &str, key: &str) -> String {
    let s = k.get("Secret", ns, name).unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(s["data"][key].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_secret_gets_a_new_ca_crt_with_a_resource_version_precondition() {
    let k = KubeStandIn::start();
    k.add_namespace("web");
    let ctx = SinkContext {
        kube: Some(k.client().await),
    };
    let sink = build(
        &SinkSpec::KubernetesSecret {
            namespace: "web".into(),
            name: "web-tls".into(),
        },
        &ctx,
    )
    .unwrap();
    let ca = fixtures::test_ca();
    let (m, na) = fixtures::tls_material(&ca, "web.web.svc");
    sink.publish(&rekey::sink::Publication {
        credential: "cert/web/web-tls",
        version: 4,
        number: 4,
        not_after: na,
        material: &m,
        adopt: false,
    })
    .await
    .unwrap();
    let before = k.get("Secret", "web", "web-tls").unwrap();
    let current = TrustBundle::from_pem(ca.cert_pem()).unwrap();
    assert_eq!(
        sink.published_bundle().await.unwrap().as_deref(),
        Some(current.fingerprint())
    );
    let next = new_ca("next CA");
    let both = TrustBundle::from_pem(&format!("{}{}", ca.cert_pem(), next.cert_pem())).unwrap();
    let update = |version| BundleUpdate {
        credential: "cert/web/web-tls",
        version,
        bundle: &both,
    };
    assert_eq!(
        sink.publish_bundle(&update(3)).await.unwrap(),
        BundleOutcome::NotCurrent { found: Some(4) }
    );
    assert_eq!(
        k.get("Secret", "web", "web-tls").unwrap(),
        before,
        "untouched"
    );
    // A concurrent writer: the replace is refused once (409), read again, retried.
    k.inject(Fault::new("update", "secrets", FaultKind::Status(409), 1));
    assert_eq!(
        sink.publish_bundle(&update(4)).await.unwrap(),
        BundleOutcome::Published
    );
    assert_eq!(k.faults_remaining(), 0, "the conflict was met");
    let after = k.get("Secret", "web", "web-tls").unwrap();
    assert_eq!(secret_data(&k, "web", "web-tls", "ca.crt"), both.pem());
    assert_eq!(after["data"]["tls.crt"], before["data"]["tls.crt"]);
    assert_eq!(after["data"]["tls.key"], before["data"]["tls.key"]);
    assert_eq!(after["metadata"]["annotations"][VERSION_ANNOTATION], "4");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_ne!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(
        sink.publish_bundle(&update(4)).await.unwrap(),
        BundleOutcome::Unchanged
    );
    assert_eq!(
        sink.published_bundle().await.unwrap().as_deref(),
        Some(both.fingerprint())
    );
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}

#[tokio::test]
async fn bundle_targets_publish_to_a_file_and_a_configmap_and_record_what_they_hold() {
    let db = fresh_db().await;
    let k = KubeStandIn::start();
    k.add_namespace("shop");
    k.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "theirs", "namespace": "shop"}, "data": {"ca.crt": "not ours"}}))
        .unwrap();
    let ctx = SinkContext {
        kube: Some(k.client().await),
    };
    let ca = Arc::new(fixtures::test_ca());
    let bundle = TrustBundle::from_pem(ca.cert_pem()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("trust/cluster-ca.crt");
    let target = |name: &str, sink: BundleSinkSpec| BundleTargetSpec {
        name: name.into(),
        issuer: "default".into(),
        sink,
        adopt: false,
    };
    let targets = vec![
        target("bundle/file", BundleSinkSpec::File { path: file.clone() }),
        target(
            "bundle/cm",
            BundleSinkSpec::ConfigMap {
                namespace: "shop".into(),
                name: "cluster-ca".into(),
                key: "ca.crt".into(),
            },
        ),
        target(
            "bundle/theirs",
            BundleSinkSpec::ConfigMap {
                namespace: "shop".into(),
                name: "theirs".into(),
                key: "ca.crt".into(),
            },
        ),
    ];
    let t = BundleTargets::declare(
        db.store.clone(),
        ctx.clone(),
        Arc::new(Issuers::default_ca(ca.clone())),
        targets,
    )
    .await
    .unwrap();
    let round = t.publish_all().await;
    assert_eq!(round[0], ("bundle/file".into(), TargetOutcome::Written));
    assert_eq!(round[1], ("bundle/cm".into(), TargetOutcome::Written));
    assert!(
        matches!(&round[2].1, TargetOutcome::Failed(e) if e.contains("not created by rekey")),
        "{round:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), bundle.pem());
    let cm = k.get("ConfigMap", "shop", "cluster-ca").unwrap();
    assert_eq!(cm["data"]["ca.crt"], bundle.pem());
    assert_eq!(
        cm["metadata"]["annotations"][BUNDLE_TARGET_ANNOTATION],
        "bundle/cm"
    );
    assert_eq!(
        k.get("ConfigMap", "shop", "theirs").unwrap()["data"]["ca.crt"],
        "not ours"
    );
    let rows = db.store.bundle_targets(Some("default")).await.unwrap();
    let row = |n: &str| rows.iter().find(|r| r.name == n).unwrap().clone();
    assert_eq!(
        row("bundle/file").bundle_fingerprint.as_deref(),
        Some(bundle.fingerprint())
    );
    assert_eq!(
        row("bundle/cm").bundle_fingerprint.as_deref(),
        Some(bundle.fingerprint())
    );
    assert!(row("bundle/theirs").last_error.is_some());
    let published_at = row("bundle/cm").published_at;

    // A second round writes nothing; a tampered file is put back.
    std::fs::write(&file, "tampered").unwrap();
    let round = t.publish_all().await;
    assert_eq!(round[0].1, TargetOutcome::Written);
    assert_eq!(round[1].1, TargetOutcome::Unchanged);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), bundle.pem());
    let rows = db.store.bundle_targets(None).await.unwrap();
    let cm_row = rows.iter().find(|r| r.name == "bundle/cm").unwrap();
    assert_eq!(
        cm_row.published_at, published_at,
        "unchanged keeps its time"
    );
    assert!(cm_row.checked_at >= published_at);

    // Undeclared targets are marked removed.
    BundleTargets::declare(
        db.store.clone(),
        ctx,
        Arc::new(Issuers::default_ca(ca.clone())),
        vec![],
    )
    .await
    .unwrap();
    assert!(db.store.bundle_targets(None).await.unwrap().is_empty());
    assert!(k.denied().is_empty(), "{:?}", k.denied());
}
