//! `rekey etcd rotate-key` end to end: the three configurations, a rewrite
//! by the independent encoder, and the scan showing when no stale value remains.

use std::{os::unix::fs::PermissionsExt, path::Path};

use base64::Engine;
use rekey::secret::ExposeSecret;
use rekey_integration::{
    bin::{outcome, rekey, run},
    etcd::Etcd,
    k8s_values::{encode, load, secret},
};
use serde_json::Value;

const GCM1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn verify(etcd: &Etcd, config: &Path) -> (i32, Value) {
    let mut cmd = rekey();
    cmd.args(["etcd", "verify", "--json", "--encryption-config"])
        .arg(config)
        .args(["--endpoints", &etcd.endpoint]);
    let (code, out, err) = outcome(&run(&mut cmd));
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}")),
    )
}

async fn write_secrets(etcd: &Etcd, names: &[String], key_name: &str, key_b64: &str) {
    let reqs: Vec<Value> = names
        .iter()
        .map(|n| secret("app", n, "aesgcm", key_name, key_b64))
        .collect();
    let kvs = reqs
        .iter()
        .zip(encode(&reqs))
        .map(|(r, v)| (r["etcd_key"].as_str().unwrap().to_string(), v))
        .collect();
    let client = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    load(&client, kvs).await;
}

#[tokio::test]
async fn rotation_plan_then_rewrite_until_nothing_is_stale() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("enc.yaml");
    std::fs::write(
        &enc,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - name: k1\n              secret: {GCM1}\n      - identity: {{}}\n  - resources: [configmaps]\n    providers:\n      - identity: {{}}\n"
        ),
    )
    .unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    write_secrets(&etcd, &names, "k1", GCM1).await;

    let out = dir.path().join("rotation");
    let mut cmd = rekey();
    cmd.args([
        "etcd",
        "rotate-key",
        "--key-name",
        "k2",
        "--encryption-config",
    ])
    .arg(&enc)
    .arg("--out")
    .arg(&out);
    let (code, stdout, err) = outcome(&run(&mut cmd));
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("aesgcm:k2"), "{stdout}");
    for f in [
        "1-add-new-key.yaml",
        "2-new-key-first.yaml",
        "3-remove-old-key.yaml",
        "PLAN.md",
    ] {
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let plan = std::fs::read_to_string(out.join("PLAN.md")).unwrap();
    assert!(plan.contains("kubectl get secrets --all-namespaces -o json | kubectl replace -f -"));
    assert!(!plan.contains(GCM1), "PLAN.md holds no key");

    // Step 1: old key still writes; nothing stale.
    let (code, r) = verify(&etcd, &out.join("1-add-new-key.yaml"));
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["config"]["write"], "aesgcm:k1");
    assert_eq!(r["scan"]["counts"]["stale"], 0);

    // Step 2: the new key writes; every value now needs a rewrite.
    let step2 = out.join("2-new-key-first.yaml");
    let (code, r) = verify(&etcd, &step2);
    assert_eq!(code, 0, "stale values are a warning: {r:#}");
    assert_eq!(r["config"]["write"], "aesgcm:k2");
    assert_eq!(r["scan"]["counts"]["stale"], 10);
    assert_eq!(r["scan"]["verified"], 10);

    // The new key, as the API server would read it from the step-2 file.
    let parsed = rekey::etcd::encryption::parse(&std::fs::read_to_string(&step2).unwrap()).unwrap();
    let new_key = &parsed.rules[0].providers[0].keys[0];
    assert_eq!(new_key.name, "k2");
    assert!(
        new_key.created_at.is_some(),
        "the new key carries its creation time"
    );
    let k2 = base64::engine::general_purpose::STANDARD.encode(new_key.secret.expose_secret());

    // Rewrite half: five stale remain, and dropping the old key now would
    // make them unreadable.
    write_secrets(&etcd, &names[..5], "k2", &k2).await;
    let (_, r) = verify(&etcd, &step2);
    assert_eq!(r["scan"]["counts"]["stale"], 5);
    let (code, r) = verify(&etcd, &out.join("3-remove-old-key.yaml"));
    assert_eq!(code, 1);
    assert_eq!(r["scan"]["counts"]["undecryptable"], 5);

    // Rewrite the rest: nothing stale; step 3 is safe.
    write_secrets(&etcd, &names[5..], "k2", &k2).await;
    let (code, r) = verify(&etcd, &step2);
    assert_eq!(code, 0);
    assert_eq!(r["scan"]["counts"]["stale"], 0);
    assert!(r["scan"]["stale"].as_array().unwrap().is_empty());
    let (code, r) = verify(&etcd, &out.join("3-remove-old-key.yaml"));
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["scan"]["verified"], 10);

    // The output directory is never overwritten; bad input is exit 2.
    let (code, _, err) = outcome(&run(&mut cmd));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("1-add-new-key.yaml"), "{err}");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "kind: EncryptionConfiguration\n",
    )
    .unwrap();
    let mut bad = rekey();
    bad.args(["etcd", "rotate-key", "--encryption-config"])
        .arg(dir.path().join("bad.yaml"))
        .arg("--out")
        .arg(dir.path().join("x"));
    let (code, _, err) = outcome(&run(&mut bad));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("apiVersion") || err.contains("resources"),
        "{err}"
    );
}
