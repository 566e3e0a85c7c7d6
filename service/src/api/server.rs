//! Listeners: the admin API over (mutual) TLS, and the plain-HTTP metrics port.
//!
//! The accept loop is ours (hyper-util over tokio-rustls) rather than a
//! framework's so that each connection's verified client certificate can be
//! attached to its requests, connections are admitted, tracked and closed by
//! one mechanism for both listeners ([`super::connections`]: caps per
//! listener and per peer, idle and unauthenticated connections closed first,
//! handshake and header-read deadlines, summarised refusal logs), and
//! shutdown drains in-flight requests.

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    auth::{self, CertIdentity, PeerInfo},
    config::{ApiConfig, RoleMapping},
    connections::{Admitted, Conn, LOG_WINDOW, Limits, Refusal, Registry},
    error::ApiError,
    middleware::{MAX_HEADER_BYTES, MAX_HEADERS},
    router,
    state::ApiState,
};

/// A client has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The metrics listener's limits (Prometheus and kubelet probes).
const METRICS_LIMITS: Limits = Limits {
    max_connections: 256,
    max_per_peer: 64,
    handshake_timeout: Duration::from_secs(10),
    header_read_timeout: Duration::from_secs(10),
    busy_timeout: Duration::from_secs(70),
};

/// The HTTP/1 parser's buffer: heads up to this size reach the head limits
/// (`middleware::limit_head`), which answer 414/431 as problem documents;
/// only larger ones get the parser's bare 431.
const PARSER_BUFFER: usize = 4 * MAX_HEADER_BYTES;

/// TLS on a listener, and what tells a certificate that allows nothing.
struct Tls {
    config: Arc<ServerConfig>,
    roles: Vec<RoleMapping>,
    /// Bearer tokens are accepted: a certificate without a role may still be allowed.
    bearer: bool,
}

impl Tls {
    fn no_role(&self, cert: Option<&CertIdentity>) -> bool {
        !self.bearer
            && cert.is_none_or(|c| auth::role_of(&self.roles, c.common_name.as_deref()).is_none())
    }
}

/// In-flight requests get this long to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The running servers: where they listen, and their task.
#[derive(Debug)]
pub struct Running {
    /// The admin API's bound address (useful with port 0), if it was configured.
    pub api_addr: Option<SocketAddr>,
    /// The metrics listener's bound address, if one was configured.
    pub metrics_addr: Option<SocketAddr>,
    task: JoinHandle<Result<(), ApiError>>,
}

impl Running {
    /// Waits until the servers have stopped (after the shutdown token fires).
    pub async fn wait(self) -> Result<(), ApiError> {
        self.task
            .await
            .map_err(|e| ApiError::Server(format!("server task ended abnormally: {e}")))?
    }
}

/// Binds and serves the admin API and/or the metrics listener until `shutdown`.
pub async fn serve(
    state: ApiState,
    config: Option<&ApiConfig>,
    metrics_listen: Option<&str>,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    start(state, config, metrics_listen, shutdown)
        .await?
        .wait()
        .await
}

