//! Independent consumers of rekey's certificates: Go's crypto/x509 and
//! crypto/tls (`integration/go/tlscheck`, built with Debian's `golang-go`
//! into `target/tlscheck`), OpenSSL (`verify -x509_strict`, `s_server` /
//! `s_client`), rustls' webpki verifiers, and the RFC 5280 linter pkilint.
//! A missing tool fails the test with how to install it.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use rustls::{
    client::danger::ServerCertVerifier,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

use crate::bin::outcome;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// How to get Go.
pub const GO_INSTALL: &str =
    "install Debian's Go: `apt-get install -y golang-go` (integration/test.sh does)";

/// The `tlscheck` program (Go standard library only), built once per test
/// process into `target/tlscheck/tlscheck` from `integration/go/tlscheck`.
pub fn tlscheck() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = root().join("target");
            let out = target.join("tlscheck/tlscheck");
            let go = Command::new("go")
                .current_dir(root().join("integration/go/tlscheck"))
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .env("GOCACHE", target.join("go-cache"))
                .env("GOPATH", target.join("go"))
                .env("GOFLAGS", "-mod=mod")
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0")
                .output()
                .unwrap_or_else(|e| panic!("running `go build` for tlscheck: {e}; {GO_INSTALL}"));
            let (code, o, e) = outcome(&go);
            assert_eq!(
                code, 0,
                "go build of integration/go/tlscheck failed:\n{o}{e}"
            );
            out
        })
        .clone()
}

/// Runs tlscheck; `Ok` with its output when Go accepts, `Err` with its
/// reason when it refuses.
pub fn go(args: &[&str]) -> Result<String, String> {
    let out = Command::new(tlscheck())
        .args(args)
        .output()
        .expect("running tlscheck");
    let (code, o, e) = outcome(&out);
    match code {
        0 => Ok(o),
        1 => Err(e.trim().to_string()),
        _ => panic!("tlscheck {args:?}: bad usage ({code}): {e}"),
    }
}

/// Runs openssl; `(exit code, stdout + stderr)`.
pub fn openssl(args: &[&str]) -> (i32, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (apt-get install -y openssl)");
    let (code, o, e) = outcome(&out);
    (code, format!("{o}{e}"))
}

