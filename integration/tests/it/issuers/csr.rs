//! `kubernetes-csr` issuers against the stand-in's CertificateSigningRequest
//! API, through the real binary as rekey's ServiceAccount under `deploy/`
//! RBAC: rekey approves its own request only where RBAC lets it `approve`
//! the signer; otherwise the credential is `awaiting-approval` until a
//! person approves, and the signed certificate is then published.

use std::{path::Path, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use rekey_integration::{
    bin::{outcome, rekey, run},
    kube::{KubeStandIn, Options, REKEY_NAMESPACE, REKEY_SERVICE_ACCOUNT},
    pki,
    serve::{Scenario, Server, SinkSnapshot, read_sink, wait_for},
};
use serde_json::{Value, json};

const SIGNER: &str = "example.com/clients";

fn standin() -> KubeStandIn {
    KubeStandIn::start_with(Options {
        signers: vec![SIGNER.to_string()],
        ..Options::default()
    })
}

fn config(s: &Scenario, k: &KubeStandIn) -> std::path::PathBuf {
    let text = format!(
        "[database]\nurl = \"{}\"\n\n[kubernetes]\nkubeconfig = \"{}\"\n\n\
         [[issuer]]\nname = \"clients\"\nkind = \"kubernetes-csr\"\nsigner_name = \"{SIGNER}\"\n\n\
         [engine]\nmax_jitter = \"0s\"\n\n\
         [[certificate]]\nname = \"cert/ci/deployer\"\nissuer = \"clients\"\ncommon_name = \"deployer\"\n\
         usages = [\"client\"]\nlifetime = \"1h\"\nsink = {{ kind = \"file\", dir = \"{}\" }}\n",
        s.db.url,
        k.kubeconfig().display(),
        s.path("deployer").display()
    );
    s.write_config("rekey.toml", &text)
}

fn csrs(k: &KubeStandIn) -> Vec<Value> {
    k.list("CertificateSigningRequest", None)
        .into_iter()
        .filter(|c| c["spec"]["signerName"] == SIGNER)
        .collect()
}

fn conditions(csr: &Value) -> Vec<String> {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}:{}",
                c["type"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn state(config: &Path, name: &str) -> Option<String> {
    let (code, out, _) = outcome(&run(rekey()
        .args(["status", "--json", "--config"])
        .arg(config)));
    if code != 0 {
        return None;
    }
    let doc: Value = serde_json::from_str(&out).ok()?;
    doc["credentials"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["state"].as_str().map(String::from))
}

fn published(s: &Scenario, server: &Server, patience: Duration) -> SinkSnapshot {
    wait_for(patience, || read_sink(&s.path("deployer")))
        .unwrap_or_else(|| panic!("cert/ci/deployer was not published:\n{}", server.log()))
}

/// What every signed CSR must show: the request as configured, the
/// certificate the stand-in's signer returned published with the
/// cluster's CA as `ca.crt`, and a lifetime of `expirationSeconds`.
fn check_signed(s: &Scenario, k: &KubeStandIn, csr: &Value, snap: &SinkSnapshot) {
    assert_eq!(csr["spec"]["expirationSeconds"], 3600, "{csr}");
    assert_eq!(
        csr["spec"]["usages"],
        json!(["digital signature", "client auth"]),
        "{csr}"
    );
    assert_eq!(
        csr["spec"]["username"],
        format!("system:serviceaccount:{REKEY_NAMESPACE}:{REKEY_SERVICE_ACCOUNT}"),
        "{csr}"
    );
    let issued = String::from_utf8(
        STANDARD
            .decode(csr["status"]["certificate"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(
        snap.cert.starts_with(issued.trim()),
        "tls.crt is not the CSR's certificate"
    );
    assert_eq!(
        snap.ca.trim(),
        k.ca_pem().trim(),
        "ca.crt is not the cluster CA"
    );
    let (_, pem) = x509_parser::pem::parse_x509_pem(snap.cert.as_bytes()).unwrap();
    let x = pem.parse_x509().unwrap();
    let left = x.validity().not_after.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        (3300..=3600).contains(&left),
        "notAfter is {left}s away, not about expirationSeconds (3600)"
    );
    assert_eq!(x.subject().to_string(), "CN=deployer");
    // Its key is the one in tls.key, and Go accepts it as a client certificate of the cluster CA.
    let dir = s.path("check");
    std::fs::create_dir_all(&dir).unwrap();
    for (f, t) in [
        ("tls.crt", &snap.cert),
        ("tls.key", &snap.key),
        ("ca.crt", &snap.ca),
    ] {
        std::fs::write(dir.join(f), t).unwrap();
    }
    let p = |f: &str| dir.join(f).display().to_string();
    pki::go(&[
        "verify",
        "-roots",
        &p("ca.crt"),
        "-cert",
        &p("tls.crt"),
        "-usage",
        "client",
    ])
    .unwrap_or_else(|e| panic!("Go refuses the signed certificate: {e}"));
    let (code, out) = pki::openssl(&["x509", "-in", &p("tls.crt"), "-noout", "-pubkey"]);
    assert_eq!(code, 0, "{out}");
    let (code2, out2) = pki::openssl(&["pkey", "-in", &p("tls.key"), "-pubout"]);
    assert_eq!(code2, 0, "{out2}");
    assert_eq!(out, out2, "tls.key does not match tls.crt");
}

#[tokio::test(flavor = "multi_thread")]
async fn approves_its_own_request_where_rbac_allows_approve() {
    pki::tlscheck();
    let s = Scenario::new().await;
    let k = standin();
    // What an operator grants for self-approval: `approve` on this signer
    // and the approval subresource.
    k.put(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "rekey:approve-clients"},
        "rules": [
            {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"], "resourceNames": [SIGNER], "verbs": ["approve"]},
            {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests/approval"], "verbs": ["update"]}
        ]}))
    .unwrap();
    k.put(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "rekey:approve-clients"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rekey:approve-clients"},
        "subjects": [{"kind": "ServiceAccount", "name": REKEY_SERVICE_ACCOUNT, "namespace": REKEY_NAMESPACE}]}))
    .unwrap();
    let config = config(&s, &k);
    let server = s.serve(&config, &[]);
    let snap = published(&s, &server, Duration::from_secs(60));
    let all = csrs(&k);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(
        conditions(&all[0]),
        ["Approved:RekeyApproved"],
        "{:#}",
        all[0]
    );
    check_signed(&s, &k, &all[0], &snap);
    assert_eq!(state(&config, "cert/ci/deployer").as_deref(), Some("valid"));
    // Its CA is the cluster's: `rekey ca rotate` refuses, nothing changes.
    let (code, _, err) = outcome(&run(rekey()
        .args(["ca", "rotate", "clients", "--config"])
        .arg(&config)));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("kubernetes-csr")
            && err.contains("the signer's CA is the cluster's to rotate"),
        "{err}"
    );
    let (code, out, err) = outcome(&run(rekey()
        .args(["ca", "status", "clients", "--json", "--config"])
        .arg(&config)));
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["issuers"][0]["kind"], "kubernetes-csr");
    assert_eq!(doc["issuers"][0]["rotation"], Value::Null);
    assert_eq!(
        read_sink(&s.path("deployer")).map(|x| x.version),
        Some(snap.version)
    );
    assert!(k.denied().is_empty(), "{:#?}", k.denied());
}

