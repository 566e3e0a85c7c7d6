//! Two consumers of file sinks that handshake with each other continuously
//! through rustls, each adopting a new certificate and key at once but its
//! trust bundle only seconds after it changed (a consumer that re-reads its
//! CA file lazily): the witness of "CA rotation without a failed handshake".
//!
//! The server reads `tls.crt`/`tls.key` and trusts `ca.crt` for client
//! certificates (mutual TLS); the client presents its own pair and trusts
//! its own `ca.crt`. After each handshake the server writes `ok`: the client
//! counts a handshake as good only once it reads it (with TLS 1.3 the server
//! checks the client certificate after the client finished). Handshakes
//! before both sides first had material are not counted.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

use crate::serve::{SinkSnapshot, read_sink};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

fn roots(pem: &str) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut r = rustls::RootCertStore::empty();
    for c in ders(pem) {
        r.add(c).map_err(|e| e.to_string())?;
    }
    Ok(Arc::new(r))
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())
}

/// What a sink holds as a lazy consumer sees it: its certificate and key
/// adopted [`KEY_LAG`] after they changed, its trust bundle `lag` after it
/// changed (a bundle watched less eagerly than the serving pair, as with a
/// process that re-reads its CA file on a timer).
struct Lagged {
    dir: PathBuf,
    lag: Duration,
    seen: Vec<(Instant, SinkSnapshot)>,
}

/// How late a consumer adopts a new certificate and key.
pub const KEY_LAG: Duration = Duration::from_millis(200);

impl Lagged {
    fn new(dir: &Path, lag: Duration) -> Self {
        Self {
            dir: dir.to_path_buf(),
            lag,
            seen: Vec::new(),
        }
    }

    /// Reads the sink; returns what is in force: the pair of the newest
    /// snapshot seen at least [`KEY_LAG`] ago, the bundle of the newest seen
    /// at least `lag` ago.
    fn poll(&mut self) -> Option<SinkSnapshot> {
        if let Some(s) = read_sink(&self.dir) {
            let changed = self
                .seen
                .last()
                .is_none_or(|(_, l)| l.cert != s.cert || l.key != s.key || l.ca != s.ca);
            if changed {
                self.seen.push((Instant::now(), s));
            }
        }
        while self.seen.len() > 1 && self.seen[1].0.elapsed() >= self.lag {
            self.seen.remove(0);
        }
        let (at, bundle) = self.seen.first()?;
        if at.elapsed() < self.lag {
            return None;
        }
        let pair = self
            .seen
            .iter()
            .rev()
            .find(|(at, _)| at.elapsed() >= KEY_LAG)?;
        Some(SinkSnapshot {
            ca: bundle.ca.clone(),
            ..pair.1.clone()
        })
    }
}

/// The two consumers, running until dropped.
pub struct HandshakeLoop {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Handshakes completed (both sides accepted).
    pub good: Arc<AtomicU64>,
    /// Failed handshakes, with why (the client's view).
    pub failures: Arc<Mutex<Vec<String>>>,
    /// Where the server consumer listens (`127.0.0.1:PORT`).
    pub addr: String,
    /// The trust bundle each consumer has in force (server, client).
    pub in_force: Arc<Mutex<(String, String)>>,
    listener: Option<TcpListener>,
    server_dir: PathBuf,
    client_dir: PathBuf,
    lag: Duration,
    server_name: String,
}

impl HandshakeLoop {
    /// Binds the server consumer's port (for a probe in the config) without
    /// starting: `server_dir` and `client_dir` are the sinks, `lag` how long
    /// each waits before adopting a change, `server_name` the name the
    /// client checks.
    pub fn bind(server_dir: &Path, client_dir: &Path, lag: Duration, server_name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr").to_string();
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            good: Arc::default(),
            failures: Arc::default(),
            addr,
            in_force: Arc::default(),
            listener: Some(listener),
            server_dir: server_dir.to_path_buf(),
            client_dir: client_dir.to_path_buf(),
            lag,
            server_name: server_name.to_string(),
        }
    }

    /// Starts both consumers.
    pub fn start(&mut self) {
        let listener = self.listener.take().expect("started once");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, dir, lag, force) = (
            self.stop.clone(),
            self.server_dir.clone(),
            self.lag,
            self.in_force.clone(),
        );
        self.threads.push(std::thread::spawn(move || {
            serve(listener, dir, lag, stop, force)
        }));
        let (stop, dir, addr, name) = (
            self.stop.clone(),
            self.client_dir.clone(),
            self.addr.clone(),
            self.server_name.clone(),
        );
        let seen = Seen {
            good: self.good.clone(),
            failures: self.failures.clone(),
            in_force: self.in_force.clone(),
        };
        self.threads.push(std::thread::spawn(move || {
            connect(addr, dir, lag, name, stop, seen)
        }));
    }

    /// Waits until both consumers have `bundle_pem` in force and have
    /// handshaken a few more times on it.
    pub async fn settle_on(&self, bundle_pem: &str, patience: Duration) {
        let want = bundle_pem.trim().to_string();
        let in_force = self.in_force.clone();
        crate::wait::eventually("both consumers to trust the bundle", patience, async || {
            let f = in_force.lock().unwrap().clone();
            if f.0.trim() == want && f.1.trim() == want {
                Ok(())
            } else {
                Err(f)
            }
        })
        .await;
        let good = self.good.clone();
        let from = good.load(Ordering::SeqCst);
        crate::wait::eventually("more handshakes on it", patience, async || {
            let n = good.load(Ordering::SeqCst);
            if n >= from + 10 { Ok(()) } else { Err(n) }
        })
        .await;
    }

    /// Handshakes so far: (good, failed).
    pub fn counts(&self) -> (u64, usize) {
        (
            self.good.load(Ordering::SeqCst),
            self.failures.lock().unwrap().len(),
        )
    }
}

