//! Every certificate rekey issues, for every key type, as independent
//! consumers see it (issue 12, item 6): Go's crypto/x509 and crypto/tls,
//! OpenSSL, rustls' webpki verifiers, and the RFC 5280 linter pkilint. One
//! `rekey serve` with a named issuer per key type ([[issuer]], item 1),
//! each CA in the inventory as `ca/<issuer>` (item 2).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use rekey_integration::{
    bin::{outcome, rekey, run},
    pki,
    serve::{Scenario, SinkSnapshot, read_sink, wait_for},
};
use sha2::{Digest, Sha256};
use x509_parser::{extensions::ParsedExtension, prelude::X509Certificate};

const KEYS: [&str; 6] = [
    "ecdsa-p256",
    "ecdsa-p384",
    "ed25519",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
];

/// pkilint findings accepted on rekey's certificates, by code (only `INFO`
/// is accepted otherwise; no NOTICE, WARNING, ERROR or FATAL).
const ACCEPTED: &[&str] = &[];

struct Leaf {
    name: String,
    issuer: &'static str,
    key: &'static str,
    usage: &'static str,
    dns: String,
}

impl Leaf {
    fn dir(&self, s: &Scenario) -> PathBuf {
        s.path(&format!("sinks/{}", self.name.replace('/', "_")))
    }

