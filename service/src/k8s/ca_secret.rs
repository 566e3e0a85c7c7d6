//! A `ca` issuer's CA in a Kubernetes Secret (`secret = { namespace, name }`,
//! keys `tls.crt` and `tls.key`, as `kubectl create secret tls` writes
//! them): the Secret implementation of `issue::CaStore`.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use secrecy::SecretString;

use super::error::call;
use crate::issue::{CaMaterial, CaPart, CaStore, SecretRef};

/// The Secret holding one issuer's CA.
#[derive(Clone)]
pub struct SecretCaStore {
    client: kube::Client,
    secret: SecretRef,
}

impl std::fmt::Debug for SecretCaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCaStore")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl SecretCaStore {
    /// The store for `secret`.
    pub fn new(client: kube::Client, secret: SecretRef) -> Self {
        Self { client, secret }
    }
}

#[async_trait]
impl CaStore for SecretCaStore {
    fn describe(&self) -> String {
        format!("Secret {}", self.secret)
    }

    fn field_of(&self, part: CaPart) -> (&'static str, String) {
        let key = match part {
            CaPart::Cert => "tls.crt",
            CaPart::Key => "tls.key",
        };
        ("secret", format!("{key} of Secret {}", self.secret))
    }

    async fn read_current(&self) -> Result<CaMaterial, (String, String)> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret.namespace);
        let what = format!("get secret {}", self.secret);
        let secret = call(&what, api.get(&self.secret.name))
            .await
            .map_err(|e| ("secret".to_string(), e.to_string()))?;
        let mut data = secret.data.unwrap_or_default();
        let mut take = |key: &str| {
            data.remove(key).map(|b| b.0).ok_or_else(|| {
                (
                    "secret".to_string(),
                    format!(
                        "Secret {} has no key `{key}` (it needs tls.crt and tls.key)",
                        self.secret
                    ),
                )
            })
        };
        let cert = take("tls.crt")?;
        let key = take("tls.key")?;
        let cert_pem = String::from_utf8(cert).map_err(|_| {
            (
                "secret".to_string(),
                format!("tls.crt of Secret {} is not PEM text", self.secret),
            )
        })?;
        // The key is wiped when dropped (SecretString); the bytes copy is too.
        let key = zeroize::Zeroizing::new(key);
        let key_pem = std::str::from_utf8(&key).map_err(|_| {
            (
                "secret".to_string(),
                format!("tls.key of Secret {} is not PEM text", self.secret),
            )
        })?;
        Ok(CaMaterial {
            cert_pem,
            key_pem: SecretString::from(key_pem.to_string()),
        })
    }
}