/// Binds the listeners (`[api]`, `[metrics] listen`) and serves in the background.
pub async fn start(
    state: ApiState,
    config: Option<&ApiConfig>,
    metrics_listen: Option<&str>,
    shutdown: CancellationToken,
) -> Result<Running, ApiError> {
    let mut tasks = Vec::new();
    let mut api_addr = None;
    if let Some(config) = config {
        let tls = if config.insecure_plain_http {
            tracing::warn!(
                listen = %config.listen,
                "!!! api.insecure_plain_http = true: the admin API is served WITHOUT TLS: no client \
                 certificates, anyone who can reach {} reads the inventory and audit log as an \
                 anonymous viewer, and bearer tokens travel in clear text. Use this only on a \
                 development machine. !!!",
                config.listen
            );
            None
        } else {
            Some(Arc::new(Tls {
                config: Arc::new(tls_config(config)?),
                roles: config.roles.clone(),
                bearer: config.token_review,
            }))
        };
        if config.token_review && state.kube.is_none() {
            return Err(ApiError::NoKubeClient);
        }
        let listener = bind("api.listen", &config.listen).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| ApiError::Server(e.to_string()))?;
        api_addr = Some(addr);
        let app = router::router(state.clone(), config, shutdown.clone())?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            "admin API listening on {scheme}://{addr} (client certificates {})",
            if tls.is_none() {
                "OFF"
            } else if config.token_review {
                "optional; bearer tokens via TokenReview"
            } else {
                "required"
            }
        );
        let limits = Limits {
            max_connections: config.max_connections,
            max_per_peer: config.max_connections_per_peer,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_read_timeout: config.header_read_timeout.get(),
            busy_timeout: config.request_timeout.get() + config.header_read_timeout.get(),
        };
        tasks.push(tokio::spawn(accept_loop(
            listener,
            tls,
            app,
            Registry::new("api", limits),
            shutdown.clone(),
        )));
    }
    let mut metrics_addr = None;
    if let Some(l) = metrics_listen {
        let listener = bind("metrics.listen", l).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| ApiError::Server(e.to_string()))?;
        metrics_addr = Some(addr);
        tracing::info!("metrics listening on http://{addr} (/metrics, /healthz, /readyz)");
        tasks.push(tokio::spawn(accept_loop(
            listener,
            None,
            router::metrics_router(state),
            Registry::new("metrics", METRICS_LIMITS),
            shutdown.clone(),
        )));
    }
    let task = tokio::spawn(async move {
        for t in tasks {
            t.await.map_err(|e| ApiError::Server(e.to_string()))??;
        }
        Ok(())
    });
    Ok(Running {
        api_addr,
        metrics_addr,
        task,
    })
}

async fn bind(field: &'static str, listen: &str) -> Result<TcpListener, ApiError> {
    let addr: SocketAddr = listen.parse().map_err(|_| ApiError::BadListen {
        field,
        value: listen.to_string(),
    })?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind {
            field,
            addr,
            source,
        })
}

