//! The admin API client behind `rekey rotate` and `rekey status --server`.
//!
//! reqwest over a rustls configuration of our own (aws-lc-rs, the CA from
//! `--cacert`, the client certificate from `--cert`/`--key`), so refused
//! handshakes can be explained precisely instead of "connection reset".
//!
//! Lists are paged: a request carries `?limit=N` (and `&continue=TOKEN` for
//! the next page); the answer carries `"continue"`, null, empty or absent on
//! the last page (a server without paging sends none: one page).
//! [`follow_pages`] walks them, handing each page over as it arrives.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;

use crate::{
    api::{
        problem::Problem,
        views::{CredentialSummary, RotationView},
    },
    error::BadInput,
};

/// Items asked for per page of a list (the server's default and at most 1,000).
pub const PAGE_LIMIT: u32 = 500;

/// One page of `GET /v1/credentials`.
#[derive(Debug, Clone, Deserialize)]
pub struct CredentialPage {
    /// This page's credentials, by name.
    pub credentials: Vec<CredentialSummary>,
    /// The token of the next page (none, null or empty: this is the last).
    #[serde(rename = "continue", default)]
    pub continue_token: Option<String>,
}

/// A page of a list: where the next one starts.
pub trait Paged {
    /// The `continue` token of the next page, if there is one.
    fn next_page(&self) -> Option<&str>;
}

impl Paged for CredentialPage {
    fn next_page(&self) -> Option<&str> {
        self.continue_token.as_deref().filter(|t| !t.is_empty())
    }
}

