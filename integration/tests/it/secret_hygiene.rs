//! Secret hygiene: the real `rekey` binary, run through its main flows with
//! debug logging, never writes key material, tokens, data keys or KEKs to its
//! logs, error messages or output.
//!
//! Each test runs a flow, keeps every byte the binary printed (stdout and
//! stderr, text and JSON log formats), collects every secret it can know —
//! private keys read back from the sinks, the CA key, the database password,
//! KEKs, backup data keys (unwrapped here independently of rekey), etcd
//! encryption keys, TLS client keys — and scans the output with
//! [`rekey_integration::hygiene::Scanner`]: PEM private-key markers, the exact
//! bytes raw, base64 (any alignment) and hex, and every 20-character base64
//! fragment. `scanner_finds_a_secret_planted_in_real_output` proves the scan
//! can fail.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use rekey_integration::{
    bin::{outcome, rekey, run},
    etcd::Etcd,
    hygiene::{Scanner, assert_clean},
    k8s_values::{encode, load, secret},
    kube::{KubeStandIn, fixtures},
    s3::S3,
    serve::{Scenario, read_sink},
};
use secrecy::ExposeSecret;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Everything the binary printed, by source name.
#[derive(Default)]
struct Captured(Vec<(String, Vec<u8>)>);

impl Captured {
    /// Runs `cmd` with debug logging; keeps stdout and stderr; returns the exit code.
    fn run(&mut self, name: &str, cmd: &mut Command) -> i32 {
        cmd.env("REKEY_LOG", "debug");
        let out = run(cmd);
        self.0
            .push((format!("{name} (stdout)"), out.stdout.clone()));
        self.0
            .push((format!("{name} (stderr)"), out.stderr.clone()));
        outcome(&out).0
    }

    fn keep(&mut self, name: &str, bytes: Vec<u8>) {
        self.0.push((name.to_string(), bytes));
    }

    fn total_lines(&self) -> usize {
        self.0
            .iter()
            .map(|(_, b)| b.iter().filter(|&&c| c == b'\n').count())
            .sum()
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

/// Adds every PEM private key under `dir` (recursively) as a secret and
/// every certificate as public material; returns how many keys.
fn add_pem_files(scanner: &mut Scanner, dir: &Path, seen: &mut BTreeSet<String>) -> usize {
    let mut keys = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "pgdata") {
                continue;
            }
            keys += add_pem_files(scanner, &p, seen);
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        if text.contains("PRIVATE KEY-----") {
            if seen.insert(text.clone()) {
                scanner.add_pem(&p.display().to_string(), &text);
            }
            keys += 1;
        } else if text.contains("-----BEGIN CERTIFICATE") {
            scanner.add_public(text.as_bytes());
        }
    }
    keys
}

/// Adds the private key embedded in the kubeconfig at `path`
/// (`client-key-data`) as a secret; returns it, `None` while there is none.
fn add_kubeconfig_key(
    scanner: &mut Scanner,
    path: &Path,
    seen: &mut BTreeSet<String>,
) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-key-data:"))?;
    let pem = String::from_utf8(B64.decode(value.trim().trim_matches('"')).ok()?).ok()?;
    assert!(
        pem.contains("PRIVATE KEY-----"),
        "client-key-data holds no key"
    );
    if seen.insert(pem.clone()) {
        scanner.add_pem(&format!("{} client-key-data", path.display()), &pem);
    }
    Some(pem)
}

/// The backup's data key, unwrapped here from the header with the KEK
/// (docs/backup-format.md), independently of rekey's code.
fn data_key(object: &[u8], kek: &[u8]) -> Vec<u8> {
    use aes_gcm::{
        Aes256Gcm, KeyInit,
        aead::{Aead, Payload},
    };
    let cipher = Aes256Gcm::new_from_slice(kek).expect("32-byte KEK");
    let nonce = aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::try_from(&object[47..59])
        .expect("12-byte nonce");
    let key = cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &object[59..107],
                aad: &object[..47],
            },
        )
        .expect("the header unwraps with the KEK");
    assert_eq!(key.len(), 32);
    key
}