/// The rustls server configuration: our certificate, client certificates
/// verified against `client_ca` (required unless token review is on).
pub fn tls_config(config: &ApiConfig) -> Result<ServerConfig, ApiError> {
    let cert_path = config
        .tls_cert
        .as_deref()
        .ok_or(ApiError::Missing("tls_cert"))?;
    let key_path = config
        .tls_key
        .as_deref()
        .ok_or(ApiError::Missing("tls_key"))?;
    let ca_path = config
        .client_ca
        .as_deref()
        .ok_or(ApiError::Missing("client_ca"))?;
    let chain = read_certs("tls_cert", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| ApiError::TlsFile {
        field: "tls_key",
        path: key_path.to_path_buf(),
        message: format!("no usable PEM private key: {e}"),
    })?;
    let mut roots = RootCertStore::empty();
    for c in read_certs("client_ca", ca_path)? {
        roots.add(c).map_err(|e| ApiError::TlsFile {
            field: "client_ca",
            path: ca_path.to_path_buf(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let provider = Arc::new(server_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = if config.token_review {
        verifier.allow_unauthenticated()
    } else {
        verifier
    }
    .build()
    .map_err(|e| ApiError::Tls(format!("client certificate verifier: {e}")))?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ApiError::TlsFile {
            field: "tls_key",
            path: key_path.to_path_buf(),
            message: format!("does not go with {}: {e}", cert_path.display()),
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    server.ignore_client_order = true;
    Ok(server)
}

/// aws-lc-rs with AES-128-GCM preferred: 128-bit security, and about a third
/// less AES work per byte than AES-256 on the large inventory responses.
/// Every default suite stays available; only the server's order changes.
fn server_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    };
    provider.cipher_suites.sort_by_key(rank);
    provider
}

fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ApiError> {
    let bad = |message: String| ApiError::TlsFile {
        field,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("contains no PEM certificate".into()));
    }
    Ok(certs)
}

/// Accepts connections until `shutdown`, then drains in-flight requests.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    app: Router,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(PARSER_BUFFER)
        .max_headers(2 * MAX_HEADERS);
    builder.http2().max_header_list_size(PARSER_BUFFER as u32);
    let builder = Arc::new(builder);
    let mut summaries = tokio::time::interval(LOG_WINDOW);
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = summaries.tick() => {
                registry.flush_log();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admitted = match registry.admit(peer.ip()) {
            Ok(a) => a,
            Err(why) => {
                let detail = match why {
                    Refusal::PeerLimit => {
                        "this peer has max_connections_per_peer connections, all busy"
                    }
                    _ => "max_connections connections are open, all busy",
                };
                registry.refused(peer.ip(), why, &detail);
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let connection = serve_connection(
            tcp,
            peer,
            admitted,
            tls.clone(),
            app.clone(),
            builder.clone(),
            graceful.watcher(),
            registry.clone(),
        );
        tokio::spawn(connection);
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("in-flight admin API requests did not finish within {DRAIN_TIMEOUT:?}; closing them");
        }
    }
    Ok(())
}

/// Serves one admitted connection until it ends, is closed to make room,
/// or misses its deadline (the handshake, or the next request's headers).
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    tls: Option<Arc<Tls>>,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    registry: Arc<Registry>,
) {
    let conn = admitted.conn.clone();
    let is_tls = tls.is_some();
    let serve = async {
        match tls {
            None => {
                let svc = TowerToHyperService::new(tracked(app, conn.clone(), PeerInfo::default()));
                let c = builder
                    .serve_connection(TokioIo::new(tcp), svc)
                    .into_owned();
                if let Err(e) = watcher.watch(c).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
            Some(tls) => {
                let started = Instant::now();
                let acceptor = rustls::server::Acceptor::default();
                let hello = match tokio_rustls::LazyConfigAcceptor::new(acceptor, tcp).await {
                    Ok(h) => h,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%peer, "connection closed before a ClientHello");
                        return;
                    }
                    Err(e) => {
                        metrics::counter!("rekey_api_tls_handshake_failures_total").increment(1);
                        registry.refused(
                            peer.ip(),
                            Refusal::Tls,
                            &format_args!("TLS handshake refused: {e}"),
                        );
                        return;
                    }
                };
                conn.hello();
                let stream = match hello.into_stream(tls.config.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        metrics::counter!("rekey_api_tls_handshake_failures_total").increment(1);
                        registry.refused(
                            peer.ip(),
                            Refusal::Tls,
                            &format_args!("TLS handshake refused: {e}"),
                        );
                        return;
                    }
                };
                let cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| auth::identity_from_der(c));
                conn.open(tls.no_role(cert.as_ref()));
                tracing::debug!(%peer, subject = ?cert.as_ref().map(|c| &c.subject), elapsed = ?started.elapsed(), "TLS handshake done");
                let svc = TowerToHyperService::new(tracked(app, conn.clone(), PeerInfo { cert }));
                let c = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned();
                if let Err(e) = watcher.watch(c).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        }
    };
    let limits = *registry.limits();
    tokio::select! {
        () = serve => {}
        () = conn.evicted() => {}
        why = conn.expired(&limits) => {
            if why == Refusal::HandshakeTimeout && is_tls {
                metrics::counter!("rekey_api_tls_handshake_failures_total").increment(1);
            }
            match why {
                Refusal::HandshakeTimeout => registry.refused(peer.ip(), why, &"no TLS handshake (or first request) within the handshake timeout"),
                _ => tracing::debug!(%peer, "closing a connection: no complete request headers within header_read_timeout"),
            }
        }
    }
    drop(admitted);
}

/// The router with this connection's peer facts added to every request, and
/// each request counted in flight on the connection until its response body
/// has been sent (or dropped).
fn tracked(
    app: Router,
    conn: Arc<Conn>,
    peer: PeerInfo,
) -> impl tower::Service<
    axum::http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    with_peer(app, peer).map_future(move |fut| {
        let in_flight = conn.begin();
        async move {
            let resp: axum::response::Response = fut.await?;
            Ok(resp.map(|body| {
                axum::body::Body::new(body.map_err(move |e| {
                    let _ = &in_flight;
                    e
                }))
            }))
        }
    })
}

/// The router with this connection's peer facts added to every request.
fn with_peer(
    app: Router,
    peer: PeerInfo,
) -> tower::util::MapRequest<
    Router,
    impl FnMut(axum::http::Request<hyper::body::Incoming>) -> axum::http::Request<hyper::body::Incoming>
    + Clone,
> {
    tower::ServiceExt::map_request(
        app,
        move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            req
        },
    )
}
