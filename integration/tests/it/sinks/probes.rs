//! Consumer probes through the real binary: a TLS server (rustls, in this
//! process) stands for the consumer of a file-sink certificate. While it
//! keeps serving the certificate it loaded first, the credential turns
//! `stale-consumer` once `probe_grace` has passed after the next publish;
//! when it reloads from the sink, the state clears. `rekey status --json`
//! shows `served_fingerprint` and `served_checked_at`.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use rekey_integration::{
    bin::{outcome, rekey, run},
    serve::Scenario,
    wait::{Text, eventually},
};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Serves the sink's certificate: loaded once and kept (`reload` false),
/// or loaded afresh at every handshake (`reload` true).
#[derive(Debug)]
struct Consumer {
    dir: PathBuf,
    reload: Mutex<bool>,
    kept: Mutex<Option<Arc<CertifiedKey>>>,
    sni: Mutex<Vec<String>>,
}

impl Consumer {
    fn load(&self) -> Option<Arc<CertifiedKey>> {
        let crt = std::fs::read(self.dir.join("tls.crt")).ok()?;
        let key = std::fs::read(self.dir.join("tls.key")).ok()?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
            .collect::<Result<_, _>>()
            .ok()?;
        let key = PrivateKeyDer::from_pem_slice(&key).ok()?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing = provider.key_provider.load_private_key(key).ok()?;
        Some(Arc::new(CertifiedKey::new(certs, signing)))
    }
}

impl ResolvesServerCert for Consumer {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            self.sni.lock().unwrap().push(name.to_string());
        }
        if *self.reload.lock().unwrap() {
            return self.load();
        }
        let mut kept = self.kept.lock().unwrap();
        if kept.is_none() {
            *kept = self.load();
        }
        kept.clone()
    }
}

/// Accepts TLS connections on 127.0.0.1 until the runtime ends; returns the port.
async fn serve_tls(consumer: Arc<Consumer>) -> u16 {
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(consumer);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    port
}

fn status(url: &str) -> Value {
    let out = run(rekey().args(["status", "--json", "--database-url", url]));
    let (code, stdout, stderr) = outcome(&out);
    assert!(code == 0 || code == 1, "rekey status: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The probed certificate's row (the issuer's CA, `ca/default`, is listed too).
/// `Null` until the service has declared it.
fn web(doc: &Value) -> Value {
    doc["credentials"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "cert/probe/web"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_serving_the_old_certificate_is_stale_and_one_that_reloads_clears_it() {
    let s = Scenario::new().await;
    let dir = s.path("sinks/web");
    let consumer = Arc::new(Consumer {
        dir: dir.clone(),
        reload: Mutex::new(false),
        kept: Mutex::new(None),
        sni: Mutex::new(Vec::new()),
    });
    let port = serve_tls(consumer.clone()).await;
    let config = format!(
        "{}[[certificate]]\nname = \"cert/probe/web\"\ndns_names = [\"web.probe.svc\", \"web\"]\n\
         lifetime = \"16s\"\nrenew_fraction = 0.5\nprobe = \"127.0.0.1:{port}\"\nprobe_grace = \"2s\"\n\
         sink = {{ kind = \"file\", dir = \"{}\" }}\n",
        s.config_head("max_jitter = \"0s\"\nprobe_interval = \"1s\"\nprobe_timeout = \"2s\""),
        dir.display()
    );
    let config = s.write_config("rekey.toml", &config);
    let server = s.serve(&config, &[]);
    let pool = s.db.pool().clone();
    let fingerprint_of = async |version: i64| -> String {
        sqlx::query_scalar("SELECT fingerprint FROM credential_versions WHERE id = $1")
            .bind(version)
            .fetch_one(&pool)
            .await
            .unwrap()
    };

    // The consumer keeps the first version it loaded; rekey rotates on.
    let stale = eventually(
        "the credential to turn stale-consumer",
        Duration::from_secs(60),
        async || {
            let doc = status(&s.db.url);
            let row = web(&doc);
            if row["state"] == "stale-consumer" {
                Ok(row)
            } else {
                Err(Text(format!("{row}; log:\n{}", server.log())))
            }
        },
    )
    .await;
    let kept = consumer
        .kept
        .lock()
        .unwrap()
        .clone()
        .expect("the consumer loaded a certificate");
    let kept_fp = hex::encode(Sha256::digest(kept.end_entity_cert().unwrap()));
    assert_eq!(stale["served_fingerprint"], kept_fp.as_str(), "{stale}");
    assert!(stale["served_checked_at"].is_string(), "{stale}");
    let (current, versions): (i64, i64) = sqlx::query_as(
        "SELECT current_version, (SELECT count(*) FROM credential_versions WHERE status IN ('published', 'superseded'))
         FROM credentials WHERE name = 'cert/probe/web'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(versions >= 2, "rotated at least once");
    assert_ne!(fingerprint_of(current).await, kept_fp);
    assert!(
        consumer
            .sni
            .lock()
            .unwrap()
            .iter()
            .all(|n| n == "web.probe.svc"),
        "SNI is the first DNS name"
    );
    let aki: Option<String> = sqlx::query_scalar(
        "SELECT served_issuer_key_id FROM credentials WHERE name = 'cert/probe/web'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        aki.is_some_and(|a| a.len() >= 40),
        "the served leaf's AKI is recorded"
    );

    // The consumer reloads: the next probe clears the state.
    *consumer.reload.lock().unwrap() = true;
    let cleared = eventually(
        "the stale-consumer state to clear",
        Duration::from_secs(30),
        async || {
            let row = web(&status(&s.db.url));
            let current: i64 = sqlx::query_scalar(
                "SELECT current_version FROM credentials WHERE name = 'cert/probe/web'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            let fp = fingerprint_of(current).await;
            if row["state"] == "valid" && row["served_fingerprint"] == fp.as_str() {
                Ok(row)
            } else {
                Err(Text(format!("{row} (current {fp})")))
            }
        },
    )
    .await;
    assert!(cleared["served_checked_at"].is_string());
}