#[test]
fn scanner_finds_a_secret_planted_in_real_output() {
    // Real output first: a backup encryption with debug logging.
    let dir = tempfile::tempdir().unwrap();
    let kek = random_bytes(32);
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, &kek).unwrap();
    std::fs::write(dir.path().join("plain"), random_bytes(5000)).unwrap();
    let mut captured = Captured::default();
    let code = captured.run(
        "encrypt",
        rekey()
            .args(["backup", "encrypt", "--json", "--kek-file"])
            .arg(&kek_file)
            .arg("--in")
            .arg(dir.path().join("plain"))
            .arg("--out")
            .arg(dir.path().join("b.rkb")),
    );
    assert_eq!(code, 0);
    let mut scanner = Scanner::new();
    scanner.add("kek", &kek);
    let ca = rcgen_like_key();
    scanner.add_pem("planted key", &ca);
    assert_clean(&scanner, &captured.0);

    // Then the same output with the secret planted in each form: every one is found.
    let (name, real) = captured
        .0
        .iter()
        .find(|(_, b)| !b.is_empty())
        .cloned()
        .expect("some output");
    let text = String::from_utf8_lossy(&real).to_string();
    let mut framed = vec![7u8];
    framed.extend_from_slice(&kek);
    framed.extend_from_slice(b"trailer");
    let body_line = ca
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("a PEM body line");
    let plants = [
        format!("DEBUG kek={}", B64.encode(&kek)),
        format!("error: key {} rejected", hex::encode(&kek)),
        format!(
            "blob={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&framed)
        ),
        format!("partial {}", &B64.encode(&kek)[5..30]),
        format!("key material: {}", &body_line[..24]),
        "-----BEGIN EC PRIVATE KEY-----".to_string(),
        format!("secret data: {}", B64.encode(ca.as_bytes())),
    ];
    for plant in &plants {
        let mid = text.len() / 2;
        let at = text[..mid].rfind('\n').map_or(0, |i| i + 1);
        let planted = format!("{}{plant}\n{}", &text[..at], &text[at..]);
        let found = scanner.scan(&name, planted.as_bytes());
        assert!(
            !found.is_empty(),
            "the scanner missed a planted secret: {plant}"
        );
    }
}

/// A PKCS#8 private key made by `rekey ca init` (the dev CA's key type).
fn rcgen_like_key() -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = run(rekey()
        .args(["ca", "init", "--out"])
        .arg(dir.path().join("ca")));
    assert_eq!(outcome(&out).0, 0, "rekey ca init: {}", outcome(&out).2);
    std::fs::read_to_string(dir.path().join("ca/ca.key")).expect("ca.key")
}

