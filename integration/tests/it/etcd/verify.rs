//! `rekey etcd verify` end to end: the real binary against a real etcd,
//! values written by the independent Python encoder.

use std::path::{Path, PathBuf};

use rekey_integration::{
    bin::{outcome, rekey, run},
    etcd::Etcd,
    k8s_values::{encode, load, secret},
};
use serde_json::{Value, json};

/// 32-byte keys (and one 16-byte aesgcm key), base64.
const GCM1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const GCM2: &str = "AgICAgICAgICAgICAgICAg==";
const CBC1: &str = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";
const BOX1: &str = "BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=";

fn full_config() -> String {
    format!(
        r#"apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - aesgcm:
          keys:
            - name: k1
              secret: {GCM1}
            - name: k2
              secret: {GCM2}
      - aescbc:
          keys:
            - name: cbc1
              secret: {CBC1}
      - secretbox:
          keys:
            - name: box1
              secret: {BOX1}
      - kms:
          apiVersion: v2
          name: vault
          endpoint: unix:///var/run/kms.sock
      - identity: {{}}
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

fn verify(etcd: &Etcd, config: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = rekey();
    cmd.args(["etcd", "verify", "--encryption-config"])
        .arg(config)
        .args(["--endpoints", &etcd.endpoint])
        .args(extra);
    outcome(&run(&mut cmd))
}

fn verify_json(etcd: &Etcd, config: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = verify(etcd, config, &args);
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}"));
    (code, v)
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect();
    out.sort();
    out
}

fn ids(report: &Value) -> Vec<String> {
    report["config"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

fn key(name: &str) -> String {
    format!("/registry/secrets/ns/{name}")
}

#[tokio::test]
async fn every_format_is_classified_counted_and_proven() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "enc.yaml", &full_config());

    let mut reqs = vec![
        secret("ns", "gcm-a", "aesgcm", "k1", GCM1),
        secret("ns", "gcm-b", "aesgcm", "k1", GCM1),
        secret("ns", "gcm-c", "aesgcm", "k1", GCM1),
        secret("ns", "gcm-old", "aesgcm", "k2", GCM2),
        secret("ns", "cbc", "aescbc", "cbc1", CBC1),
        secret("ns", "cbc-flipped", "aescbc", "cbc1", CBC1),
        secret("ns", "box", "secretbox", "box1", BOX1),
        secret("ns", "box-flipped", "secretbox", "box1", BOX1),
        secret("ns", "plain-proto", "plaintext", "", ""),
        secret("ns", "kms", "kms-v2", "vault", ""),
        secret("ns", "truncated", "aesgcm", "k1", GCM1),
        secret("ns", "unknown-key", "aesgcm", "k9", GCM1),
    ];
    reqs.push(
        json!({"etcd_key": key("box-json"), "format": "secretbox", "key_name": "box1",
        "secret": BOX1, "object": "json", "name": "box-json", "namespace": "ns"}),
    );
    reqs.push(
        json!({"etcd_key": key("plain-json"), "format": "plaintext", "object": "json",
        "name": "plain-json", "namespace": "ns"}),
    );
    // Encrypted for gcm-a's key path, stored under another: GCM's AAD must refuse it.
    reqs.push(
        json!({"etcd_key": key("moved"), "aad_key": key("gcm-a"), "format": "aesgcm",
        "key_name": "k1", "secret": GCM1, "name": "gcm-a", "namespace": "ns"}),
    );
    let values = encode(&reqs);
    let mut kvs: Vec<(String, Vec<u8>)> = Vec::new();
    for (req, mut value) in reqs.iter().zip(values) {
        let k = req["etcd_key"].as_str().unwrap().to_string();
        if k.ends_with("/truncated") {
            value.truncate("k8s:enc:aesgcm:v1:k1:".len() + 20);
        }
        if k.ends_with("/box-flipped") {
            let n = value.len();
            value[n - 1] ^= 0x01;
        }
        if k.ends_with("/cbc-flipped") {
            // flip a bit of the IV: the first plaintext block (the protobuf magic) changes
            value["k8s:enc:aescbc:v1:cbc1:".len()] ^= 0x01;
        }
        kvs.push((k, value));
    }
    // Outside the prefix: not counted.
    kvs.push(("/registry/configmaps/ns/c".into(), b"k8s\x00x".to_vec()));
    let client = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    load(&client, kvs).await;

    let (code, r) = verify_json(&etcd, &config, &[]);
    assert_eq!(
        code, 1,
        "plaintext and undecryptable values fail the check: {r:#}"
    );
    let s = &r["scan"];
    assert_eq!(r["config"]["valid"], true);
    assert_eq!(r["config"]["write"], "aesgcm:k1");
    assert_eq!(s["prefix"], "/registry/secrets/");
    assert_eq!(s["total"], 15, "{s:#}");
    assert_eq!(
        s["by_provider"],
        json!({"identity": 2, "aescbc": 2, "aesgcm": 7, "secretbox": 3, "kms": 1})
    );
    assert_eq!(s["by_key"]["aesgcm:k1"], 5, "{s:#}");
    assert_eq!(s["by_key"]["aesgcm:k2"], 1);
    assert_eq!(s["by_key"]["aesgcm:k9"], 1);
    assert_eq!(s["by_key"]["aescbc:cbc1"], 2);
    assert_eq!(s["by_key"]["secretbox:box1"], 3);
    assert_eq!(s["by_key"]["kms:v2:vault"], 1);
    assert_eq!(s["by_key"]["identity"], 2);
    assert_eq!(
        strings(&s["plaintext"]),
        [key("plain-json"), key("plain-proto")]
    );
    assert_eq!(
        strings(&s["stale"]),
        [
            key("box"),
            key("box-json"),
            key("cbc"),
            key("gcm-old"),
            key("kms")
        ]
    );
    assert_eq!(
        strings(&s["undecryptable"]),
        [
            key("box-flipped"),
            key("cbc-flipped"),
            key("moved"),
            key("truncated"),
            key("unknown-key")
        ]
    );
    let reasons: Vec<(String, String)> = s["undecryptable_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["key"].as_str().unwrap().into(),
                p["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    let reason = |k: &str| &reasons.iter().find(|(key, _)| key.ends_with(k)).unwrap().1;
    assert!(
        reason("/moved").contains("authentication failed"),
        "{reasons:?}"
    );
    assert!(reason("/truncated").contains("too short"), "{reasons:?}");
    assert!(
        reason("/unknown-key").contains("no configured provider or key"),
        "{reasons:?}"
    );
    assert!(
        reason("/cbc-flipped").contains("not a Kubernetes"),
        "{reasons:?}"
    );
    // gcm-a,b,c, gcm-old, cbc, box, box-json
    assert_eq!(s["verified"], 7, "{s:#}");
    assert_eq!(s["not_verifiable"], 1);
    assert_eq!(
        s["counts"],
        json!({"plaintext": 2, "stale": 5, "undecryptable": 5})
    );
    let found = ids(&r);
    for id in [
        "plaintext-values",
        "undecryptable-values",
        "stale-values",
        "kms-not-verifiable",
        "aescbc-not-recommended",
        "aesgcm-needs-rotation",
    ] {
        assert!(
            found.contains(&id.to_string()),
            "{id} missing from {found:?}"
        );
    }
    let text = r.to_string();
    for secret in [GCM1, GCM2, CBC1, BOX1] {
        assert!(!text.contains(secret), "key material in the report");
    }

    // Classification only: no decryption, so the damaged ciphertexts pass as
    // readable-looking (only truncation and unknown keys show).
    let (code, r) = verify_json(&etcd, &config, &["--sample", "0"]);
    assert_eq!(code, 1);
    assert_eq!(r["scan"]["verified"], 0);
    assert_eq!(r["scan"]["sampled"], 0);
    assert_eq!(
        strings(&r["scan"]["undecryptable"]),
        [key("truncated"), key("unknown-key")]
    );

    // The human report names the problems too.
    let (code, out, _) = verify(&etcd, &config, &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("undecryptable: /registry/secrets/ns/moved"),
        "{out}"
    );
    assert!(out.contains("result: PROBLEMS FOUND"), "{out}");

    // Lists are bounded; counts stay exact.
    let (_, r) = verify_json(&etcd, &config, &["--max-listed", "1"]);
    assert_eq!(r["scan"]["stale"].as_array().unwrap().len(), 1);
    assert_eq!(r["scan"]["counts"]["stale"], 5);
    assert_eq!(r["scan"]["truncated"], true);
}

#[tokio::test]
async fn clean_store_exits_zero_and_sampling_opens_n() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "enc.yaml",
        &format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - secretbox:\n          keys:\n            - {{name: box1, secret: {BOX1}}}\n      - identity: {{}}\n"
        ),
    );
    let reqs: Vec<Value> = (0..40)
        .map(|i| {
            secret(
                &format!("ns{}", i % 3),
                &format!("s{i}"),
                "secretbox",
                "box1",
                BOX1,
            )
        })
        .collect();
    let kvs = reqs
        .iter()
        .zip(encode(&reqs))
        .map(|(r, v)| (r["etcd_key"].as_str().unwrap().to_string(), v))
        .collect();
    let client = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    load(&client, kvs).await;

    let (code, r) = verify_json(&etcd, &config, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["scan"]["total"], 40);
    assert_eq!(r["scan"]["verified"], 40);
    assert!(r["scan"]["plaintext"].as_array().unwrap().is_empty());
    assert!(r["scan"]["stale"].as_array().unwrap().is_empty());
    assert!(r["scan"]["undecryptable"].as_array().unwrap().is_empty());
    assert!(r["scan"]["revision"].as_i64().unwrap() > 0);

    let (code, r) = verify_json(&etcd, &config, &["--sample", "7"]);
    assert_eq!(code, 0);
    assert_eq!(r["scan"]["verified"], 7);
    assert_eq!(r["scan"]["sampled"], 7);
    assert_eq!(r["scan"]["total"], 40);

    let (code, out, _) = verify(&etcd, &config, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("result: clean"), "{out}");

    // Another prefix on request: nothing there.
    let (code, r) = verify_json(&etcd, &config, &["--resource", "configmaps"]);
    assert_eq!(r["scan"]["prefix"], "/registry/configmaps/");
    assert_eq!(r["scan"]["total"], 0);
    assert!(
        ids(&r).contains(&"resource-not-encrypted".to_string()),
        "{r:#}"
    );
    assert_eq!(code, 0, "a warning alone does not fail the check");

    // A configuration whose write provider is identity: secrets-not-encrypted
    // is an error, and the encrypted values are stale.
    let identity_first = write(
        dir.path(),
        "identity.yaml",
        &format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - identity: {{}}\n      - secretbox:\n          keys:\n            - {{name: box1, secret: {BOX1}}}\n"
        ),
    );
    let (code, r) = verify_json(&etcd, &identity_first, &[]);
    assert_eq!(code, 1);
    assert!(ids(&r).contains(&"secrets-not-encrypted".to_string()));
    assert_eq!(r["scan"]["counts"]["stale"], 40);

    // Unreachable etcd: exit 1 with a message naming the endpoint.
    let mut cmd = rekey();
    cmd.args(["etcd", "verify", "--encryption-config"])
        .arg(&config)
        .args(["--endpoints", "http://127.0.0.1:1"]);
    let (code, _, err) = outcome(&run(&mut cmd));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn no_identity_fallback_with_plaintext_is_an_error() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "enc.yaml",
        &format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - {{name: k1, secret: {GCM1}}}\n"
        ),
    );
    let reqs = vec![secret("a", "p", "plaintext", "", "")];
    let kvs = vec![(key("p"), encode(&reqs).remove(0))];
    let client = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    load(&client, kvs).await;
    let (code, r) = verify_json(&etcd, &config, &["--max-key-age", "90d"]);
    assert_eq!(code, 1);
    let found = ids(&r);
    assert!(
        found.contains(&"no-identity-fallback".to_string()),
        "{found:?}"
    );
    assert!(
        found.contains(&"write-key-age-unknown".to_string()),
        "{found:?}"
    );
    assert!(
        !found.contains(&"aesgcm-needs-rotation".to_string()),
        "{found:?}"
    );
}

