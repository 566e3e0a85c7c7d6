//! Connecting to etcd with etcd-client (TLS client certificates supported).

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::settings::EtcdConfig;

/// Why etcd could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A TLS file could not be read.
    #[error("etcd.{field}: cannot read {path}: {source}")]
    Read {
        /// The config field.
        field: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoints did not answer.
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect {
        /// The endpoints tried.
        endpoints: String,
        /// The client's error.
        source: etcd_client::Error,
    },
}

/// Connects to the configured endpoints.
pub async fn connect(config: &EtcdConfig) -> Result<Client, ConnectError> {
    // Zeroizing: our copy of the client key is wiped once the TLS client has its own.
    let read = |field: &'static str, p: &std::path::Path| {
        std::fs::read(p)
            .map(zeroize::Zeroizing::new)
            .map_err(|source| ConnectError::Read {
                field,
                path: p.display().to_string(),
                source,
            })
    };
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    let wants_tls = config.ca_cert.is_some()
        || config.client_cert.is_some()
        || config.endpoints.iter().any(|e| e.starts_with("https://"));
    if wants_tls {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &config.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(read("ca_cert", ca)?));
        }
        if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
            tls = tls.identity(Identity::from_pem(
                read("client_cert", cert)?,
                read("client_key", key)?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    Client::connect(&config.endpoints, Some(opts))
        .await
        .map_err(|source| ConnectError::Connect {
            endpoints: config.endpoints.join(","),
            source,
        })
}
