//! The admin API client behind `rekey rotate` and `rekey status --server`.
//!
//! reqwest over a rustls configuration of our own (aws-lc-rs, the CA from
//! `--cacert`, the client certificate from `--cert`/`--key`), so refused
//! handshakes can be explained precisely instead of "connection reset".

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{
    problem::Problem,
    views::{CredentialList, RotationView},
};
use crate::{
    error::{BadInput, ProblemFound},
    store::credentials::{Credential, State},
};

/// How to reach the admin API (flags, or the environment).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Admin API URL, e.g. `https://rekey.rekey.svc:8443`.
    #[arg(long, env = "REKEY_SERVER")]
    pub server: Option<String>,
    /// Client certificate (PEM) signed by the server's `[api].client_ca`.
    #[arg(long, env = "REKEY_CLIENT_CERT")]
    pub cert: Option<PathBuf>,
    /// Key of the client certificate (PEM).
    #[arg(long, env = "REKEY_CLIENT_KEY")]
    pub key: Option<PathBuf>,
    /// CA that signed the server's certificate (PEM).
    #[arg(long, env = "REKEY_CACERT")]
    pub cacert: Option<PathBuf>,
}

/// A connected-on-demand client for one server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: reqwest::Url,
    cert: Option<PathBuf>,
}

fn bad(msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(BadInput::msg(msg))
}

fn read_certs(flag: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("{flag} {}: cannot read: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(format!(
                "{flag} {}: not PEM certificates: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(bad(format!(
            "{flag} {}: contains no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

impl ApiClient {
    /// Builds a client from flags; bad flags or files are [`BadInput`].
    pub fn new(args: &ClientArgs, timeout: Duration) -> anyhow::Result<Self> {
        let server = args
            .server
            .as_deref()
            .ok_or_else(|| bad("no server: pass --server URL or set REKEY_SERVER"))?;
        let mut base = reqwest::Url::parse(server)
            .map_err(|e| bad(format!("--server `{server}` is not a URL: {e}")))?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("rekey/", env!("CARGO_PKG_VERSION")));
        match base.scheme() {
            "https" => {
                let cacert = args.cacert.as_deref().ok_or_else(|| {
                    bad("--cacert is required for https: the CA that signed the server's certificate (or REKEY_CACERT)")
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs("--cacert", cacert)? {
                    roots.add(c).map_err(|e| {
                        bad(format!(
                            "--cacert {}: unusable CA certificate: {e}",
                            cacert.display()
                        ))
                    })?;
                }
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .context("TLS protocol versions")?
                    .with_root_certificates(roots);
                let mut tls = match (&args.cert, &args.key) {
                    (Some(cert), Some(key)) => {
                        let chain = read_certs("--cert", cert)?;
                        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                            bad(format!(
                                "--key {}: no usable PEM private key: {e}",
                                key.display()
                            ))
                        })?;
                        tls.with_client_auth_cert(chain, key_der).map_err(|e| {
                            bad(format!(
                                "--key {} does not go with --cert {}: {e}",
                                key.display(),
                                cert.display()
                            ))
                        })?
                    }
                    (None, None) => tls.with_no_client_auth(),
                    _ => return Err(bad("--cert and --key go together")),
                };
                // HTTP/1.1: a refused handshake then surfaces as the TLS alert
                // itself (over h2 it is only "connection closed").
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                builder = builder.tls_backend_preconfigured(tls);
            }
            "http" => {}
            other => {
                return Err(bad(format!(
                    "--server `{server}`: scheme `{other}` is not http or https"
                )));
            }
        }
        Ok(Self {
            http: builder.build().context("building the HTTP client")?,
            base,
            cert: args.cert.clone(),
        })
    }

    fn url(&self, path: &str) -> anyhow::Result<reqwest::Url> {
        self.base
            .join(path.trim_start_matches('/'))
            .with_context(|| format!("building a URL for {path}"))
    }

    /// Sends a request and turns transport failures into clear messages.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        req.send()
            .await
            .map_err(|e| anyhow::anyhow!(explain(&e, self.cert.as_deref(), &self.base)))
    }

    /// Reads a JSON answer, or the problem document as an error.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> anyhow::Result<T> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| anyhow::anyhow!(explain(&e, self.cert.as_deref(), &self.base)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).with_context(|| {
                format!("the server's answer ({status}) is not what rekey expects")
            });
        }
        let msg = match serde_json::from_slice::<Problem>(&bytes) {
            Ok(p) => format!(
                "{} ({}): {}",
                p.title,
                p.status,
                p.detail.unwrap_or_default()
            ),
            Err(_) => format!("the server answered {status}"),
        };
        Err(match status.as_u16() {
            400 | 404 | 409 | 413 | 415 => bad(msg),
            _ => anyhow::anyhow!(msg),
        })
    }

    /// `POST /v1/credentials/{name}/rotate`.
    pub async fn rotate(
        &self,
        name: &str,
        reason: Option<&str>,
        wait: bool,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<RotationView> {
        let encoded =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        let mut url = self.url(&format!("v1/credentials/{encoded}/rotate"))?;
        if wait {
            url.set_query(Some("wait=true"));
        }
        let mut req = self
            .http
            .post(url)
            .json(&serde_json::json!({ "reason": reason }));
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let resp = self.send(req).await?;
        self.json(resp).await
    }

    /// `GET /v1/rotations/{id}`.
    pub async fn rotation(&self, id: uuid::Uuid) -> anyhow::Result<RotationView> {
        let resp = self
            .send(self.http.get(self.url(&format!("v1/rotations/{id}"))?))
            .await?;
        self.json(resp).await
    }

    /// `GET /v1/credentials`.
    pub async fn credentials(&self) -> anyhow::Result<CredentialList> {
        let resp = self
            .send(self.http.get(self.url("v1/credentials")?))
            .await?;
        self.json(resp).await
    }
}