    fn config(&self, s: &Scenario) -> String {
        format!(
            "[[certificate]]\nname = \"{}\"\nissuer = \"{}\"\nkey = \"{}\"\ndns_names = [\"{}\"]\n\
             usages = [\"{}\"]\nlifetime = \"24h\"\nsink = {{ kind = \"file\", dir = \"{}\" }}\n\n",
            self.name,
            self.issuer,
            self.key,
            self.dns,
            self.usage,
            self.dir(s).display()
        )
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    p.contents
}

fn ski(x: &X509Certificate<'_>) -> Option<Vec<u8>> {
    x.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn aki(x: &X509Certificate<'_>) -> Option<Vec<u8>> {
    x.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// RFC 7093 section 2 method 1: the leftmost 160 bits of the SHA-256 of
/// the subjectPublicKey bit string.
fn rfc7093_method1(x: &X509Certificate<'_>) -> Vec<u8> {
    Sha256::digest(&*x.public_key().subject_public_key.data)[..20].to_vec()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("scratch file");
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_type_is_accepted_by_go_openssl_rustls_and_lint_clean() {
    // Fail early, with how to install them, when a consumer is missing.
    pki::tlscheck();
    pki::pkilint_python();

    let s = Scenario::new().await;
    let mut head = format!("[database]\nurl = \"{}\"\n\n", s.db.url);
    for k in KEYS {
        let dir = s.path(&format!("ca-{k}"));
        let (code, _, err) = outcome(&run(rekey()
            .args(["ca", "init", "--key", k, "--common-name"])
            .arg(format!("rekey {k} CA"))
            .arg("--out")
            .arg(&dir)));
        assert_eq!(code, 0, "rekey ca init --key {k}: {err}");
        head += &format!(
            "[[issuer]]\nname = \"{k}\"\nca_cert = \"{}\"\nca_key = \"{}\"\n\n",
            dir.join("ca.crt").display(),
            dir.join("ca.key").display()
        );
    }
    let mut leaves = Vec::new();
    for k in KEYS {
        for usage in ["server", "client"] {
            leaves.push(Leaf {
                name: format!("cert/pki/{k}-{usage}"),
                issuer: k,
                key: k,
                usage,
                dns: format!("{usage}.{k}.pki.svc"),
            });
        }
    }
    // A CA signs leaves of other key types too (an RSA CA, an EC leaf, ...).
    for (issuer, key) in [
        ("rsa-2048", "ecdsa-p256"),
        ("ecdsa-p384", "rsa-2048"),
        ("ed25519", "rsa-3072"),
    ] {
        leaves.push(Leaf {
            name: format!("cert/pki/{key}-by-{issuer}"),
            issuer,
            key,
            usage: "server",
            dns: format!("{key}.by.{issuer}.pki.svc"),
        });
    }
    let mut config = head + "[engine]\nmax_jitter = \"0s\"\n\n";
    for l in &leaves {
        config += &l.config(&s);
    }
    let config = s.write_config("rekey.toml", &config);
    let server = s.serve(&config, &[]);

    let snaps: BTreeMap<String, SinkSnapshot> = leaves
        .iter()
        .map(|l| {
            let snap = wait_for(Duration::from_secs(120), || read_sink(&l.dir(&s)))
                .unwrap_or_else(|| panic!("{} was not published:\n{}", l.name, server.log()));
            (l.name.clone(), snap)
        })
        .collect();
    let scratch = s.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    // Each CA: a CA for x509-parser too, SKI by RFC 7093 method 1, in the
    // inventory as ca/<issuer> with its validity.
    let (code, status, err) = outcome(&run(rekey()
        .args(["status", "--json", "--config"])
        .arg(&config)));
    assert_eq!(code, 0, "rekey status: {err}");
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let mut lint_files = Vec::new();
    for k in KEYS {
        let ca_pem = std::fs::read_to_string(s.path(&format!("ca-{k}/ca.crt"))).unwrap();
        let der = pem_der(&ca_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(ca.is_ca(), "{k}: not a CA");
        assert_eq!(
            ski(&ca),
            Some(rfc7093_method1(&ca)),
            "{k}: CA SKI is not RFC 7093 method 1"
        );
        let row = status["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == format!("ca/{k}"))
            .unwrap_or_else(|| panic!("no ca/{k} in rekey status: {status}"));
        let not_after = chrono::DateTime::from_timestamp(ca.validity().not_after.timestamp(), 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert_eq!(row["not_after"], not_after.as_str(), "ca/{k}: {row}");
        assert_eq!(row["state"], "valid", "ca/{k}: {row}");
        lint_files.push(s.path(&format!("ca-{k}/ca.crt")));
    }

    for l in &leaves {
        let snap = &snaps[&l.name];
        let ca_path = s.path(&format!("ca-{}/ca.crt", l.issuer));
        let ca_pem = std::fs::read_to_string(&ca_path).unwrap();
        assert_eq!(
            snap.ca.trim(),
            ca_pem.trim(),
            "{}: ca.crt is not its issuer's CA",
            l.name
        );
        let dir = scratch.join(l.name.replace('/', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        let chain = write(&dir, "tls.crt", &snap.cert);
        let leaf_only = write(
            &dir,
            "leaf.crt",
            &format!(
                "{}\n",
                snap.cert
                    .split_inclusive("-----END CERTIFICATE-----")
                    .next()
                    .unwrap()
                    .trim()
            ),
        );
        write(&dir, "tls.key", &snap.key);
        let roots = write(&dir, "ca.crt", &snap.ca);
        lint_files.push(leaf_only.clone());

        // The leaf: CA:FALSE, SKI (method 1), AKI = its CA's SKI, followed by that CA in tls.crt.
        let der = pem_der(&snap.cert);
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!x.is_ca(), "{}", l.name);
        assert!(
            x.basic_constraints().unwrap().is_some(),
            "{}: no basicConstraints",
            l.name
        );
        assert_eq!(ski(&x), Some(rfc7093_method1(&x)), "{}: leaf SKI", l.name);
        let ca_der = pem_der(&ca_pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(aki(&x), ski(&ca), "{}: AKI is not the CA's SKI", l.name);
        assert_eq!(
            snap.cert.matches("BEGIN CERTIFICATE").count(),
            2,
            "{}: tls.crt is leaf + CA",
            l.name
        );

        let (purpose, go_usage, other_go_usage) = match l.usage {
            "server" => ("sslserver", "server", "client"),
            _ => ("sslclient", "client", "server"),
        };
        let p = |p: &Path| p.display().to_string();
        // Go's crypto/x509.
        pki::go(&[
            "verify",
            "-roots",
            &p(&roots),
            "-cert",
            &p(&chain),
            "-usage",
            go_usage,
            "-dns",
            &l.dns,
        ])
        .unwrap_or_else(|e| panic!("{}: Go refuses it: {e}", l.name));
        let refused = pki::go(&[
            "verify",
            "-roots",
            &p(&roots),
            "-cert",
            &p(&chain),
            "-usage",
            other_go_usage,
        ]);
        assert!(
            refused.is_err(),
            "{}: Go accepts a {} leaf for {other_go_usage}",
            l.name,
            l.usage
        );
        let other_ca = s.path(if l.issuer == "ed25519" {
            "ca-rsa-2048/ca.crt"
        } else {
            "ca-ed25519/ca.crt"
        });
        let refused = pki::go(&[
            "verify",
            "-roots",
            &p(&other_ca),
            "-cert",
            &p(&chain),
            "-usage",
            go_usage,
        ]);
        assert!(
            refused.is_err(),
            "{}: Go accepts it under another CA",
            l.name
        );
        // OpenSSL, strict.
        pki::openssl_verify(&roots, &chain, purpose).unwrap_or_else(|e| {
            panic!(
                "{}: openssl verify -x509_strict -purpose {purpose}: {e}",
                l.name
            )
        });
        let other = if purpose == "sslserver" {
            "sslclient"
        } else {
            "sslserver"
        };
        assert!(
            pki::openssl_verify(&roots, &chain, other).is_err(),
            "{}: OpenSSL accepts it for {other}",
            l.name
        );
        // rustls (webpki).
        if l.usage == "server" {
            pki::rustls_server(&snap.ca, &snap.cert, &l.dns)
                .unwrap_or_else(|e| panic!("{}: rustls refuses it: {e}", l.name));
            assert!(
                pki::rustls_server(&snap.ca, &snap.cert, "other.pki.svc").is_err(),
                "{}: rustls ignores the name",
                l.name
            );
            assert!(
                pki::rustls_client(&snap.ca, &snap.cert).is_err(),
                "{}: rustls accepts a server leaf as a client",
                l.name
            );
        } else {
            pki::rustls_client(&snap.ca, &snap.cert)
                .unwrap_or_else(|e| panic!("{}: rustls refuses it: {e}", l.name));
            assert!(
                pki::rustls_server(&snap.ca, &snap.cert, &l.dns).is_err(),
                "{}: rustls accepts a client leaf as a server",
                l.name
            );
        }
    }

    // Real handshakes, mutual TLS, per key type: Go's crypto/tls and OpenSSL.
    for k in KEYS {
        let d = |usage: &str| scratch.join(format!("cert_pki_{k}-{usage}"));
        let (srv, cli) = (d("server"), d("client"));
        let p = |p: PathBuf| p.display().to_string();
        let name = format!("server.{k}.pki.svc");
        pki::go(&[
            "handshake",
            "-roots",
            &p(srv.join("ca.crt")),
            "-server-cert",
            &p(srv.join("tls.crt")),
            "-server-key",
            &p(srv.join("tls.key")),
            "-client-cert",
            &p(cli.join("tls.crt")),
            "-client-key",
            &p(cli.join("tls.key")),
            "-dns",
            &name,
        ])
        .unwrap_or_else(|e| panic!("{k}: Go handshake: {e}"));
        pki::openssl_handshake(
            &srv.join("ca.crt"),
            (&srv.join("tls.crt"), &srv.join("tls.key")),
            (&cli.join("tls.crt"), &cli.join("tls.key")),
            &name,
        )
        .unwrap_or_else(|e| panic!("{k}: OpenSSL handshake: {e}"));
    }
    // ... and a handshake that must fail does (the client's name is not the server's).
    let srv = scratch.join("cert_pki_ecdsa-p256-server");
    let p = |p: PathBuf| p.display().to_string();
    assert!(
        pki::go(&[
            "handshake",
            "-roots",
            &p(srv.join("ca.crt")),
            "-server-cert",
            &p(srv.join("tls.crt")),
            "-server-key",
            &p(srv.join("tls.key")),
            "-dns",
            "elsewhere.pki.svc"
        ])
        .is_err(),
        "Go handshakes with the wrong name"
    );

    // RFC 5280 lint: nothing above INFO (beyond what ACCEPTED explains),
    // and pkilint itself recognises each SKI as RFC 7093 method 1.
    for (file, findings) in pki::pkilint(&lint_files) {
        let bad: Vec<_> = findings
            .iter()
            .filter(|f| f.severity != "INFO" && !ACCEPTED.contains(&f.code.as_str()))
            .collect();
        assert!(bad.is_empty(), "{}: pkilint: {bad:#?}", file.display());
        assert!(
            findings
                .iter()
                .any(|f| f.code == "pkix.subject_key_identifier_rfc7093_method_1_identified"),
            "{}: pkilint does not see an RFC 7093 SKI: {findings:#?}",
            file.display()
        );
    }
}
