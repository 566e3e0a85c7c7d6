//! The `aesgcm-write-budget` finding end to end: a first recorded check
//! notes the write counts (etcd `version`) of the covered values; after
//! 150,000 real writes under the aesgcm write key, the next check warns.

use futures::StreamExt;
use rekey_integration::{
    bin::{outcome, rekey, run},
    etcd::Etcd,
    k8s_values::{encode, load, secret},
    pg::fresh_db,
};
use serde_json::Value;

const GCM1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn verify(etcd: &Etcd, config: &std::path::Path, db: &str) -> (i32, Value, String) {
    let mut cmd = rekey();
    cmd.args(["etcd", "verify", "--json", "--encryption-config"])
        .arg(config)
        .args(["--endpoints", &etcd.endpoint, "--database-url", db]);
    let (code, out, err) = outcome(&run(&mut cmd));
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, v, err)
}

fn budget(r: &Value) -> Option<Value> {
    r["config"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "aesgcm-write-budget")
        .cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_under_an_aesgcm_key_are_counted_against_its_budget() {
    let etcd = Etcd::start();
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("enc.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - name: k1\n              secret: {GCM1}\n      - identity: {{}}\n"
        ),
    )
    .unwrap();
    let reqs = vec![
        secret("a", "one", "aesgcm", "k1", GCM1),
        secret("a", "two", "aesgcm", "k1", GCM1),
    ];
    let values = encode(&reqs);
    let kvs: Vec<(String, Vec<u8>)> = reqs
        .iter()
        .zip(values.clone())
        .map(|(r, v)| (r["etcd_key"].as_str().unwrap().to_string(), v))
        .collect();
    let client = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    load(&client, kvs.clone()).await;

    let (code, r, err) = verify(&etcd, &config, &db.url);
    assert_eq!(code, 0, "{err}\n{r:#}");
    assert!(budget(&r).is_none(), "{r:#}");
    assert_eq!(r["scan"]["version_sum"], 2, "{r:#}");

    // 150,000 writes of one Secret (as the API server would, under k1).
    let (key, value) = kvs[0].clone();
    futures::stream::iter(0..150_000)
        .map(|_| {
            let mut kv = client.kv_client();
            let (key, value) = (key.clone(), value.clone());
            async move { kv.put(key, value, None).await.unwrap() }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;

    let (_, r, err) = verify(&etcd, &config, &db.url);
    let f = budget(&r).unwrap_or_else(|| panic!("no budget finding: {err}\n{r:#}"));
    assert_eq!(f["severity"], "warning", "{f:#}");
    let msg = f["message"].as_str().unwrap();
    assert!(msg.contains("aesgcm:k1") && msg.contains("150000"), "{msg}");
}