/// `openssl verify -x509_strict -purpose PURPOSE` of the first certificate
/// of `chain` (the rest are untrusted intermediates) against `roots`.
pub fn openssl_verify(roots: &Path, chain: &Path, purpose: &str) -> Result<(), String> {
    let s = |p: &Path| p.display().to_string();
    let (code, out) = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        &s(roots),
        "-untrusted",
        &s(chain),
        &s(chain),
    ]);
    if code == 0 && out.contains(": OK") {
        Ok(())
    } else {
        Err(out)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A mutual-TLS handshake between `openssl s_server` (server chain and
/// key, requiring a client certificate from `roots`) and `openssl
/// s_client` (client chain and key, verifying the server against `roots`
/// and `name`).
pub fn openssl_handshake(
    roots: &Path,
    server: (&Path, &Path),
    client: (&Path, &Path),
    name: &str,
) -> Result<(), String> {
    let s = |p: &Path| p.display().to_string();
    let port = free_port();
    // `-naccept 1`: the first connection is the handshake; the client
    // retries while the server is not listening yet.
    let srv = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            &s(server.0),
            "-key",
            &s(server.1),
            "-CAfile",
            &s(roots),
            "-Verify",
            "2",
            "-verify_return_error",
            "-naccept",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_server");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client_out = String::new();
    let mut ok = false;
    while Instant::now() < deadline {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                name,
                "-verify_hostname",
                name,
                "-CAfile",
                &s(roots),
                "-verify_return_error",
                "-cert",
                &s(client.0),
                "-key",
                &s(client.1),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client");
        let (_, o, e) = outcome(&out);
        client_out = format!("{o}{e}");
        if client_out.contains("connect:errno") || client_out.contains("Connection refused") {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        ok = out.status.success() && client_out.contains("Verify return code: 0 (ok)");
        break;
    }
    // The server exits by itself after its one connection (and has then
    // verified the client's certificate); killed only if it hangs.
    let mut srv = srv;
    let until = Instant::now() + Duration::from_secs(10);
    while matches!(srv.try_wait(), Ok(None)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = srv.kill();
    let server_out = srv.wait_with_output().expect("s_server output");
    let (_, so, se) = outcome(&server_out);
    if ok && !se.contains("error") {
        Ok(())
    } else {
        Err(format!("s_client:\n{client_out}\ns_server:\n{so}{se}"))
    }
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots_of(bundle_pem: &str) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ders(bundle_pem) {
        roots.add(c).expect("a trust anchor rustls accepts");
    }
    Arc::new(roots)
}

/// rustls' webpki server verifier: the chain `chain_pem` (leaf first) for
/// `name` (a DNS name or an IP address) against `bundle_pem`.
pub fn rustls_server(bundle_pem: &str, chain_pem: &str, name: &str) -> Result<(), String> {
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots_of(bundle_pem),
        provider(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let chain = ders(chain_pem);
    let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    v.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// rustls' webpki client verifier (mutual TLS): `chain_pem` against `bundle_pem`.
pub fn rustls_client(bundle_pem: &str, chain_pem: &str) -> Result<(), String> {
    let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots_of(bundle_pem),
        provider(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let chain = ders(chain_pem);
    v.verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The Python with pkilint: `REKEY_TEST_PYTHON` (set by
/// `integration/test.sh`), else `target/pyenv/bin/python`.
pub fn pkilint_python() -> PathBuf {
    let python = std::env::var_os("REKEY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/pyenv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import pkilint"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import pkilint: `pip install -r integration/requirements.txt` into target/pyenv \
         (integration/test.sh does), or point REKEY_TEST_PYTHON at a Python that has it",
        python.display()
    );
    python
}

/// One pkilint finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `FATAL`, `ERROR`, `WARNING`, `NOTICE`, `INFO`.
    pub severity: String,
    /// e.g. `pkix.unknown_subject_key_identifier_calculation_method`.
    pub code: String,
    /// Where in the certificate.
    pub node: String,
}

/// Lints every file with `lint_pkix_cert` (RFC 5280) in one Python process;
/// returns the findings of each, `INFO` included.
pub fn pkilint(files: &[PathBuf]) -> Vec<(PathBuf, Vec<Finding>)> {
    const DRIVER: &str = r#"
import sys, io, contextlib, json
from pkilint.bin import lint_pkix_cert
out = []
for p in sys.argv[1:]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            lint_pkix_cert.main(["lint", "-s", "INFO", "-f", "JSON", p])
        except SystemExit:
            pass  # its exit code says whether there were findings; they are all in the JSON
    out.append(json.loads(buf.getvalue()))
print(json.dumps(out))
"#;
    let out = Command::new(pkilint_python())
        .arg("-c")
        .arg(DRIVER)
        .args(files)
        .output()
        .expect("running pkilint");
    let (code, o, e) = outcome(&out);
    assert_eq!(code, 0, "pkilint driver failed: {e}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(o.trim()).expect("pkilint JSON");
    files
        .iter()
        .zip(reports)
        .map(|(f, r)| {
            let mut findings = Vec::new();
            for res in r["results"].as_array().into_iter().flatten() {
                for d in res["finding_descriptions"].as_array().into_iter().flatten() {
                    findings.push(Finding {
                        severity: d["severity"].as_str().unwrap_or("").into(),
                        code: d["code"].as_str().unwrap_or("").into(),
                        node: res["node_path"].as_str().unwrap_or("").into(),
                    });
                }
            }
            (f.clone(), findings)
        })
        .collect()
}
