//! The etcd connection flags shared by `rekey etcd migrate` and
//! `rekey etcd rotate-key --retire`: flags first, then `[etcd]`, then
//! etcdctl's default.

use std::path::PathBuf;

use crate::{error::BadInput, etcd::EtcdConfig};

/// etcd's default client URL (as etcdctl's).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

/// The etcd connection from the flags, then `[etcd]`, then the default.
pub fn etcd_from_flags(
    endpoints: &[String],
    cacert: Option<&PathBuf>,
    cert_key: (Option<&PathBuf>, Option<&PathBuf>),
    from: &EtcdConfig,
) -> Result<EtcdConfig, BadInput> {
    let endpoints = if !endpoints.is_empty() {
        endpoints.to_vec()
    } else if !from.endpoints.is_empty() {
        from.endpoints.clone()
    } else {
        vec![DEFAULT_ENDPOINT.to_string()]
    };
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(BadInput::msg(format!(
                "--endpoints: `{e}` is not an http:// or https:// URL"
            )));
        }
    }
    let (client_cert, client_key) = match cert_key {
        (Some(c), Some(k)) => (Some(c.clone()), Some(k.clone())),
        _ => (from.client_cert.clone(), from.client_key.clone()),
    };
    Ok(EtcdConfig {
        endpoints,
        ca_cert: cacert.cloned().or(from.ca_cert.clone()),
        client_cert,
        client_key,
        ..from.clone()
    })
}
