//! CA rotation without a failed handshake (issue 12, item 4): two consumers
//! of one issuer (a server and a client certificate, file sinks) handshake
//! continuously through rustls while `rekey ca rotate` runs, each reloading
//! its files seconds late; not one handshake fails, and afterwards both
//! leaves chain only to the new CA and the bundle holds only it. Also: the
//! rotation through the API, idempotent requests, abort, and bad input.

use std::{path::Path, time::Duration};

use rekey_integration::{
    bin::{outcome, rekey, run},
    consumers::HandshakeLoop,
    serve::{Scenario, read_sink, wait_for},
    wait::eventually,
};
use sha2::{Digest, Sha256};

/// How late each consumer adopts a change of its trust bundle: longer than
/// the pause between trusting both CAs and signing with the new one
/// (`rotate::ca_rotation::plan::SETTLE`, 3 s), so without `--overlap` the
/// server would present a new-CA leaf to a client that does not trust it yet.
const LAG: Duration = Duration::from_secs(5);

/// The scenario every test here starts from: issuer `cluster` from files,
/// a server and a client certificate of it, the server's consumer probed.
pub struct Rotating {
    pub s: Scenario,
    pub config: std::path::PathBuf,
    pub consumers: HandshakeLoop,
}

impl Rotating {
    pub fn new(s: Scenario) -> Self {
        let (server_dir, client_dir) = (s.path("sinks/server"), s.path("sinks/client"));
        let consumers = HandshakeLoop::bind(&server_dir, &client_dir, LAG, "server.test");
        let config = format!(
            "[database]\nurl = \"{url}\"\n\n[engine]\nmax_jitter = \"0s\"\nprobe_interval = \"1s\"\nprobe_timeout = \"2s\"\n\n\
             [[issuer]]\nname = \"cluster\"\nca_cert = \"{ca}/ca.crt\"\nca_key = \"{ca}/ca.key\"\n\n\
             [[certificate]]\nname = \"cert/server\"\nissuer = \"cluster\"\ndns_names = [\"server.test\"]\n\
             usages = [\"server\"]\nlifetime = \"24h\"\nprobe = \"{addr}\"\n\
             sink = {{ kind = \"file\", dir = \"{sd}\" }}\n\n\
             [[certificate]]\nname = \"cert/client\"\nissuer = \"cluster\"\ncommon_name = \"client\"\n\
             usages = [\"client\"]\nlifetime = \"24h\"\nsink = {{ kind = \"file\", dir = \"{cd}\" }}\n",
            url = s.db.url,
            ca = s.path("cluster-ca").display(),
            addr = consumers.addr,
            sd = server_dir.display(),
            cd = client_dir.display(),
        );
        let (code, _, err) = outcome(&run(rekey()
            .args(["ca", "init", "--common-name", "cluster CA", "--out"])
            .arg(s.path("cluster-ca"))));
        assert_eq!(code, 0, "rekey ca init: {err}");
        let config = s.write_config("rekey.toml", &config);
        Self {
            s,
            config,
            consumers,
        }
    }

    /// `rekey ca <args> --config <config>`.
    pub fn ca(&self, args: &[&str]) -> (i32, String, String) {
        outcome(&run(rekey()
            .arg("ca")
            .args(args)
            .arg("--config")
            .arg(&self.config)))
    }

