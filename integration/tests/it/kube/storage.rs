//! The stand-in's etcd storage mode: Secrets and ConfigMaps in a real etcd,
//! stored as the API server stores them (protobuf, then the write
//! transformer of the EncryptionConfiguration), read with any configured
//! key, resourceVersions from etcd's mod revisions, and the storage-migration
//! procedure (GET + unchanged PUT) rewriting exactly the stale values.

use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rekey_integration::{
    etcd::Etcd,
    kube::{KubeStandIn, Options, storage::StorageOptions},
};
use serde_json::json;

const CBC: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const GCM: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

fn config(dir: &Path, name: &str, providers: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets, configmaps]\n    providers:\n{providers}      - identity: {{}}\n"
        ),
    )
    .unwrap();
    p
}

fn cbc_old() -> String {
    format!("      - aescbc:\n          keys:\n            - {{name: old, secret: {CBC}}}\n")
}

fn gcm_new_then_cbc_old() -> String {
    format!(
        "      - aesgcm:\n          keys:\n            - {{name: new, secret: {GCM}}}\n{}",
        cbc_old()
    )
}

async fn raw(etcd: &Etcd, key: &str) -> (Vec<u8>, i64) {
    let mut c = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    let r = c.get(key, None).await.unwrap();
    let kv = &r.kvs()[0];
    (kv.value().to_vec(), kv.mod_revision())
}

#[tokio::test]
async fn secrets_live_in_etcd_under_the_write_key_and_migrate_by_unchanged_put() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let a = config(dir.path(), "a.yaml", &cbc_old());
    let b = config(dir.path(), "b.yaml", &gcm_new_then_cbc_old());
    let k = KubeStandIn::start_with(Options {
        storage: Some(StorageOptions::new(&etcd.endpoint, &a)),
        ..Default::default()
    });
    let api: Api<Secret> = Api::namespaced(k.admin_client().await, "default");
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db", "labels": {"app": "x"}},
        "type": "Opaque", "stringData": {"password": "hunter2"},
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &s).await.unwrap();
    let (value, rev) = raw(&etcd, "/registry/secrets/default/db").await;
    assert!(
        value.starts_with(b"k8s:enc:aescbc:v1:old:"),
        "stored under the write key: {:?}",
        String::from_utf8_lossy(&value[..30])
    );
    assert!(!value.windows(7).any(|w| w == b"hunter2"), "encrypted");
    assert_eq!(
        created.metadata.resource_version.as_deref(),
        Some(rev.to_string().as_str()),
        "resourceVersion is etcd's mod revision"
    );
    let got = api.get("db").await.unwrap();
    assert_eq!(got.data.as_ref().unwrap()["password"].0, b"hunter2");
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert_eq!(got.metadata.labels.as_ref().unwrap()["app"], "x");

    // rekey's own verification reads what the independent encoder wrote.
    let ring_config =
        rekey::etcd::encryption::parse(&std::fs::read_to_string(&a).unwrap()).unwrap();
    let ring = rekey::etcd::values::Keyring::new(
        &ring_config,
        &rekey::etcd::encryption::GroupResource::parse("secrets"),
    );
    let v = ring.judge(b"/registry/secrets/default/db", &value, true);
    assert!(v.verified && !v.stale, "{v:?}");

    // An unchanged PUT of a value under the write key writes nothing.
    let same = api
        .replace("db", &PostParams::default(), &got)
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        got.metadata.resource_version
    );
    assert_eq!(raw(&etcd, "/registry/secrets/default/db").await.1, rev);

    // New write key (the API servers restarted): reads still work, the value
    // is stale, and the unchanged PUT rewrites it under the new key.
    k.set_encryption_config(&b);
    let got = api.get("db").await.unwrap();
    assert_eq!(
        got.metadata.resource_version.as_deref(),
        Some(rev.to_string().as_str())
    );
    let moved = api
        .replace("db", &PostParams::default(), &got)
        .await
        .unwrap();
    let (value, rev2) = raw(&etcd, "/registry/secrets/default/db").await;
    assert!(rev2 > rev);
    assert!(value.starts_with(b"k8s:enc:aesgcm:v1:new:"));
    assert_eq!(
        moved.metadata.resource_version.as_deref(),
        Some(rev2.to_string().as_str())
    );
    assert_eq!(
        api.get("db").await.unwrap().data.unwrap()["password"].0,
        b"hunter2"
    );

    // A stale resourceVersion is a 409 Conflict Status.
    let e = api
        .replace("db", &PostParams::default(), &got)
        .await
        .unwrap_err();
    let kube::Error::Api(st) = e else {
        panic!("{e}")
    };
    assert_eq!((st.code, st.reason.as_str()), (409, "Conflict"));

    // Patches, lists with paging and selectors, deletion.
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "1"}}})),
    )
    .await
    .unwrap();
    for i in 0..5 {
        let mut s = s.clone();
        s.metadata.name = Some(format!("s{i}"));
        api.create(&PostParams::default(), &s).await.unwrap();
    }
    let page = api.list(&ListParams::default().limit(4)).await.unwrap();
    assert_eq!(page.items.len(), 4);
    let rest = api
        .list(
            &ListParams::default()
                .limit(4)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2);
    assert!(rest.metadata.continue_.is_none());
    let tiered = api
        .list(&ListParams::default().labels("tier=1"))
        .await
        .unwrap();
    assert_eq!(tiered.items.len(), 1);
    api.delete("s0", &DeleteParams::default()).await.unwrap();
    let e = api.get("s0").await.unwrap_err();
    let kube::Error::Api(st) = e else {
        panic!("{e}")
    };
    assert_eq!(st.code, 404);

    // ConfigMaps too.
    let cms: Api<ConfigMap> = Api::namespaced(k.admin_client().await, "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let (value, _) = raw(&etcd, "/registry/configmaps/default/c").await;
    assert!(value.starts_with(b"k8s:enc:aesgcm:v1:new:"));
    assert_eq!(cms.get("c").await.unwrap().data.unwrap()["k"], "v");
}

#[tokio::test]
async fn a_value_no_configured_key_opens_is_an_internal_error() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let a = config(dir.path(), "a.yaml", &cbc_old());
    let only_new = config(
        dir.path(),
        "n.yaml",
        &format!("      - aesgcm:\n          keys:\n            - {{name: new, secret: {GCM}}}\n"),
    );
    let k = KubeStandIn::start_with(Options {
        storage: Some(StorageOptions::new(&etcd.endpoint, &a)),
        ..Default::default()
    });
    let api: Api<Secret> = Api::namespaced(k.admin_client().await, "default");
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "stringData": {"a": "b"}}))
            .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
    k.set_encryption_config(&only_new);
    let e = api.get("x").await.unwrap_err();
    let kube::Error::Api(st) = e else {
        panic!("{e}")
    };
    assert_eq!(st.code, 500, "{st:?}");
    assert!(st.message.contains("unable to transform key"), "{st:?}");
}
