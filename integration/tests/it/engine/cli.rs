//! The command line on bad input (exit 2, a message naming the problem) and
//! `rekey status` against what is really in the database.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use rekey::issue::{CertAuthority, KeyType};
use rekey_integration::{
    bin::{outcome, rekey, run},
    serve::{Scenario, read_sink, wait_for},
    wait::{check, eventually},
};

const CERT: &str = r#"
[[certificate]]
name = "cert/default/web-tls"
dns_names = ["web.default.svc"]
ip_addresses = ["10.0.0.1"]
key = "ecdsa-p256"
lifetime = "24h"
renew_fraction = 0.66
schedule = "0 0 3 * * *"
sink = { kind = "file", dir = "SINK" }
"#;

#[tokio::test]
async fn bad_config_exits_2_naming_the_problem() {
    let s = Scenario::new().await;
    let good = format!(
        "{}{}",
        s.config_head(""),
        CERT.replace("SINK", &s.path("web").display().to_string())
    );
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "lifetime = \"24h\"",
            "lifetime = \"24 parsecs\"",
            &["certificate[0].lifetime", "24 parsecs"],
        ),
        (
            "renew_fraction = 0.66",
            "renew_fraction = 2.5",
            &["certificate[0].renew_fraction"],
        ),
        (
            "renew_fraction = 0.66",
            "renew_fraction = \"half\"",
            &["certificate[0].renew_fraction"],
        ),
        (
            "schedule = \"0 0 3 * * *\"",
            "schedule = \"0 0 25 * * *\"",
            &["certificate[0].schedule", "cron"],
        ),
        (
            "schedule = \"0 0 3 * * *\"",
            "schedule = \"every day\"",
            &["certificate[0].schedule"],
        ),
        (
            "key = \"ecdsa-p256\"",
            "key = \"dsa-1024\"",
            &["certificate[0].key", "dsa-1024"],
        ),
        (
            "ip_addresses = [\"10.0.0.1\"]",
            "ip_addresses = [\"10.0.0.256\"]",
            &["certificate[0].ip_addresses[0]"],
        ),
        (
            "dns_names = [\"web.default.svc\"]",
            "dns_names = [\"-bad-.svc\"]",
            &["certificate[0].dns_names[0]"],
        ),
        (
            "name = \"cert/default/web-tls\"",
            "name = \"\"",
            &["certificate[0].name"],
        ),
        (
            "name = \"cert/default/web-tls\"",
            "nmae = \"x\"",
            &["certificate[0]", "nmae"],
        ),
        (
            "kind = \"file\"",
            "kind = \"s3\"",
            &["certificate[0].sink", "s3"],
        ),
        ("[[certificate]]", "[[certificates]]", &["certificates"]),
        (
            "lifetime = \"24h\"",
            "lifetime = \"24h\"\nrenew_before = \"48h\"",
            &["certificate[0].renew_before"],
        ),
        ("[database]", "[database]\npool = 3", &["database.pool"]),
        (
            "lifetime = \"24h\"",
            "lifetime = 24",
            &["certificate[0].lifetime"],
        ),
        ("ca_key = ", "ca_key ", &["line"]),
    ];
    for (i, (from, to, needles)) in cases.iter().enumerate() {
        assert!(good.contains(from), "case {i}: `{from}` not in the config");
        let path = s.write_config(&format!("bad-{i}.toml"), &good.replacen(from, to, 1));
        let out = run(rekey().arg("serve").arg("--config").arg(&path));
        let (code, _, err) = outcome(&out);
        assert_eq!(code, 2, "case {i} ({to}): exit {code}, stderr: {err}");
        for n in *needles {
            assert!(
                err.contains(n),
                "case {i} ({to}): stderr does not mention `{n}`: {err}"
            );
        }
        assert!(
            err.contains(&format!("bad-{i}.toml")),
            "case {i}: the file is not named: {err}"
        );
    }
}