#[tokio::test(flavor = "multi_thread")]
async fn waits_for_approval_where_rbac_forbids_approve() {
    pki::tlscheck();
    let s = Scenario::new().await;
    let k = standin();
    let config = config(&s, &k);
    let server = s.serve(&config, &[]);
    // The request is made, and rekey says it waits for someone to approve it.
    let csr = wait_for(Duration::from_secs(60), || csrs(&k).into_iter().next())
        .unwrap_or_else(|| panic!("no CSR was created:\n{}", server.log()));
    let name = csr["metadata"]["name"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(60), || {
        (state(&config, "cert/ci/deployer").as_deref() == Some("awaiting-approval")).then_some(())
    })
    .unwrap_or_else(|| panic!("never awaiting-approval:\n{}", server.log()));
    // Looked and found nothing: rekey did not approve it, nothing is published,
    // and it did not even try what RBAC forbids (it asked first).
    let now = k.get("CertificateSigningRequest", "", &name).unwrap();
    assert!(conditions(&now).is_empty(), "{now:#}");
    assert!(read_sink(&s.path("deployer")).is_none());
    assert!(k.denied().is_empty(), "{:#?}", k.denied());
    let asked = k
        .requests()
        .iter()
        .any(|r| r.resource == "selfsubjectaccessreviews" && r.verb == "create");
    assert!(asked, "rekey never asked whether it may approve");

    // A person approves (`kubectl certificate approve`); the signer signs; rekey publishes.
    k.approve(&name).unwrap();
    let snap = published(&s, &server, Duration::from_secs(90));
    let all = csrs(&k);
    let signed = all
        .iter()
        .find(|c| c["metadata"]["name"] == name.as_str())
        .unwrap();
    assert_eq!(conditions(signed), ["Approved:AutoApproved"]);
    check_signed(&s, &k, signed, &snap);
    assert_eq!(all.len(), 1, "a retry made another request: {all:#?}");
    wait_for(Duration::from_secs(30), || {
        (state(&config, "cert/ci/deployer").as_deref() == Some("valid")).then_some(())
    })
    .unwrap_or_else(|| panic!("not valid after publishing:\n{}", server.log()));
}