    /// `rekey ca status cluster --json`, the issuer's entry.
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.ca(&["status", "cluster", "--json"]);
        assert_eq!(code, 0, "rekey ca status: {err}");
        let doc: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
        doc["issuers"][0].clone()
    }

    /// Both sinks published and both consumers handshaking.
    pub async fn wait_handshaking(&mut self) {
        let dirs = [self.s.path("sinks/server"), self.s.path("sinks/client")];
        wait_for(Duration::from_secs(60), || {
            dirs.iter().all(|d| read_sink(d).is_some()).then_some(())
        })
        .expect("both certificates published");
        self.consumers.start();
        let good = self.consumers.good.clone();
        eventually(
            "the consumers to handshake",
            Duration::from_secs(30),
            async || {
                let n = good.load(std::sync::atomic::Ordering::SeqCst);
                if n >= 5 { Ok(()) } else { Err(n) }
            },
        )
        .await;
    }

    /// Waits for the rotation to reach `phase` (up to `patience`).
    pub async fn wait_phase(
        &self,
        phase: &str,
        patience: Duration,
        log: &dyn Fn() -> String,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let r = wait_for(patience, || {
            last = self.status();
            (last["rotation"]["phase"] == phase).then(|| last.clone())
        });
        r.unwrap_or_else(|| {
            panic!(
                "the rotation never reached {phase}; last status {last:#}\nlog:\n{}",
                log()
            )
        })
    }

    /// After the rotation: both leaves chain to the new CA only, the bundle
    /// in every sink is the new CA alone, the CA files are the new CA (the
    /// old one kept as `.previous`), and not one handshake failed.
    pub async fn assert_rotated(&self, old_ca_pem: &str) {
        let new_ca_pem = std::fs::read_to_string(self.s.path("cluster-ca/ca.crt")).unwrap();
        // The consumers adopt the last change and handshake on it.
        self.consumers.settle_on(&new_ca_pem, LAG * 4).await;
        assert_ne!(
            new_ca_pem, old_ca_pem,
            "the issuer's CA file holds the new CA"
        );
        assert_eq!(
            std::fs::read_to_string(self.s.path("cluster-ca/ca.crt.previous")).unwrap(),
            old_ca_pem,
            "the old CA is kept beside it"
        );
        assert!(
            !self.s.path("cluster-ca/ca.crt.next").exists()
                && !self.s.path("cluster-ca/ca.key.next").exists()
        );
        let status = self.status();
        let new_fp = fingerprint(&new_ca_pem);
        assert_eq!(status["ca"]["fingerprint"], new_fp.as_str(), "{status:#}");
        assert_eq!(status["bundle"], serde_json::json!([new_fp]), "{status:#}");
        let scratch = self.s.path("verify");
        std::fs::create_dir_all(&scratch).unwrap();
        let old_ca = scratch.join("old.crt");
        std::fs::write(&old_ca, old_ca_pem).unwrap();
        for (dir, purpose) in [("sinks/server", "sslserver"), ("sinks/client", "sslclient")] {
            let snap = read_sink(&self.s.path(dir)).expect("sink");
            assert_eq!(
                snap.ca.trim(),
                new_ca_pem.trim(),
                "{dir}: ca.crt is the new CA alone"
            );
            let leaf = scratch.join("leaf.crt");
            std::fs::write(&leaf, leaf_of(&snap.cert)).unwrap();
            let new_ca = scratch.join("new.crt");
            std::fs::write(&new_ca, &new_ca_pem).unwrap();
            let s = |p: &Path| p.display().to_string();
            let (code, out) = rekey_integration::serve::openssl(&[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                &s(&new_ca),
                &s(&leaf),
            ]);
            assert_eq!(code, 0, "{dir}: the leaf chains to the new CA: {out}");
            let (code, _) =
                rekey_integration::serve::openssl(&["verify", "-CAfile", &s(&old_ca), &s(&leaf)]);
            assert_ne!(code, 0, "{dir}: the leaf does not chain to the old CA");
        }
        let (good, failed) = self.consumers.counts();
        println!("handshakes during the rotation: {good} good, {failed} failed");
        let failures = self.consumers.failures.lock().unwrap().clone();
        assert_eq!(
            failed, 0,
            "failed handshakes during the rotation ({good} good): {failures:?}"
        );
        assert!(good > 50, "the consumers kept handshaking ({good})");
    }
}

fn leaf_of(chain: &str) -> String {
    let end = "-----END CERTIFICATE-----";
    let i = chain.find(end).expect("a certificate") + end.len();
    format!("{}\n", &chain[..i])
}

