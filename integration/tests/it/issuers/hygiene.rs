//! Secret hygiene of the issuers (extends `secret_hygiene`): a CA read from
//! a Secret, keys of pending and signed CertificateSigningRequests, and the
//! errors of a refused CA never appear in what `rekey` prints, with debug
//! logging, in text and JSON.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{TimeDelta, Utc};
use rekey::issue::{CertAuthority, KeyType};
use rekey_integration::{
    bin::{outcome, rekey, run},
    hygiene::{Scanner, assert_clean},
    kube::{KubeStandIn, Options},
    serve::{Scenario, read_sink, wait_for},
};
use secrecy::ExposeSecret;
use serde_json::json;

const SIGNER: &str = "example.com/clients";

#[tokio::test(flavor = "multi_thread")]
async fn secret_cas_and_csr_keys_never_reach_the_output() {
    let s = Scenario::new().await;
    // The stand-in signs approved requests but nobody approves: the key of
    // a pending request is held while rekey waits.
    let k = KubeStandIn::start_with(Options {
        signers: vec![SIGNER.to_string()],
        ..Options::default()
    });
    k.add_namespace("pki");
    let ca_pem = std::fs::read_to_string(s.path("ca/ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(s.path("ca/ca.key")).unwrap();
    let (_, other_key) =
        CertAuthority::generate("other", KeyType::Ed25519, TimeDelta::days(1), Utc::now()).unwrap();
    for (name, key) in [
        ("cluster-ca", ca_key.as_str()),
        ("mismatched", other_key.expose_secret()),
    ] {
        k.put(
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "pki"},
            "data": {"tls.crt": STANDARD.encode(&ca_pem), "tls.key": STANDARD.encode(key)}}),
        )
        .unwrap();
    }
    let config = |secret: &str| {
        format!(
            "[database]\nurl = \"{}\"\n\n[kubernetes]\nkubeconfig = \"{}\"\n\n\
             [[issuer]]\nname = \"cluster\"\nsecret = {{ namespace = \"pki\", name = \"{secret}\" }}\n\n\
             [[issuer]]\nname = \"clients\"\nkind = \"kubernetes-csr\"\nsigner_name = \"{SIGNER}\"\n\n\
             [[certificate]]\nname = \"cert/pki/web\"\nissuer = \"cluster\"\ndns_names = [\"web.pki.svc\"]\n\
             lifetime = \"24h\"\nsink = {{ kind = \"file\", dir = \"{}\" }}\n\n\
             [[certificate]]\nname = \"cert/ci/deployer\"\nissuer = \"clients\"\ncommon_name = \"deployer\"\nusages = [\"client\"]\n\
             lifetime = \"1h\"\nsink = {{ kind = \"file\", dir = \"{}\" }}\n",
            s.db.url,
            k.kubeconfig().display(),
            s.path("web").display(),
            s.path("deployer").display()
        )
    };
    let mut captured: Vec<(String, Vec<u8>)> = Vec::new();
    let mut scanner = Scanner::new();
    scanner.add_pem("CA key (Secret)", &ca_key);
    scanner.add_pem("mismatched key (Secret)", other_key.expose_secret());
    scanner.add_public(ca_pem.as_bytes());

    // Refused: the error names the Secret and the field, never the key.
    let bad = s.write_config("bad.toml", &config("mismatched"));
    for format in ["text", "json"] {
        let out = run(rekey()
            .env("REKEY_LOG", "debug")
            .env("REKEY_LOG_FORMAT", format)
            .arg("serve")
            .arg("--config")
            .arg(&bad));
        let (code, _, err) = outcome(&out);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("issuer[cluster].secret"), "{err}");
        captured.push((format!("refused ({format}, stderr)"), out.stderr));
        captured.push((format!("refused ({format}, stdout)"), out.stdout));
    }

    let good = s.write_config("good.toml", &config("cluster-ca"));
    let mut pending_seen = false;
    for format in ["json", "text"] {
        let mut server = s.serve(
            &good,
            &[("REKEY_LOG", "debug"), ("REKEY_LOG_FORMAT", format)],
        );
        let snap = wait_for(Duration::from_secs(60), || read_sink(&s.path("web")))
            .unwrap_or_else(|| panic!("not published:\n{}", server.log()));
        scanner.add_pem("leaf key (Secret CA)", &snap.key);
        scanner.add_public(snap.cert.as_bytes());
        // The CSR is pending (rekey may not approve it); its key is in memory.
        wait_for(Duration::from_secs(60), || {
            server.log().contains("awaiting approval").then_some(())
        })
        .unwrap_or_else(|| panic!("the CSR never waited for approval:\n{}", server.log()));
        pending_seen = true;
        let _ = server.terminate(Duration::from_secs(20));
        captured.push((
            format!("serve ({format})"),
            std::fs::read(&server.log).unwrap(),
        ));
    }
    assert!(pending_seen);
    // Then approve: the signed certificate is published, its key too is checked.
    let csr_names = || -> Vec<String> {
        k.list("CertificateSigningRequest", None)
            .into_iter()
            .filter(|c| c["spec"]["signerName"] == SIGNER)
            .filter_map(|c| c["metadata"]["name"].as_str().map(String::from))
            .collect()
    };
    let before = csr_names();
    assert!(!before.is_empty(), "no CSR was made");
    let server = s.serve(&good, &[("REKEY_LOG", "debug")]);
    // A restart forgets the pending key: a new request is made; approve that one.
    let newest = wait_for(Duration::from_secs(60), || {
        csr_names().into_iter().find(|n| !before.contains(n))
    })
    .unwrap_or_else(|| panic!("no new CSR after the restart:\n{}", server.log()));
    k.approve(&newest).unwrap();
    let snap = wait_for(Duration::from_secs(60), || read_sink(&s.path("deployer")))
        .unwrap_or_else(|| panic!("the CSR certificate was not published:\n{}", server.log()));
    scanner.add_pem("leaf key (CSR)", &snap.key);
    scanner.add_public(snap.cert.as_bytes());
    scanner.add_public(snap.ca.as_bytes());
    let (code, out, err) = outcome(&run(rekey()
        .env("REKEY_LOG", "debug")
        .args(["status", "--json", "--config"])
        .arg(&good)));
    assert_eq!(code, 0, "{err}");
    captured.push(("status (stdout)".into(), out.into_bytes()));
    captured.push(("status (stderr)".into(), err.into_bytes()));
    let log = server.log.clone();
    drop(server);
    captured.push((
        "serve (after approval)".into(),
        std::fs::read(&log).unwrap(),
    ));
    assert_clean(&scanner, &captured);
}
