//! Listeners: the admin API over (mutual) TLS, and the plain-HTTP metrics port.
//!
//! The accept loop is ours (hyper-util over tokio-rustls) rather than a
//! framework's so that each connection's verified client certificate can be
//! attached to its requests, connections are capped, handshakes time out, and
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
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{auth::PeerInfo, config::ApiConfig, error::ApiError, router, state::ApiState};

/// A client has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
            Some(TlsAcceptor::from(Arc::new(tls_config(config)?)))
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
        let max_conns = Arc::new(Semaphore::new(config.max_connections));
        tasks.push(tokio::spawn(accept_loop(
            listener,
            tls,
            app,
            max_conns,
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
            Arc::new(Semaphore::new(256)),
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
    tls: Option<TlsAcceptor>,
    app: Router,
    max_conns: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
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
        let Ok(permit) = max_conns.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many open connections; closing a new one");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let svc = TowerToHyperService::new(with_peer(app, PeerInfo::default()));
                    let conn = builder
                        .serve_connection(TokioIo::new(tcp), svc)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                Some(acceptor) => {
                    let started = Instant::now();
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                metrics::counter!("rekey_api_tls_handshake_failures_total")
                                    .increment(1);
                                tracing::info!(%peer, error = %e, "TLS handshake refused");
                                return;
                            }
                            Err(_) => {
                                metrics::counter!("rekey_api_tls_handshake_failures_total")
                                    .increment(1);
                                tracing::info!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| super::auth::identity_from_der(c));
                    tracing::debug!(%peer, subject = ?cert.as_ref().map(|c| &c.subject), elapsed = ?started.elapsed(), "TLS handshake done");
                    let svc = TowerToHyperService::new(with_peer(app, PeerInfo { cert }));
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
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