#[test]
fn rekey_dev_with_debug_logs_leaks_no_key() {
    let state = tempfile::Builder::new()
        .prefix("rekey-hygiene-dev-")
        .tempdir()
        .unwrap();
    let stdout = state.path().join("dev.stdout");
    let stderr = state.path().join("dev.stderr");
    let mut child = rekey()
        .args(["dev", "--state-dir"])
        .arg(state.path().join("state"))
        // Not the default 127.0.0.1:8443: tests run side by side.
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{}", rekey::devdb::free_port().unwrap()))
        .env("REKEY_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawning rekey dev");
    let certs = state.path().join("state/certs");
    let mut scanner = Scanner::new();
    let mut seen = BTreeSet::new();
    // Keep every key version published until a rotation has happened (the
    // demo's etcd-peer certificate rotates at the top of every minute, web
    // at half of its two-minute life).
    let started = Instant::now();
    let mut versions: BTreeSet<(String, i64)> = BTreeSet::new();
    let mut rotated = false;
    while started.elapsed() < Duration::from_secs(150) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "rekey dev exited early ({status}):\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        add_pem_files(&mut scanner, &state.path().join("state"), &mut seen);
        if let Ok(dirs) = std::fs::read_dir(&certs) {
            for d in dirs.flatten() {
                if let Some(snap) = read_sink(&d.path()) {
                    let name = d.file_name().to_string_lossy().to_string();
                    let new = versions.insert((name.clone(), snap.version));
                    if new && versions.iter().filter(|(n, _)| *n == name).count() > 1 {
                        rotated = true;
                    }
                }
            }
        }
        if rotated && started.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    add_pem_files(&mut scanner, &state.path().join("state"), &mut seen);
    let mut captured = Captured::default();
    captured.keep("rekey dev (stdout)", std::fs::read(&stdout).unwrap());
    captured.keep("rekey dev (stderr)", std::fs::read(&stderr).unwrap());
    assert!(
        rotated,
        "no rotation within 150 s; versions seen: {versions:?}\n{}",
        String::from_utf8_lossy(&captured.0[1].1)
    );
    assert!(
        seen.len() >= 5,
        "expected the CA key and at least four leaf keys, found {}",
        seen.len()
    );
    assert!(
        captured.total_lines() > 50,
        "debug logging produced almost nothing: is REKEY_LOG honoured?"
    );
    // `rekey status` against dev's database is part of the flow too, but the
    // database is gone once dev stopped; its URL holds no password.
    assert_clean(&scanner, &captured.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_rotations_and_database_errors_leak_no_key_or_password() {
    let s = Scenario::new().await;
    let password = format!("pw-{}", hex::encode(random_bytes(12)));
    // Trust authentication ignores the password, but rekey holds it all the same.
    let url =
        s.db.url
            .replacen("://postgres@", &format!("://postgres:{password}@"), 1);
    assert_ne!(
        url, s.db.url,
        "the test database URL has an unexpected shape"
    );
    let mut config = s.config_head("max_jitter = \"0s\"");
    config = config.replace(&s.db.url, &url);
    let kinds = ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048"];
    for k in kinds {
        config.push_str(&format!(
            "[[certificate]]\nname = \"cert/hygiene/{k}\"\ndns_names = [\"{k}.test.svc\"]\nkey = \"{k}\"\n\
             lifetime = \"10s\"\nrenew_fraction = 0.5\nsink = {{ kind = \"file\", dir = \"{}\" }}\n\n",
            s.path(&format!("sinks/{k}")).display()
        ));
    }
    // A kubeconfig sink: the key is embedded (base64) in a YAML file.
    let kubeconfig = s.path("sinks/kubeconfig/conf");
    config.push_str(&format!(
        "[[certificate]]\nname = \"cert/hygiene/kubeconfig\"\ncommon_name = \"hygiene\"\nusages = [\"client\"]\n\
         lifetime = \"10s\"\nrenew_fraction = 0.5\n\
         sink = {{ kind = \"kubeconfig\", path = \"{}\", server = \"https://api:6443\" }}\n\n",
        kubeconfig.display()
    ));
    let config = s.write_config("rekey.toml", &config);
    let mut scanner = Scanner::new();
    scanner.add("database password", password.as_bytes());
    let mut seen = BTreeSet::new();
    let mut captured = Captured::default();
    for format in ["json", "text"] {
        let mut server = s.serve(
            &config,
            &[("REKEY_LOG", "debug"), ("REKEY_LOG_FORMAT", format)],
        );
        // Key material is collected (to be searched for in the logs) until
        // every certificate was issued and rotated, for at most 25 s.
        let started = Instant::now();
        let mut versions = BTreeSet::new();
        let mut kubeconfig_keys = BTreeSet::new();
        while started.elapsed() < Duration::from_secs(25)
            && (versions.len() < kinds.len() * 2 || kubeconfig_keys.len() < 2)
        {
            for k in kinds {
                if let Some(snap) = read_sink(&s.path(&format!("sinks/{k}"))) {
                    versions.insert((k, snap.version));
                }
            }
            add_pem_files(&mut scanner, s.dir.path(), &mut seen);
            kubeconfig_keys.extend(add_kubeconfig_key(&mut scanner, &kubeconfig, &mut seen));
            std::thread::sleep(Duration::from_millis(100));
        }
        server.terminate(Duration::from_secs(20));
        let log = std::fs::read(&server.log).unwrap();
        assert!(
            versions.len() >= kinds.len() * 2 && kubeconfig_keys.len() >= 2,
            "expected every certificate issued and rotated ({format} logs), saw {versions:?} \
             and {} kubeconfig keys:\n{}",
            kubeconfig_keys.len(),
            String::from_utf8_lossy(&log)
        );
        captured.keep(&format!("rekey serve ({format} logs)"), log);
    }
    // The inventory, and database errors whose messages could echo the URL.
    assert_eq!(
        captured.run(
            "status",
            rekey().args(["status", "--json", "--database-url", &url])
        ),
        0
    );
    let refused = format!("postgres://postgres:{password}@127.0.0.1:1/rekey");
    let malformed = format!("postgres://postgres:{password}@[::1/rekey");
    for (name, bad) in [("refused", &refused), ("malformed", &malformed)] {
        let code = captured.run(name, rekey().args(["migrate", "--database-url", bad]));
        assert_ne!(code, 0, "{name} URL accepted");
    }
    let code = captured.run(
        "status via DATABASE_URL",
        rekey().args(["status"]).env("DATABASE_URL", &refused),
    );
    assert_ne!(code, 0);
    assert!(
        seen.len() > kinds.len() * 2,
        "too few keys collected: {}",
        seen.len()
    );
    assert_clean(&scanner, &captured.0);
}

#[test]
fn backup_encrypt_decrypt_and_failures_leak_no_kek_data_key_or_s3_secret() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let kek = random_bytes(32);
    let other = random_bytes(32);
    std::fs::write(p("kek.raw"), &kek).unwrap();
    std::fs::write(p("kek.b64"), format!("{}\n", B64.encode(&kek))).unwrap();
    std::fs::write(p("other.raw"), &other).unwrap();
    // A malformed KEK file holding 31 secret bytes: the error must not echo them.
    let short = random_bytes(31);
    std::fs::write(p("short.b64"), B64.encode(&short)).unwrap();
    std::fs::write(p("plain"), random_bytes(300_000)).unwrap();
    let mut scanner = Scanner::new();
    scanner.add("kek", &kek);
    scanner.add("other kek", &other);
    scanner.add("malformed kek", &short);
    let mut captured = Captured::default();
    let encrypt = |kek_file: &str, out: &str| {
        let mut c = rekey();
        c.args([
            "backup",
            "encrypt",
            "--json",
            "--chunk-size",
            "64KiB",
            "--kek-file",
        ])
        .arg(p(kek_file))
        .arg("--in")
        .arg(p("plain"))
        .arg("--out")
        .arg(p(out));
        c
    };
    let decrypt = |kek_file: &str, from: &str, out: &str| {
        let mut c = rekey();
        c.args(["backup", "decrypt", "--json", "--force", "--kek-file"])
            .arg(p(kek_file))
            .arg("--from")
            .arg(p(from))
            .arg("--out")
            .arg(p(out));
        c
    };
    assert_eq!(
        captured.run("encrypt raw", &mut encrypt("kek.raw", "a.rkb")),
        0
    );
    assert_eq!(
        captured.run("encrypt b64", &mut encrypt("kek.b64", "b.rkb")),
        0
    );
    for obj in ["a.rkb", "b.rkb"] {
        let bytes = std::fs::read(p(obj)).unwrap();
        scanner.add(&format!("data key of {obj}"), &data_key(&bytes, &kek));
    }
    assert_eq!(
        captured.run("decrypt", &mut decrypt("kek.b64", "a.rkb", "a.out")),
        0
    );
    assert_eq!(
        std::fs::read(p("a.out")).unwrap(),
        std::fs::read(p("plain")).unwrap()
    );
    // Failures: wrong key, tampered, truncated, malformed KEK file.
    let obj = std::fs::read(p("a.rkb")).unwrap();
    let mut tampered = obj.clone();
    tampered[5000] ^= 0x40;
    std::fs::write(p("tampered.rkb"), &tampered).unwrap();
    std::fs::write(p("truncated.rkb"), &obj[..obj.len() - 100]).unwrap();
    let failures = [
        ("wrong kek", decrypt("other.raw", "a.rkb", "x.out")),
        ("tampered", decrypt("kek.raw", "tampered.rkb", "x.out")),
        ("truncated", decrypt("kek.raw", "truncated.rkb", "x.out")),
        ("malformed kek", decrypt("short.b64", "a.rkb", "x.out")),
        ("malformed kek (encrypt)", encrypt("short.b64", "c.rkb")),
    ];
    for (name, mut cmd) in failures {
        assert_ne!(captured.run(name, &mut cmd), 0, "{name} succeeded");
    }

    // To S3 and back, with the access key in the config file (moto takes any secret).
    let s3 = S3::start();
    let aws_secret = format!("aws-{}", hex::encode(random_bytes(20)));
    let lines: String = s3
        .config_lines()
        .lines()
        .map(|l| {
            if l.starts_with("s3_secret_access_key") {
                format!("s3_secret_access_key = \"{aws_secret}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(lines.contains(&aws_secret));
    scanner.add("S3 secret access key", aws_secret.as_bytes());
    let config = p("rekey.toml");
    std::fs::write(
        &config,
        format!(
            "[backup]\ndestination = \"{}\"\nkek_file = \"{}\"\n{lines}",
            s3.url("hygiene/"),
            p("kek.raw").display()
        ),
    )
    .unwrap();
    let object = s3.url("hygiene/one.rkb");
    let mut up = rekey();
    up.args(["backup", "encrypt", "--json", "--config"])
        .arg(&config)
        .arg("--in")
        .arg(p("plain"))
        .args(["--out", &object]);
    assert_eq!(captured.run("encrypt to s3", &mut up), 0);
    let mut down = rekey();
    down.args(["backup", "decrypt", "--json", "--force", "--config"])
        .arg(&config)
        .args(["--from", &object, "--out"])
        .arg(p("s3.out"));
    assert_eq!(captured.run("decrypt from s3", &mut down), 0);
    let mut missing = rekey();
    missing
        .args(["backup", "decrypt", "--config"])
        .arg(&config)
        .args(["--from", &s3.url("hygiene/none.rkb"), "--out"])
        .arg(p("none.out"));
    assert_ne!(captured.run("decrypt a missing object", &mut missing), 0);
    assert_clean(&scanner, &captured.0);
}

fn key_b64(n: usize) -> (Vec<u8>, String) {
    let k = random_bytes(n);
    let b = B64.encode(&k);
    (k, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_verify_and_rotate_key_leak_no_encryption_key() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().expect("TLS files");
    let (gcm, gcm_b64) = key_b64(32);
    let (cbc, cbc_b64) = key_b64(32);
    let (sbox, sbox_b64) = key_b64(32);
    let (stranger, stranger_b64) = key_b64(32);
    let mut requests = Vec::new();
    for i in 0..10 {
        requests.push(secret("hy", &format!("g{i}"), "aesgcm", "k1", &gcm_b64));
        requests.push(secret("hy", &format!("c{i}"), "aescbc", "c1", &cbc_b64));
        requests.push(secret("hy", &format!("s{i}"), "secretbox", "b1", &sbox_b64));
    }
    // Written with a key the configuration does not hold: undecryptable.
    requests.push(secret("hy", "lost", "aesgcm", "k1", &stranger_b64));
    requests.push(secret("hy", "plain", "plaintext", "", ""));
    let values = encode(&requests);
    let kvs = requests
        .iter()
        .zip(values)
        .map(|(r, v)| (r["etcd_key"].as_str().unwrap().to_string(), v))
        .collect();
    let client = etcd_client::Client::connect(
        [etcd.endpoint.as_str()],
        Some(
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(
                        std::fs::read(&tls.ca_cert).unwrap(),
                    ))
                    .identity(etcd_client::Identity::from_pem(
                        std::fs::read(&tls.client_cert).unwrap(),
                        std::fs::read(&tls.client_key).unwrap(),
                    )),
            ),
        ),
    )
    .await
    .expect("connecting to the TLS etcd");
    load(&client, kvs).await;

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - name: k1\n              secret: {gcm_b64}\n      - aescbc:\n          keys:\n            - name: c1\n              secret: {cbc_b64}\n      - secretbox:\n          keys:\n            - name: b1\n              secret: {sbox_b64}\n      - identity: {{}}\n"
    );
    let config_path = dir.path().join("enc.yaml");
    std::fs::write(&config_path, &config).unwrap();
    // A config the API server would refuse: a key of the wrong length.
    let (bad, bad_b64) = key_b64(20);
    let bad_config = config.replace(&sbox_b64, &bad_b64);
    let bad_path = dir.path().join("bad.yaml");
    std::fs::write(&bad_path, &bad_config).unwrap();

    let mut scanner = Scanner::new();
    for (label, k) in [
        ("aesgcm key", &gcm),
        ("aescbc key", &cbc),
        ("secretbox key", &sbox),
        ("unconfigured key", &stranger),
        ("invalid key", &bad),
    ] {
        scanner.add(label, k);
    }
    let mut seen = BTreeSet::new();
    add_pem_files(&mut scanner, etcd.dir.path(), &mut seen);
    assert!(!seen.is_empty(), "the TLS etcd's keys were not found");

    let mut captured = Captured::default();
    let verify = |config: &PathBuf, key: &PathBuf, json: bool| {
        let mut c = rekey();
        c.args(["etcd", "verify", "--encryption-config"])
            .arg(config)
            .args(["--endpoints", &etcd.endpoint, "--cacert"])
            .arg(&tls.ca_cert)
            .arg("--cert")
            .arg(&tls.client_cert)
            .arg("--key")
            .arg(key);
        if json {
            c.arg("--json");
        }
        c
    };
    let key = &tls.client_key;
    // Exit 1: a plaintext and an undecryptable value are findings.
    assert_eq!(
        captured.run("verify --json", &mut verify(&config_path, key, true)),
        1
    );
    let report: serde_json::Value =
        serde_json::from_slice(&captured.0[0].1).expect("verify --json prints JSON");
    assert_eq!(
        report["scan"]["verified"], 30,
        "the keys did not open the values: {report}"
    );
    assert_eq!(
        captured.run("verify", &mut verify(&config_path, key, false)),
        1
    );
    assert_eq!(
        captured.run("verify (invalid key)", &mut verify(&bad_path, key, true)),
        2
    );
    // A wrong TLS key file: the error names the file, never its content.
    let _ = captured.run(
        "verify (wrong TLS key)",
        &mut verify(&config_path, &tls.client_cert, false),
    );

    // rotate-key writes the new key to files only: its output never shows it.
    let out = dir.path().join("rotation");
    assert_eq!(
        captured.run(
            "rotate-key",
            rekey()
                .args(["etcd", "rotate-key", "--encryption-config"])
                .arg(&config_path)
                .arg("--out")
                .arg(&out)
        ),
        0
    );
    let step = std::fs::read_to_string(out.join("1-add-new-key.yaml")).expect("step 1");
    let new_keys: Vec<&str> = step
        .lines()
        .filter_map(|l| l.trim().strip_prefix("secret:"))
        .map(|s| s.trim().trim_matches(|c| c == '"' || c == '\''))
        .filter(|s| ![&gcm_b64, &cbc_b64, &sbox_b64].contains(&&s.to_string()))
        .collect();
    assert_eq!(new_keys.len(), 1, "expected one new key in step 1:\n{step}");
    scanner.add("new key (rotate-key)", &B64.decode(new_keys[0]).unwrap());
    assert_clean(&scanner, &captured.0);
}

/// Every secret value the stand-in holds: TLS keys, token values, bootstrap
/// token secrets (and certificates as public material).
fn add_cluster_secrets(scanner: &mut Scanner, k: &KubeStandIn, seen: &mut BTreeSet<String>) {
    for s in k.list("Secret", None) {
        let Some(data) = s["data"].as_object() else {
            continue;
        };
        for (key, value) in data {
            let Some(bytes) = value.as_str().and_then(|v| B64.decode(v).ok()) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes).to_string();
            let name = format!(
                "secret {}/{} {key}",
                s["metadata"]["namespace"].as_str().unwrap_or(""),
                s["metadata"]["name"].as_str().unwrap_or("")
            );
            match key.as_str() {
                "tls.key" if seen.insert(text.clone()) => scanner.add_pem(&name, &text),
                "token" | "token-secret" if seen.insert(text.clone()) => scanner.add(&name, &bytes),
                "tls.crt" | "ca.crt" => scanner.add_public(&bytes),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_tokens_secrets_and_bootstrap_tokens_leak_nothing() {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    for ns in ["ci", "web"] {
        k.add_namespace(ns);
    }
    k.put(fixtures::service_account("ci", "deployer")).unwrap();
    k.put(fixtures::service_account("ci", "builder")).unwrap();
    // A bootstrap token kubeadm made, unused: revoked on request below.
    let (object, kubeadm_token) = fixtures::bootstrap_secret("abcdef", None, None);
    k.put(object).unwrap();
    let kubeconfig = k.kubeconfig();
    let config = format!(
        "{}[kubernetes]\nkubeconfig = \"{}\"\n\n\
         [bootstrap_tokens]\nrevoke_after_join = true\nmax_age = \"24h\"\n\n\
         [[certificate]]\nname = \"cert/web/web-tls\"\ndns_names = [\"web.web.svc\"]\nlifetime = \"10s\"\nrenew_fraction = 0.5\n\
         sink = {{ kind = \"kubernetes-secret\", namespace = \"web\", name = \"web-tls\" }}\n\n\
         [[token]]\nname = \"sa-token/ci/deployer\"\nnamespace = \"ci\"\nservice_account = \"deployer\"\n\
         audiences = [\"https://vault.example\"]\nlifetime = \"10m\"\nrenew_fraction = 0.01\n\
         sink = {{ kind = \"kubernetes-secret\", namespace = \"ci\", name = \"deployer-token\" }}\n\n\
         [[token]]\nname = \"sa-token/ci/builder\"\nnamespace = \"ci\"\nservice_account = \"builder\"\n\
         lifetime = \"10m\"\nrenew_fraction = 0.01\nbound = true\n\
         sink = {{ kind = \"kubernetes-secret\", namespace = \"ci\", name = \"builder-token\" }}\n",
        s.config_head("max_jitter = \"0s\""),
        kubeconfig.display()
    );
    let config = s.write_config("rekey.toml", &config);

    let mut scanner = Scanner::new();
    let mut seen = BTreeSet::new();
    // rekey's own bearer token, from its kubeconfig.
    let kc = std::fs::read_to_string(&kubeconfig).unwrap();
    for line in kc.lines() {
        if let Some(t) = line.trim().strip_prefix("token:") {
            scanner.add("rekey's kubeconfig token", t.trim().as_bytes());
        }
    }
    scanner.add(
        "kubeadm's bootstrap token",
        kubeadm_token.expose_secret().as_bytes(),
    );
    add_pem_files(&mut scanner, s.dir.path(), &mut seen);

    let mut captured = Captured::default();
    let mut server = s.serve(&config, &[("REKEY_LOG", "debug")]);
    // A bootstrap token made by rekey, used by a joining node: revoked after join.
    let mut create = rekey();
    create
        .args(["token", "create", "--config"])
        .arg(&config)
        .env("REKEY_LOG", "debug");
    let out = run(&mut create);
    let (code, token, err) = outcome(&out);
    assert_eq!(code, 0, "rekey token create: {err}");
    let token = token.trim().to_string();
    scanner.add("bootstrap token (rekey token create)", token.as_bytes());
    // Printing the new token on stdout is the command's purpose; its logs are scanned.
    captured.keep("token create (stderr)", out.stderr.clone());
    let id = token.split('.').next().unwrap().to_string();
    k.join_node(&token, "worker-1").await;

    // Secrets are collected (to be searched for in the logs) until the
    // deployer token was rotated twice and the joined node's token revoked,
    // for at most 90 s (about 14 s alone; the whole suite at once on 2 cores
    // once took over 30).
    let started = Instant::now();
    let mut tokens = BTreeSet::new();
    let bootstrap_secret = format!("bootstrap-token-{id}");
    while started.elapsed() < Duration::from_secs(90)
        && (tokens.len() < 3
            || seen.len() < 6
            || k.get("Secret", "kube-system", &bootstrap_secret).is_some())
    {
        add_cluster_secrets(&mut scanner, &k, &mut seen);
        if let Some(t) = k.get("Secret", "ci", "deployer-token") {
            tokens.insert(t["data"]["token"].as_str().unwrap_or("").to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        k.get("Secret", "kube-system", &format!("bootstrap-token-{id}"))
            .is_none(),
        "the joined node's bootstrap token was not revoked:\n{}",
        server.log()
    );
    assert!(
        tokens.len() >= 3,
        "expected the deployer token issued and rotated at least twice, saw {}:\n{}",
        tokens.len(),
        server.log()
    );
    // Listing and revoking by hand.
    assert_eq!(
        captured.run(
            "token list",
            rekey()
                .args(["token", "list", "--json", "--config"])
                .arg(&config)
        ),
        0
    );
    assert_eq!(
        captured.run(
            "token revoke",
            rekey()
                .args(["token", "revoke", "abcdef", "--config"])
                .arg(&config)
        ),
        0
    );
    assert!(
        k.get("Secret", "kube-system", "bootstrap-token-abcdef")
            .is_none()
    );
    server.terminate(Duration::from_secs(20));
    captured.keep(
        "rekey serve (kubernetes)",
        std::fs::read(&server.log).unwrap(),
    );
    assert!(
        seen.len() >= 6,
        "too few secrets collected from the cluster: {}",
        seen.len()
    );
    assert_clean(&scanner, &captured.0);
}

/// `etcd migrate`, `rotate-key --retire`, a backup with its key escrow and
/// the Secrets drill, with debug logs: neither the encryption keys, nor the
/// KEK, nor the escrow's data key appear in any output.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_retire_escrow_and_drill_leak_no_key() {
    let (cbc, cbc_b64) = key_b64(32);
    let (gcm, gcm_b64) = key_b64(32);
    let kek = random_bytes(32);
    let db = rekey_integration::pg::fresh_db().await;
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, providers: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n{providers}      - identity: {{}}\n"
            ),
        )
        .unwrap();
        p
    };
    let old_p = format!(
        "      - aescbc:\n          keys:\n            - {{name: old, secret: {cbc_b64}}}\n"
    );
    let new_p = format!(
        "      - aesgcm:\n          keys:\n            - {{name: new, secret: {gcm_b64}}}\n"
    );
    let old = write("old.yaml", &old_p);
    let both = write("both.yaml", &format!("{new_p}{old_p}"));
    let k = crate::etcd::migrate::stand_in(&etcd, &old);
    crate::etcd::migrate::create(&k, 6, 0).await;
    k.set_encryption_config(&both);
    let kek_path = dir.path().join("kek");
    std::fs::write(&kek_path, &kek).unwrap();
    let local = dir.path().join("backups");
    let toml = dir.path().join("rekey.toml");
    std::fs::write(
        &toml,
        format!(
            "[database]\nurl = \"{}\"\n\n[etcd]\nendpoints = [\"{}\"]\nencryption_config = \"{}\"\n\n[backup]\ndestination = \"{}\"\nkek_file = \"{}\"\n",
            db.url,
            etcd.endpoint,
            both.display(),
            local.display(),
            kek_path.display()
        ),
    )
    .unwrap();
    let mut captured = Captured::default();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let base = |args: &[&str]| {
        let mut c = rekey();
        c.args(args);
        c
    };
    assert_eq!(
        captured.run(
            "backup run",
            &mut base(&["backup", "run", "--json", "--config", &s(&toml)])
        ),
        0
    );
    let record: serde_json::Value = serde_json::from_slice(&captured.0[0].1).unwrap();
    let location = record["location"].as_str().unwrap().to_string();
    let escrow = std::fs::read(format!("{}.keys", location.trim_start_matches("file://"))).unwrap();
    for json in [true, false] {
        let mut c = base(&[
            "backup",
            "verify",
            "--kek-file",
            &s(&kek_path),
            "--from",
            &location,
            "--decrypt-secrets",
            "6",
        ]);
        if json {
            c.arg("--json");
        }
        assert_eq!(captured.run("backup verify --decrypt-secrets", &mut c), 0);
    }
    let migrate = |config: &Path, extra: &[&str]| {
        let mut c = base(&[
            "etcd",
            "migrate",
            "--max-rate",
            "0",
            "--encryption-config",
            &s(config),
            "--endpoints",
            &etcd.endpoint,
            "--database-url",
            &db.url,
            "--kubeconfig",
            &s(&k.admin_kubeconfig()),
        ]);
        c.args(extra);
        c
    };
    // A configuration that cannot open the values: the error names them, not the keys.
    let only_new = write("new.yaml", &new_p);
    assert_eq!(
        captured.run("migrate (mismatch)", &mut migrate(&only_new, &[])),
        1
    );
    assert_eq!(
        captured.run("migrate --dry-run", &mut migrate(&both, &["--dry-run"])),
        0
    );
    assert_eq!(
        captured.run("migrate --json", &mut migrate(&both, &["--json"])),
        0
    );
    let retire = |name: &str| {
        base(&[
            "etcd",
            "rotate-key",
            "--retire",
            name,
            "--encryption-config",
            &s(&both),
            "--endpoints",
            &etcd.endpoint,
            "--database-url",
            &db.url,
        ])
    };
    assert_eq!(
        captured.run("retire (a backup needs it)", &mut retire("old")),
        1
    );
    assert_eq!(captured.run("retire (unknown)", &mut retire("nope")), 2);

    let mut scanner = Scanner::new();
    scanner.add("aescbc key", &cbc);
    scanner.add("aesgcm key", &gcm);
    scanner.add("backup KEK", &kek);
    scanner.add("escrow data key", &data_key(&escrow, &kek));
    assert_clean(&scanner, &captured.0);
}