#[tokio::test]
async fn tls_etcd_with_client_certificates() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "enc.yaml", &full_config());
    let reqs = vec![
        secret("t", "a", "aesgcm", "k1", GCM1),
        secret("t", "b", "aesgcm", "k1", GCM1),
    ];
    let kvs = reqs
        .iter()
        .zip(encode(&reqs))
        .map(|(r, v)| (r["etcd_key"].as_str().unwrap().to_string(), v))
        .collect();
    let client = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    load(&client, kvs).await;

    let tls_args = [
        "--cacert".to_string(),
        tls.ca_cert.display().to_string(),
        "--cert".into(),
        tls.client_cert.display().to_string(),
        "--key".into(),
        tls.client_key.display().to_string(),
    ];
    let tls_refs: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let (code, r) = verify_json(&etcd, &config, &tls_refs);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["scan"]["verified"], 2);

    // Without a client certificate etcd refuses the connection: exit 1.
    let (code, _, err) = verify(&etcd, &config, &tls_refs[..2]);
    assert_eq!(code, 1, "{err}");
    // A certificate file that does not exist is bad input: exit 2.
    let (code, _, err) = verify(
        &etcd,
        &config,
        &[
            "--cacert",
            "/nonexistent/ca.crt",
            "--cert",
            tls_refs[3],
            "--key",
            tls_refs[5],
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/ca.crt"), "{err}");
}

#[test]
fn invalid_configs_exit_2_naming_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = full_config();
    let cases = [
        (
            good.replace(GCM2, "A==="),
            "resources[0].providers[0].aesgcm.keys[1].secret",
            12,
        ),
        (
            good.replace(GCM2, "AgIC"),
            "resources[0].providers[0].aesgcm.keys[1].secret",
            12,
        ),
        (
            good.replace(&format!("secret: {BOX1}"), &format!("secret: {GCM2}")),
            "resources[0].providers[2].secretbox.keys[0].secret",
            20,
        ),
        (
            good.replace("name: cbc1", "name: ''"),
            "resources[0].providers[1].aescbc.keys[0].name",
            15,
        ),
        (
            good.replace("unix:///var/run/kms.sock", "https://kms"),
            "resources[0].providers[3].kms.endpoint",
            24,
        ),
        (
            good.replace("apiVersion: v2", "apiVersion: v2\n          cachesize: 5"),
            "resources[0].providers[3].kms.cachesize",
            23,
        ),
        (
            good.replace("name: vault", "name: 'a:b'"),
            "resources[0].providers[3].kms.name",
            23,
        ),
        (
            good.replace("      - secrets\n", "      - Secrets\n"),
            "resources[0].resources[0]",
            5,
        ),
        (
            good.replace("      - secrets\n", "      - '*'\n"),
            "resources[0].resources[0]",
            5,
        ),
        (
            good.replace(
                "      - identity: {}\n",
                "      - identity: {}\n        aesgcm: {keys: []}\n",
            ),
            "resources[0].providers[4]",
            25,
        ),
        (
            good.replace(
                "          keys:\n            - name: box1",
                "          colour: red\n          keys:\n            - name: box1",
            ),
            "resources[0].providers[2].secretbox.colour",
            18,
        ),
        (
            format!(
                "{}  - resources: [secrets]\n    providers: [{{identity: {{}}}}]\n",
                good.replace("      - secrets\n", "      - '*.'\n")
            ),
            "resources[1].resources[0]",
            26,
        ),
        (
            format!("{good}  - resources: [configmaps]\n    providers: []\n"),
            "resources[1].providers",
            27,
        ),
        (
            good.replace("kind: EncryptionConfiguration", "kind: Secret"),
            "kind",
            2,
        ),
        (
            good.replace("      - aesgcm:\n", "      - aesgcm:\n      - aesgcm:\n"),
            "resources[0].providers[0]",
            7,
        ),
        (
            good.replace("      - secrets\n", "      - [secrets\n"),
            "(syntax)",
            6,
        ),
    ];
    for (i, (text, path, line)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("bad{i}.yaml"), text);
        let mut cmd = rekey();
        cmd.args([
            "etcd",
            "verify",
            "--endpoints",
            "http://127.0.0.1:1",
            "--encryption-config",
        ])
        .arg(&file);
        let (code, _, err) = outcome(&run(&mut cmd));
        assert_eq!(code, 2, "case {i}: {err}");
        assert!(
            err.contains(&format!("{path}: ")) && err.contains(&format!("(line {line})")),
            "case {i}: expected `{path}` at line {line} in:\n{err}"
        );
        assert!(
            !err.contains(GCM1) && !err.contains(BOX1),
            "key material in the error"
        );
    }
    // --json also prints the report with valid: false and the errors as findings.
    let file = write(dir.path(), "bad-json.yaml", &good.replace(GCM2, "A==="));
    let mut cmd = rekey();
    cmd.args([
        "etcd",
        "verify",
        "--json",
        "--endpoints",
        "http://127.0.0.1:1",
        "--encryption-config",
    ])
    .arg(&file);
    let (code, out, _) = outcome(&run(&mut cmd));
    assert_eq!(code, 2);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["config"]["valid"], false);
    assert_eq!(r["scan"], Value::Null);
    assert_eq!(r["config"]["findings"][0]["id"], "invalid-config");
    assert_eq!(r["config"]["findings"][0]["line"], 12);

    // Unreadable file and bad flags: exit 2.
    for args in [
        vec!["etcd", "verify", "--encryption-config", "/nonexistent.yaml"],
        vec!["etcd", "verify"],
        vec![
            "etcd",
            "verify",
            "--encryption-config",
            "/x",
            "--endpoints",
            "10.0.0.1:2379",
        ],
        vec![
            "etcd",
            "verify",
            "--encryption-config",
            "/x",
            "--sample",
            "many",
        ],
        vec![
            "etcd",
            "verify",
            "--encryption-config",
            "/x",
            "--max-key-age",
            "soon",
        ],
    ] {
        let (code, _, err) = outcome(&run(rekey().args(&args)));
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}