/// sha256 of the first certificate in `pem`, hex.
pub fn fingerprint(pem: &str) -> String {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    hex::encode(Sha256::digest(&p.contents))
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_rotation_fails_no_handshake_of_late_reloading_consumers() {
    let mut t = Rotating::new(Scenario::new().await);
    // Two replicas: both follow the rotation, one carries it out.
    let server = t.s.serve(&t.config, &[]);
    let other = t.s.serve(&t.config, &[]);
    t.wait_handshaking().await;
    let old_ca = std::fs::read_to_string(t.s.path("cluster-ca/ca.crt")).unwrap();
    let before = t.status();
    assert_eq!(before["kind"], "ca");
    assert_eq!(before["rotation"], serde_json::Value::Null, "{before:#}");
    assert_eq!(before["bundle"], serde_json::json!([fingerprint(&old_ca)]));

    let (code, out, err) = t.ca(&[
        "rotate",
        "cluster",
        "--overlap",
        "7s",
        "--max-rate",
        "0",
        "--json",
    ]);
    assert_eq!(code, 0, "rekey ca rotate: {err}");
    let started: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(started["created"], true);
    assert_eq!(started["rotation"]["phase"], "trusting");
    // A second request answers the running rotation.
    let (code, out, _) = t.ca(&["rotate", "cluster", "--json"]);
    assert_eq!(code, 0);
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["created"], false);
    assert_eq!(again["rotation"]["id"], started["rotation"]["id"]);

    let log = || server.log();
    let trusting = t.wait_phase("trusting", Duration::from_secs(5), &log).await;
    let _ = trusting;
    // Both CAs trusted while the old one still signs.
    let both = wait_for(Duration::from_secs(30), || {
        let s = t.status();
        (s["bundle"].as_array().map(Vec::len) == Some(2)).then_some(s)
    })
    .expect("the bundle to hold both CAs");
    assert!(
        both["bundle"]
            .as_array()
            .unwrap()
            .contains(&fingerprint(&old_ca).into())
    );
    // Abort is refused once re-issuing has started.
    let reissuing = t
        .wait_phase("reissuing", Duration::from_secs(60), &log)
        .await;
    assert_eq!(
        reissuing["ca"]["fingerprint"],
        reissuing["rotation"]["new_ca_fingerprint"]
    );
    let (code, _, err) = t.ca(&["rotate", "cluster", "--abort"]);
    if t.status()["rotation"]["phase"] != "done" {
        assert_eq!(code, 2, "abort after re-issuing started: {err}");
        assert!(err.contains("only go forward"), "{err}");
    }
    let done = t.wait_phase("done", Duration::from_secs(120), &log).await;
    assert_eq!(done["rotation"]["reissued"], 2, "{done:#}");
    assert_eq!(done["rotation"]["remaining"], 0, "{done:#}");
    t.assert_rotated(&old_ca).await;

    // Audited, every phase.
    let db = &t.s.db;
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action || ':' || coalesce(details->>'to', '') FROM audit_events WHERE target = 'issuer/cluster' ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    for want in [
        "ca.rotate:",
        "ca.rotation.phase:reissuing",
        "ca.rotation.phase:retiring",
        "ca.rotation.phase:done",
    ] {
        let n = actions.iter().filter(|a| *a == want).count();
        assert_eq!(n, 1, "{want} exactly once (two replicas) in {actions:?}");
    }
    // Both replicas took part: each followed the phases in its registry.
    for (i, log) in [server.log(), other.log()].iter().enumerate() {
        assert!(
            log.contains("issuer follows its CA rotation"),
            "replica {i} did not follow:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_rotation_bad_input_is_refused_and_changes_nothing() {
    let t = Rotating::new(Scenario::new().await);
    let server = t.s.serve(&t.config, &[]);
    let dir = t.s.path("sinks/server");
    let before = wait_for(Duration::from_secs(60), || read_sink(&dir)).expect("published");

    let (code, _, err) = t.ca(&["rotate", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no issuer named `nope`"), "{err}");

    // A new CA that is not a CA, and one whose key does not match.
    let leaf = t.s.path("leaf");
    std::fs::create_dir_all(&leaf).unwrap();
    std::fs::write(leaf.join("tls.crt"), leaf_of(&before.cert)).unwrap();
    std::fs::write(leaf.join("tls.key"), &before.key).unwrap();
    let (code, _, err) = t.ca(&[
        "rotate",
        "cluster",
        "--new-ca-cert",
        &leaf.join("tls.crt").display().to_string(),
        "--new-ca-key",
        &leaf.join("tls.key").display().to_string(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("issuer[cluster].new_ca_cert"), "{err}");
    let (code, _, err) = outcome(&run(rekey()
        .args(["ca", "init", "--common-name", "other", "--out"])
        .arg(t.s.path("other"))));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = t.ca(&[
        "rotate",
        "cluster",
        "--new-ca-cert",
        &t.s.path("other/ca.crt").display().to_string(),
        "--new-ca-key",
        &t.s.path("ca/ca.key").display().to_string(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("issuer[cluster].new_ca_key"), "{err}");
    let (code, _, err) = t.ca(&["rotate", "cluster", "--abort"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no CA rotation of issuer `cluster` is running"),
        "{err}"
    );

    // Nothing changed: no rotation, no next CA, the sink as it was.
    assert_eq!(t.status()["rotation"], serde_json::Value::Null);
    assert!(!t.s.path("cluster-ca/ca.crt.next").exists());
    let after = read_sink(&dir).unwrap();
    assert_eq!(
        (after.version, after.ca.clone()),
        (before.version, before.ca.clone())
    );

    // A rotation to a given CA, aborted while trusting: the old bundle is
    // back everywhere and the given CA forgotten.
    let (code, out, err) = t.ca(&[
        "rotate",
        "cluster",
        "--overlap",
        "1h",
        "--new-ca-cert",
        &t.s.path("other/ca.crt").display().to_string(),
        "--new-ca-key",
        &t.s.path("other/ca.key").display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("started"), "{out}");
    let other_fp = fingerprint(&std::fs::read_to_string(t.s.path("other/ca.crt")).unwrap());
    wait_for(Duration::from_secs(30), || {
        let s = read_sink(&dir)?;
        s.ca.contains(
            std::fs::read_to_string(t.s.path("other/ca.crt"))
                .ok()?
                .trim(),
        )
        .then_some(())
    })
    .unwrap_or_else(|| panic!("the given CA in the bundle; log:\n{}", server.log()));
    assert_eq!(
        t.status()["rotation"]["new_ca_fingerprint"],
        other_fp.as_str()
    );
    let (code, _, err) = t.ca(&["rotate", "cluster", "--abort"]);
    assert_eq!(code, 0, "{err}");
    wait_for(Duration::from_secs(30), || {
        let s = t.status();
        (s["rotation"]["phase"] == "aborted" && s["rotation"]["finished_at"].is_string())
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the abort to finish; log:\n{}", server.log()));
    let after = read_sink(&dir).unwrap();
    assert_eq!(after.ca, before.ca, "the old bundle is back");
    assert_eq!(after.version, before.version, "nothing was re-issued");
    assert!(
        !t.s.path("cluster-ca/ca.crt.next").exists(),
        "the given CA is forgotten"
    );
}

/// `rotate_before`: a CA with less than that left starts its own rotation
/// (trigger `schedule`, by the serving replica); one that would make every
/// new CA due at once is refused at start-up, naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn rotate_before_starts_a_rotation_by_itself() {
    use chrono::{TimeDelta, Utc};
    use rekey::issue::{CertAuthority, KeyType};
    let s = Scenario::new().await;
    // Issued six days ago for ten: four days left.
    let (ca, key) = CertAuthority::generate(
        "aging CA",
        KeyType::EcdsaP256,
        TimeDelta::days(10),
        Utc::now() - TimeDelta::days(6),
    )
    .unwrap();
    ca.write_files(&key, &s.path("aging"), false).unwrap();
    let config = |before: &str| {
        format!(
            "[database]\nurl = \"{}\"\n\n[engine]\nmax_jitter = \"0s\"\n\n\
             [[issuer]]\nname = \"cluster\"\nca_cert = \"{ca}/ca.crt\"\nca_key = \"{ca}/ca.key\"\nrotate_before = \"{before}\"\n\n\
             [[certificate]]\nname = \"cert/web\"\nissuer = \"cluster\"\ndns_names = [\"web.test\"]\n\
             lifetime = \"24h\"\nsink = {{ kind = \"file\", dir = \"{}\" }}\n",
            s.db.url,
            s.path("web").display(),
            ca = s.path("aging").display(),
        )
    };
    let bad = s.write_config("bad.toml", &config("6d"));
    let (code, _, err) = outcome(&run(rekey().args(["serve", "--config"]).arg(&bad)));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("issuer[cluster].rotate_before"), "{err}");

    let path = s.write_config("rekey.toml", &config("5d"));
    let server = s.serve(&path, &[]);
    let status = |p: &Path| {
        let (code, out, err) = outcome(&run(rekey()
            .args(["ca", "status", "cluster", "--json", "--config"])
            .arg(p)));
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["issuers"][0].clone()
    };
    let started = wait_for(Duration::from_secs(60), || {
        let st = status(&path);
        (st["bundle"].as_array().map(Vec::len) == Some(2)).then_some(st)
    })
    .unwrap_or_else(|| panic!("no rotation started by itself:\n{}", server.log()));
    let r = &started["rotation"];
    assert_eq!(r["phase"], "trusting", "{started:#}");
    assert!(
        r["requested_by"].as_str().unwrap().starts_with("rekey/"),
        "{started:#}"
    );
    assert_eq!(r["overlap_seconds"], 300.0);
    let trigger: String = sqlx::query_scalar("SELECT trigger FROM ca_rotations")
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    assert_eq!(trigger, "schedule");
    // The new CA lives as long as the old one did.
    let next = std::fs::read_to_string(s.path("aging/ca.crt.next")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(next.as_bytes()).unwrap();
    let x = pem.parse_x509().unwrap();
    let days = (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()) / 86_400;
    assert_eq!(days, 10);
    assert!(x.validity().not_after.timestamp() > (Utc::now() + TimeDelta::days(9)).timestamp());
}