/// A transport error in words: which side refused what, and what to do.
pub fn explain(err: &reqwest::Error, cert: Option<&Path>, base: &reqwest::Url) -> String {
    use rustls::AlertDescription as A;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(t) = tls {
            return match t {
                rustls::Error::AlertReceived(A::CertificateRequired) => format!(
                    "{base}: the server requires a client certificate: pass --cert and --key (or REKEY_CLIENT_CERT / REKEY_CLIENT_KEY)"
                ),
                rustls::Error::AlertReceived(
                    A::UnknownCA
                    | A::BadCertificate
                    | A::CertificateUnknown
                    | A::DecryptError
                    | A::CertificateExpired
                    | A::CertificateRevoked
                    | A::AccessDenied,
                ) => match cert {
                    Some(c) => format!(
                        "{base}: the server refused the client certificate {} ({t}): it must be signed by the server's [api].client_ca and be valid now",
                        c.display()
                    ),
                    None => format!("{base}: the server refused the TLS handshake ({t})"),
                },
                rustls::Error::InvalidCertificate(reason) => format!(
                    "{base}: the server's certificate is not trusted ({reason:?}): check --cacert and the host name"
                ),
                other => format!("{base}: TLS failed: {other}"),
            };
        }
        source = e.source();
    }
    // Some layers flatten the rustls error into text: recognise the alerts there.
    let mut chain = err.to_string();
    let mut s = std::error::Error::source(err);
    while let Some(e) = s {
        chain.push_str(": ");
        chain.push_str(&e.to_string());
        s = e.source();
    }
    if chain.contains("CertificateRequired") {
        return format!(
            "{base}: the server requires a client certificate: pass --cert and --key (or REKEY_CLIENT_CERT / REKEY_CLIENT_KEY)"
        );
    }
    if [
        "UnknownCA",
        "BadCertificate",
        "CertificateUnknown",
        "DecryptError",
        "CertificateExpired",
    ]
    .iter()
    .any(|a| chain.contains(&format!("fatal alert: {a}")))
    {
        return match cert {
            Some(c) => format!(
                "{base}: the server refused the client certificate {}: it must be signed by the server's [api].client_ca and be valid now ({chain})",
                c.display()
            ),
            None => format!("{base}: the server refused the TLS handshake ({chain})"),
        };
    }
    if chain.contains("invalid peer certificate") {
        return format!(
            "{base}: the server's certificate is not trusted: check --cacert and the host name ({chain})"
        );
    }
    if err.is_connect() {
        return format!(
            "cannot connect to {base}: {}",
            crate::error::report(&anyhow::anyhow!("{err}"))
        );
    }
    if err.is_timeout() {
        return format!("{base} did not answer in time");
    }
    format!("{base}: {chain}")
}

/// `rekey rotate NAME [--wait] [--reason TEXT]`.
pub async fn rotate_command(
    client: &ClientArgs,
    name: &str,
    wait: bool,
    reason: Option<&str>,
    json: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    // One key per invocation: a retried request never queues a second rotation.
    let key = uuid::Uuid::new_v4().to_string();
    let api = ApiClient::new(client, timeout.max(Duration::from_secs(30)))?;
    let mut r = api.rotate(name, reason, wait, Some(&key)).await?;
    if wait {
        let deadline = tokio::time::Instant::now() + timeout;
        while !r.finished {
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "rotation {} of `{name}` has not finished after {}; it is {} (check later: GET /v1/rotations/{})",
                    r.id,
                    humantime::format_duration(timeout),
                    r.status,
                    r.id
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            r = api.rotation(r.id).await?;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if r.finished {
        println!(
            "rotation {} of {}: {}{}",
            r.id,
            r.credential,
            r.status,
            r.version_id
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default()
        );
    } else {
        println!(
            "rotation {} of {} {} (see /v1/rotations/{})",
            r.id, r.credential, r.status, r.id
        );
    }
    if r.finished && r.status != "succeeded" {
        return Err(ProblemFound(format!(
            "rotation {} of `{name}` {}: {}",
            r.id,
            r.status,
            r.error.as_deref().unwrap_or("no error recorded")
        ))
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

/// `rekey status --server URL [--json]`: the inventory from a running server,
/// printed exactly as the local `rekey status` prints it.
pub async fn status_command(client: &ClientArgs, json: bool) -> anyhow::Result<ExitCode> {
    let api = ApiClient::new(client, Duration::from_secs(30))?;
    let list = api.credentials().await?;
    let now = chrono::Utc::now();
    let credentials: Vec<Credential> = list.credentials.iter().map(|c| c.to_stored(now)).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&crate::cli::status::document(&credentials, now))?
        );
    } else {
        print!("{}", crate::cli::status::table(&credentials, now));
    }
    Ok(
        if credentials.iter().any(|c| c.state(now) == State::Expired) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}