impl Drop for HandshakeLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn server_config(s: &SinkSnapshot) -> Result<Arc<rustls::ServerConfig>, String> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&s.ca)?, provider())
            .build()
            .map_err(|e| e.to_string())?;
    let c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(ders(&s.cert), key(&s.key)?)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(c))
}

fn client_config(s: &SinkSnapshot) -> Result<Arc<rustls::ClientConfig>, String> {
    let c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(&s.ca)?)
        .with_client_auth_cert(ders(&s.cert), key(&s.key)?)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(c))
}

struct Seen {
    good: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    in_force: Arc<Mutex<(String, String)>>,
}

fn serve(
    listener: TcpListener,
    dir: PathBuf,
    lag: Duration,
    stop: Arc<AtomicBool>,
    in_force: Arc<Mutex<(String, String)>>,
) {
    let mut lagged = Lagged::new(&dir, lag);
    let mut current: Option<(String, Arc<rustls::ServerConfig>)> = None;
    while !stop.load(Ordering::SeqCst) {
        if let Some(s) = lagged.poll() {
            let id = format!("{}{}{}", s.cert, s.key, s.ca);
            if current.as_ref().is_none_or(|(c, _)| *c != id) {
                match server_config(&s) {
                    Ok(cfg) => {
                        in_force.lock().unwrap().0 = s.ca.clone();
                        current = Some((id, cfg));
                    }
                    Err(e) => eprintln!("server consumer: unusable material: {e}"),
                }
            }
        }
        match listener.accept() {
            Ok((mut tcp, _)) => {
                let Some((_, cfg)) = &current else { continue };
                let _ = tcp.set_nonblocking(false);
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
                let Ok(mut conn) = rustls::ServerConnection::new(cfg.clone()) else {
                    continue;
                };
                let ok = (|| {
                    while conn.is_handshaking() {
                        conn.complete_io(&mut tcp)?;
                    }
                    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                    tls.write_all(b"ok")?;
                    tls.flush()
                })();
                let _ = ok;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn connect(
    addr: String,
    dir: PathBuf,
    lag: Duration,
    name: String,
    stop: Arc<AtomicBool>,
    seen: Seen,
) {
    let Seen {
        good,
        failures,
        in_force,
    } = seen;
    let mut lagged = Lagged::new(&dir, lag);
    let mut current: Option<(String, Arc<rustls::ClientConfig>)> = None;
    let server_name = ServerName::try_from(name).expect("a server name");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(s) = lagged.poll() {
            let id = format!("{}{}{}", s.cert, s.key, s.ca);
            if current.as_ref().is_none_or(|(c, _)| *c != id) {
                match client_config(&s) {
                    Ok(cfg) => {
                        in_force.lock().unwrap().1 = s.ca.clone();
                        current = Some((id, cfg));
                    }
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("client material: {e}")),
                }
            }
        }
        let Some((_, cfg)) = &current else { continue };
        let attempt = || -> Result<(), String> {
            let mut tcp = TcpStream::connect(&addr).map_err(|e| format!("connect: {e}"))?;
            tcp.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            let mut conn = rustls::ClientConnection::new(cfg.clone(), server_name.clone())
                .map_err(|e| e.to_string())?;
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf)
                .map_err(|e| format!("handshake: {e}"))?;
            (&buf == b"ok")
                .then_some(())
                .ok_or_else(|| "the server did not answer ok".to_string())
        };
        match attempt() {
            Ok(()) => {
                good.fetch_add(1, Ordering::SeqCst);
            }
            // The server consumer has no material yet: not a handshake.
            Err(e) if good.load(Ordering::SeqCst) == 0 => {
                let _ = e;
            }
            Err(e) => failures.lock().unwrap().push(e),
        }
    }
}
