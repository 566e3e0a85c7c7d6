//! The kubeconfig sink: what it writes is read by `kubectl` (`config view
//! --raw`, which keeps the version extension) and by the `kube` crate; a
//! bundle republish changes only `certificate-authority-data`; through the
//! real binary, a `[[certificate]]` with a kubeconfig sink is published,
//! recovered from the marker inside the file, and its bundle recorded.

use std::{process::Command, time::Duration};

use base64::Engine as _;
use rekey::{
    issue::{CertAuthority, CertificateSpec, KeyType, TrustBundle, Usage},
    sink::{BundleOutcome, BundleUpdate, Material, Publication, SinkContext, SinkSpec, build},
};
use rekey_integration::{
    deploy::{kubectl, run_ok},
    serve::Scenario,
    wait::{Text, eventually},
};
use secrecy::ExposeSecret;
use serde_json::Value;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn view(path: &std::path::Path) -> Value {
    let out = run_ok(
        Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(path)
            .args(["config", "view", "--raw", "-o", "json"]),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl printed no JSON ({e}):\n{out}"))
}

#[tokio::test]
async fn kubectl_and_the_kube_crate_read_it_and_a_bundle_republish_changes_only_the_ca() {
    let now = chrono::Utc::now();
    let (ca, _) = CertAuthority::generate(
        "cluster CA",
        KeyType::EcdsaP256,
        chrono::TimeDelta::days(1),
        now,
    )
    .unwrap();
    let (next, _) = CertAuthority::generate(
        "next CA",
        KeyType::EcdsaP256,
        chrono::TimeDelta::days(1),
        now,
    )
    .unwrap();
    let leaf = ca
        .issue(
            &CertificateSpec {
                name: "cert/ci/admin".into(),
                issuer: None,
                common_name: Some("kubernetes-admin".into()),
                organizations: vec!["system:masters".into()],
                dns_names: vec![],
                ip_addresses: vec![],
                key: KeyType::EcdsaP256,
                usages: vec![Usage::Client],
                lifetime: Duration::from_secs(3600).into(),
                renew_fraction: None,
                renew_before: None,
                schedule: None,
                sink: SinkSpec::File { dir: "/x".into() },
                adopt: false,
                reload: vec![],
                probe: None,
                probe_grace: None,
            },
            now,
        )
        .unwrap();
    let chain = format!("{}{}", leaf.cert_pem, leaf.ca_pem);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("etc/kubernetes/admin.conf");
    let sink = build(
        &SinkSpec::Kubeconfig {
            path: path.clone(),
            server: "https://api.example:6443".into(),
            cluster: None,
            user: None,
            context: None,
        },
        &SinkContext::default(),
    )
    .unwrap();
    let m = Material::Certificate {
        chain_pem: chain.clone(),
        key_pem: leaf.key_pem.clone(),
        ca_pem: ca.cert_pem().into(),
    };
    sink.publish(&Publication {
        credential: "cert/ci/admin",
        version: 3,
        number: 1,
        not_after: leaf.not_after,
        material: &m,
        adopt: false,
    })
    .await
    .unwrap();
    assert_eq!(sink.published_version().await.unwrap(), Some(3));

    let v = view(&path);
    assert_eq!(v["current-context"], "kubernetes-admin@kubernetes");
    assert_eq!(v["contexts"][0]["context"]["user"], "kubernetes-admin");
    assert_eq!(v["contexts"][0]["context"]["cluster"], "kubernetes");
    assert_eq!(
        v["clusters"][0]["cluster"]["server"],
        "https://api.example:6443"
    );
    assert_eq!(
        v["clusters"][0]["cluster"]["certificate-authority-data"],
        b64(ca.cert_pem())
    );
    assert_eq!(
        v["users"][0]["user"]["client-certificate-data"],
        b64(&chain)
    );
    assert_eq!(
        v["users"][0]["user"]["client-key-data"],
        b64(leaf.key_pem.expose_secret())
    );
    let ext = &v["preferences"]["extensions"][0];
    assert_eq!(
        ext["name"], "rekey.io/version",
        "kubectl keeps the marker: {v}"
    );
    assert_eq!(ext["extension"]["version"], "3");

    // The kube crate builds a client configuration from it (certificate and key parsed).
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.cluster_url.to_string(), "https://api.example:6443/");
    assert!(config.root_cert.is_some());

    let both = TrustBundle::from_pem(&format!("{}{}", ca.cert_pem(), next.cert_pem())).unwrap();
    let outcome = sink
        .publish_bundle(&BundleUpdate {
            credential: "cert/ci/admin",
            version: 3,
            bundle: &both,
        })
        .await
        .unwrap();
    assert_eq!(outcome, BundleOutcome::Published);
    let after = view(&path);
    assert_eq!(
        after["clusters"][0]["cluster"]["certificate-authority-data"],
        b64(both.pem())
    );
    assert_eq!(after["users"], v["users"], "same certificate and key");
    assert_eq!(after["preferences"], v["preferences"], "same version");
    assert_eq!(
        sink.published_bundle().await.unwrap().as_deref(),
        Some(both.fingerprint())
    );
}

#[tokio::test]
async fn serve_publishes_a_kubeconfig_and_records_its_bundle() {
    let s = Scenario::new().await;
    let path = s.path("ci/kubeconfig");
    let config = format!(
        "{}[[certificate]]\nname = \"cert/ci/deployer\"\ncommon_name = \"ci-deployer\"\nusages = [\"client\"]\n\
         lifetime = \"1h\"\nsink = {{ kind = \"kubeconfig\", path = \"{}\", server = \"https://api:6443\", context = \"ci\" }}\n",
        s.config_head("max_jitter = \"0s\""),
        path.display()
    );
    let config = s.write_config("rekey.toml", &config);
    let server = s.serve(&config, &[]);
    let pool = s.db.pool().clone();
    let (version, bundle): (i64, String) = eventually(
        "the kubeconfig to be published and its bundle recorded",
        Duration::from_secs(30),
        async || {
            let row: Option<(Option<i64>, Option<String>)> = sqlx::query_as(
                "SELECT current_version, bundle_fingerprint FROM credentials WHERE name = 'cert/ci/deployer'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            match row {
                Some((Some(v), Some(b))) => Ok((v, b)),
                other => Err(Text(format!("{other:?}; log:\n{}", server.log()))),
            }
        },
    )
    .await;
    let v = view(&path);
    assert_eq!(v["current-context"], "ci");
    assert_eq!(v["users"][0]["name"], "ci-deployer");
    assert_eq!(
        v["preferences"]["extensions"][0]["extension"]["version"],
        version.to_string()
    );
    let ca = std::fs::read_to_string(s.path("ca/ca.crt")).unwrap();
    assert_eq!(
        bundle,
        TrustBundle::from_pem(&ca).unwrap().fingerprint(),
        "the bundle recorded is the one in the file"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