#[tokio::test]
async fn missing_ca_file_and_token_lifetime_exit_2() {
    let s = Scenario::new().await;
    let cert = CERT.replace("SINK", &s.path("web").display().to_string());
    let head = s.config_head("").replace("ca/ca.crt", "ca/nope.crt");
    let path = s.write_config("missing-ca.toml", &format!("{head}{cert}"));
    let (code, _, err) = outcome(&run(rekey().arg("serve").arg("--config").arg(&path)));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope.crt") && err.contains("issuer"), "{err}");

    let no_issuer = format!("[database]\nurl = \"{}\"\n{cert}", s.db.url);
    let path = s.write_config("no-issuer.toml", &no_issuer);
    let (code, _, err) = outcome(&run(rekey().arg("serve").arg("--config").arg(&path)));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[issuer]"), "{err}");

    let token = "[[token]]\nname = \"sa-token/ci/deployer\"\nnamespace = \"ci\"\nservice_account = \"deployer\"\n\
                 lifetime = \"5m\"\nsink = { kind = \"kubernetes-secret\", namespace = \"ci\", name = \"t\" }\n";
    let path = s.write_config("short-token.toml", &format!("{}{token}", s.config_head("")));
    let (code, _, err) = outcome(&run(rekey().arg("serve").arg("--config").arg(&path)));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("token[0].lifetime") && err.contains("600"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_flags_and_urls_exit_2() {
    let (code, _, err) = outcome(&run(rekey().args([
        "status",
        "--database-url",
        "mysql://nope",
    ])));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = outcome(&run(rekey().args([
        "serve",
        "--config",
        "/nonexistent/rekey.toml",
    ])));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/rekey.toml"), "{err}");
    let (code, _, _) = outcome(&run(rekey().args(["status", "--no-such-flag"])));
    assert_eq!(code, 2);
    let (code, _, err) = outcome(&run(
        rekey().args(["ca", "init", "--out", "/tmp/x", "--key", "rsa-1024"])
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rsa-1024"), "{err}");
    let (code, _, err) = outcome(&run(rekey().args(["status"])));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--database-url"), "{err}");
}

#[tokio::test]
async fn ca_init_writes_key_0600_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ca");
    let (code, _, err) = outcome(&run(rekey().args(["ca", "init", "--out"]).arg(&out)));
    assert_eq!(code, 0, "{err}");
    let mode = std::fs::metadata(out.join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let (code, _, err) = outcome(&run(rekey().args(["ca", "init", "--out"]).arg(&out)));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (code, text) = rekey_integration::serve::openssl(&[
        "x509",
        "-in",
        &out.join("ca.crt").display().to_string(),
        "-noout",
        "-text",
    ]);
    assert_eq!(code, 0);
    assert!(text.contains("CA:TRUE"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_json_matches_the_database_and_exits_1_on_an_expired_scanned_cert() {
    let s = Scenario::new().await;
    let mut config = s.config_head("max_jitter = \"0s\"");
    for (i, key) in ["ecdsa-p256", "ed25519", "ecdsa-p384"].iter().enumerate() {
        config.push_str(&format!(
            "[[certificate]]\nname = \"cert/status/c{i}\"\ndns_names = [\"c{i}.svc\"]\nkey = \"{key}\"\nlifetime = \"1h\"\n\
             sink = {{ kind = \"file\", dir = \"{}\" }}\n\n",
            s.path(&format!("sinks/c{i}")).display()
        ));
    }
    let cfg = s.write_config("rekey.toml", &config);
    let mut server = s.serve(&cfg, &[]);
    for i in 0..3 {
        wait_for(Duration::from_secs(20), || {
            read_sink(&s.path(&format!("sinks/c{i}")))
        })
        .unwrap_or_else(|| panic!("c{i} never published:\n{}", server.log()));
    }
    // The commit follows the publish: wait for the database to catch up.
    eventually(
        "the three commits (credentials with a current version)",
        Duration::from_secs(10),
        async || {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM credentials WHERE current_version IS NOT NULL",
            )
            .fetch_one(s.db.pool())
            .await
            .unwrap();
            check(n, |&n| n == 3)
        },
    )
    .await;
    server.terminate(Duration::from_secs(20));

    let out = run(rekey().args(["status", "--json", "--database-url", &s.db.url]));
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("status --json is JSON");
    let all = doc["credentials"].as_array().expect("credentials array");
    // The issuer's CA is in the inventory too: tracked, not rotated.
    let ca = all
        .iter()
        .find(|r| r["name"] == "ca/default")
        .expect("ca/default");
    assert_eq!(ca["state"], "valid", "{ca}");
    assert!(ca["next_rotation_at"].is_null(), "{ca}");
    let rows: Vec<_> = all.iter().filter(|r| r["name"] != "ca/default").collect();
    assert_eq!(rows.len(), 3);
    type Row = (
        String,
        String,
        chrono::DateTime<Utc>,
        chrono::DateTime<Utc>,
        chrono::DateTime<Utc>,
    );
    let db: Vec<Row> = sqlx::query_as(
        "SELECT name, kind, not_before, not_after, next_rotation_at FROM credentials WHERE managed ORDER BY name",
    )
    .fetch_all(s.db.pool())
    .await
    .unwrap();
    for (row, (name, kind, nb, na, next)) in rows.iter().zip(&db) {
        assert_eq!(row["name"], name.as_str());
        assert_eq!(row["kind"], kind.as_str());
        assert_eq!(row["state"], "valid");
        let t = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(row[k].as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc)
        };
        assert_eq!(t("not_before").timestamp(), nb.timestamp());
        assert_eq!(t("not_after").timestamp(), na.timestamp());
        assert_eq!(t("next_rotation_at").timestamp(), next.timestamp());
    }

    // A directory holding a certificate that expired yesterday, like a neglected kubeadm PKI.
    let pki = s.path("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let (old, _) = CertAuthority::generate(
        "apiserver",
        KeyType::EcdsaP256,
        TimeDelta::days(1),
        Utc::now() - TimeDelta::days(2),
    )
    .unwrap();
    std::fs::write(pki.join("apiserver.crt"), old.cert_pem()).unwrap();
    let cfg = s.write_config(
        "scan.toml",
        &format!(
            "{}[[scan]]\ndir = \"{}\"\n",
            s.config_head(""),
            pki.display()
        ),
    );
    let out = run(rekey().args(["status", "--config"]).arg(&cfg));
    let (code, stdout, err) = outcome(&out);
    assert_eq!(
        code, 1,
        "an expired scanned certificate must exit 1: {stdout}{err}"
    );
    assert!(
        stdout.contains("apiserver.crt") && stdout.contains("expired"),
        "{stdout}"
    );
    let out = run(rekey().args(["status", "--json", "--config"]).arg(&cfg));
    let (code, stdout, _) = outcome(&out);
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let scanned: Vec<&serde_json::Value> = doc["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"].as_str().unwrap().contains("apiserver.crt"))
        .collect();
    assert_eq!(scanned.len(), 1);
    assert_eq!(scanned[0]["state"], "expired");
    assert!(scanned[0]["next_rotation_at"].is_null());
}