/// Fetches every page of a list: `fetch(None)` for the first, then
/// `fetch(Some(token))` with each page's `continue` token, until a page has
/// none. Each page goes to `on_page` before the next is asked for.
pub async fn follow_pages<P, F, Fut>(
    mut fetch: F,
    mut on_page: impl FnMut(P) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    P: Paged,
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = anyhow::Result<P>>,
{
    let mut token: Option<String> = None;
    loop {
        let page = fetch(token.clone()).await?;
        let next = page.next_page().map(str::to_string);
        on_page(page)?;
        match next {
            None => return Ok(()),
            Some(n) if token.as_deref() == Some(n.as_str()) => {
                anyhow::bail!("the server sent the same continue token twice: stopped paging")
            }
            Some(n) => token = Some(n),
        }
    }
}

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
            400 | 404 | 409 | 413 | 415 | 422 => bad(msg),
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

    /// `POST /v1/issuers/{name}/rotate`.
    pub async fn rotate_issuer(
        &self,
        issuer: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<crate::rotate::ca_rotation::request::RotateAnswer> {
        let encoded =
            percent_encoding::utf8_percent_encode(issuer, percent_encoding::NON_ALPHANUMERIC);
        let url = self.url(&format!("v1/issuers/{encoded}/rotate"))?;
        let resp = self.send(self.http.post(url).json(body)).await?;
        self.json(resp).await
    }

    /// `GET /v1/issuers`.
    pub async fn issuers(&self) -> anyhow::Result<crate::rotate::ca_rotation::request::StatusDoc> {
        let resp = self.send(self.http.get(self.url("v1/issuers")?)).await?;
        self.json(resp).await
    }

    /// `GET /v1/issuers/{name}`.
    pub async fn issuer(
        &self,
        issuer: &str,
    ) -> anyhow::Result<crate::rotate::ca_rotation::request::IssuerView> {
        let encoded =
            percent_encoding::utf8_percent_encode(issuer, percent_encoding::NON_ALPHANUMERIC);
        let resp = self
            .send(self.http.get(self.url(&format!("v1/issuers/{encoded}"))?))
            .await?;
        self.json(resp).await
    }

    /// `GET /v1/rotations/{id}`.
    pub async fn rotation(&self, id: uuid::Uuid) -> anyhow::Result<RotationView> {
        let resp = self
            .send(self.http.get(self.url(&format!("v1/rotations/{id}"))?))
            .await?;
        self.json(resp).await
    }

    /// `GET /v1/credentials?limit=N[&continue=TOKEN]`: one page.
    pub async fn credentials_page(
        &self,
        limit: u32,
        continue_token: Option<&str>,
    ) -> anyhow::Result<CredentialPage> {
        let mut url = self.url("v1/credentials")?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &limit.to_string());
            if let Some(t) = continue_token {
                q.append_pair("continue", t);
            }
        }
        let resp = self.send(self.http.get(url)).await?;
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

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use super::*;

    fn summary(name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "kind": "certificate", "state": "valid",
            "not_before": null, "not_after": null, "next_rotation_at": null,
            "next_rotation_reason": null, "source": "config", "managed": true,
            "schedule": null, "current_version": null, "failures": 0, "last_error": null,
        })
    }

    fn page(names: &[&str], next: Option<&str>) -> CredentialPage {
        CredentialPage {
            credentials: names
                .iter()
                .map(|n| serde_json::from_value(summary(n)).unwrap())
                .collect(),
            continue_token: next.map(String::from),
        }
    }

    #[test]
    fn the_last_page_has_no_usable_token() {
        let parse = |v: serde_json::Value| serde_json::from_value::<CredentialPage>(v).unwrap();
        let absent = parse(serde_json::json!({ "credentials": [summary("a")] }));
        assert_eq!(
            absent.next_page(),
            None,
            "a server without paging: one page"
        );
        let null = parse(serde_json::json!({ "credentials": [], "continue": null }));
        assert_eq!(null.next_page(), None);
        let empty = parse(serde_json::json!({ "credentials": [], "continue": "" }));
        assert_eq!(empty.next_page(), None);
        let more = parse(serde_json::json!({ "credentials": [], "continue": "abc" }));
        assert_eq!(more.next_page(), Some("abc"));
    }

    #[tokio::test]
    async fn pages_are_followed_and_handed_over_one_by_one() {
        let pages = HashMap::from([
            (None, page(&["a", "b"], Some("t1"))),
            (Some("t1".to_string()), page(&["c"], Some("t2"))),
            (Some("t2".to_string()), page(&["d"], None)),
        ]);
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let fetch_log = log.clone();
        follow_pages(
            |token: Option<String>| {
                fetch_log.lock().unwrap().push(format!("fetch {token:?}"));
                let p = pages.get(&token).cloned();
                async move { p.ok_or_else(|| anyhow::anyhow!("no page {token:?}")) }
            },
            |p: CredentialPage| {
                let names: Vec<_> = p.credentials.iter().map(|c| c.name.clone()).collect();
                log.lock()
                    .unwrap()
                    .push(format!("page {}", names.join(",")));
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "fetch None",
                "page a,b",
                "fetch Some(\"t1\")",
                "page c",
                "fetch Some(\"t2\")",
                "page d"
            ],
            "each page is handed over before the next is fetched"
        );
    }

    #[tokio::test]
    async fn a_repeated_token_stops_paging() {
        let mut fetches = 0;
        let err = follow_pages(
            |_| {
                fetches += 1;
                async { Ok(page(&["a"], Some("same"))) }
            },
            |_| Ok(()),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("same continue token twice"),
            "{err}"
        );
        assert_eq!(fetches, 2);
    }

    #[tokio::test]
    async fn the_client_asks_for_pages_with_limit_and_continue() {
        use axum::{Json, Router, extract::Query, routing::get};

        let seen = Arc::new(Mutex::new(Vec::<HashMap<String, String>>::new()));
        let recorded = seen.clone();
        let app = Router::new().route(
            "/v1/credentials",
            get(move |Query(q): Query<HashMap<String, String>>| {
                let recorded = recorded.clone();
                async move {
                    recorded.lock().unwrap().push(q.clone());
                    Json(match q.get("continue").map(String::as_str) {
                        None => serde_json::json!({
                            "credentials": [summary("a")], "continue": "x/y+z=",
                        }),
                        Some(_) => serde_json::json!({ "credentials": [summary("b")] }),
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let args = ClientArgs {
            server: Some(format!("http://{addr}")),
            cert: None,
            key: None,
            cacert: None,
        };
        let api = ApiClient::new(&args, Duration::from_secs(10)).unwrap();
        let mut names = Vec::new();
        follow_pages(
            |t| {
                let api = &api;
                async move { api.credentials_page(PAGE_LIMIT, t.as_deref()).await }
            },
            |p| {
                names.extend(p.credentials.into_iter().map(|c| c.name));
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(names, ["a", "b"]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].get("limit").map(String::as_str), Some("500"));
        assert_eq!(seen[0].get("continue"), None);
        assert_eq!(
            seen[1].get("continue").map(String::as_str),
            Some("x/y+z="),
            "the token goes back exactly as received"
        );
        assert_eq!(seen[1].get("limit").map(String::as_str), Some("500"));
    }
}
