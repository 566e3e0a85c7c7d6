//! A `ca` issuer whose CA is a Kubernetes Secret (`tls.crt`, `tls.key`),
//! read through rekey's RBAC from `deploy/`, checked at load like files.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{TimeDelta, Utc};
use rekey::issue::{CertAuthority, KeyType};
use rekey_integration::{
    bin::{outcome, rekey, run},
    kube::KubeStandIn,
    pki,
    serve::{Scenario, read_sink, wait_for},
};
use secrecy::ExposeSecret;
use serde_json::json;

fn tls_secret(name: &str, cert: &str, key: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "pki"},
        "data": {"tls.crt": STANDARD.encode(cert), "tls.key": STANDARD.encode(key)}})
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_from_a_secret_signs_and_a_bad_one_exits_2() {
    pki::tlscheck();
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    k.add_namespace("pki");
    let ca_pem = std::fs::read_to_string(s.path("ca/ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(s.path("ca/ca.key")).unwrap();
    k.put(tls_secret("cluster-ca", &ca_pem, &ca_key)).unwrap();
    let (_, other_key) =
        CertAuthority::generate("other", KeyType::EcdsaP256, TimeDelta::days(1), Utc::now())
            .unwrap();
    k.put(tls_secret("mismatched", &ca_pem, other_key.expose_secret()))
        .unwrap();
    k.put(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "no-key", "namespace": "pki"},
        "data": {"tls.crt": STANDARD.encode(&ca_pem)}}))
    .unwrap();
    let config = |secret: &str| {
        format!(
            "[database]\nurl = \"{}\"\n\n[kubernetes]\nkubeconfig = \"{}\"\n\n\
             [[issuer]]\nname = \"cluster\"\nsecret = {{ namespace = \"pki\", name = \"{secret}\" }}\n\n\
             [[certificate]]\nname = \"cert/pki/web\"\nissuer = \"cluster\"\ndns_names = [\"web.pki.svc\"]\n\
             lifetime = \"24h\"\nsink = {{ kind = \"file\", dir = \"{}\" }}\n",
            s.db.url,
            k.kubeconfig().display(),
            s.path("web").display()
        )
    };

    for (secret, needles) in [
        (
            "mismatched",
            ["issuer[cluster].secret", "tls.key of Secret pki/mismatched"],
        ),
        ("no-key", ["issuer[cluster].secret", "no key `tls.key`"]),
    ] {
        let path = s.write_config(&format!("{secret}.toml"), &config(secret));
        let (code, _, err) = outcome(&run(rekey().arg("serve").arg("--config").arg(&path)));
        assert_eq!(code, 2, "{secret}: exit {code}: {err}");
        for n in needles {
            assert!(
                err.contains(n),
                "{secret}: stderr does not mention `{n}`: {err}"
            );
        }
    }
    assert!(
        read_sink(&s.path("web")).is_none(),
        "a refused issuer published"
    );

    let path = s.write_config("good.toml", &config("cluster-ca"));
    let server = s.serve(&path, &[]);
    let snap = wait_for(Duration::from_secs(60), || read_sink(&s.path("web")))
        .unwrap_or_else(|| panic!("not published:\n{}", server.log()));
    assert_eq!(snap.ca.trim(), ca_pem.trim());
    let dir = s.path("check");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), &snap.cert).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    pki::go(&[
        "verify",
        "-roots",
        &s.path("ca/ca.crt").display().to_string(),
        "-cert",
        &p("tls.crt"),
        "-usage",
        "server",
        "-dns",
        "web.pki.svc",
    ])
    .unwrap_or_else(|e| panic!("Go refuses it: {e}"));
    let (code, out, err) = outcome(&run(rekey()
        .args(["status", "--json", "--config"])
        .arg(&path)));
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = doc["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "ca/cluster")
        .unwrap_or_else(|| panic!("no ca/cluster: {doc}"));
    assert_eq!(row["state"], "valid", "{row}");

    // A CA rotation with the CA in the Secret: the new CA waits in
    // `next.crt`/`next.key`, then becomes `tls.crt`/`tls.key` with the old
    // one kept as `previous.crt`/`previous.key`, one update each.
    let (code, _, err) = outcome(&run(rekey()
        .args([
            "ca",
            "rotate",
            "cluster",
            "--overlap",
            "1s",
            "--max-rate",
            "0",
            "--config",
        ])
        .arg(&path)));
    assert_eq!(code, 0, "{err}");
    let data = |key: &str| {
        let secret = k.get("Secret", "pki", "cluster-ca")?;
        let b64 = secret["data"][key].as_str()?.to_string();
        String::from_utf8(STANDARD.decode(b64).ok()?).ok()
    };
    let new_ca = wait_for(Duration::from_secs(90), || {
        let d = rekey()
            .args(["ca", "status", "cluster", "--json", "--config"])
            .arg(&path)
            .output()
            .ok()?;
        let doc: serde_json::Value = serde_json::from_slice(&d.stdout).ok()?;
        (doc["issuers"][0]["rotation"]["phase"] == "done").then_some(())?;
        data("tls.crt")
    })
    .unwrap_or_else(|| panic!("the rotation to finish:\n{}", server.log()));
    assert_ne!(new_ca.trim(), ca_pem.trim());
    assert_eq!(data("previous.crt").unwrap().trim(), ca_pem.trim());
    assert!(data("next.crt").is_none() && data("next.key").is_none());
    let snap = read_sink(&s.path("web")).unwrap();
    assert_eq!(
        snap.ca.trim(),
        new_ca.trim(),
        "the sink trusts the new CA alone"
    );
    std::fs::write(dir.join("new-ca.crt"), &new_ca).unwrap();
    std::fs::write(dir.join("tls.crt"), &snap.cert).unwrap();
    pki::go(&[
        "verify",
        "-roots",
        &p("new-ca.crt"),
        "-cert",
        &p("tls.crt"),
        "-usage",
        "server",
        "-dns",
        "web.pki.svc",
    ])
    .unwrap_or_else(|e| panic!("Go refuses the re-issued leaf: {e}"));
    assert!(k.denied().is_empty(), "{:#?}", k.denied());
}
