//! A `ca` issuer's CA in a Kubernetes Secret (`secret = { namespace, name }`,
//! keys `tls.crt` and `tls.key`, as `kubectl create secret tls` writes
//! them): the Secret implementation of `issue::CaStore`. A CA rotation
//! keeps the CA it moves to in `next.crt`/`next.key` and, once promoted,
//! the replaced one in `previous.crt`/`previous.key` of the same Secret:
//! every change is one update guarded by the Secret's resourceVersion.

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
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

    fn api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.secret.namespace)
    }

    async fn get(&self) -> Result<Secret, String> {
        call(
            format!("get secret {}", self.secret),
            self.api().get(&self.secret.name),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Reads the Secret, changes its data with `edit` (which answers whether
    /// it changed anything) and replaces it, guarded by its resourceVersion.
    async fn update(
        &self,
        edit: impl Fn(&mut std::collections::BTreeMap<String, ByteString>) -> bool,
    ) -> Result<(), String> {
        let mut secret = self.get().await?;
        let data = secret.data.get_or_insert_with(Default::default);
        if !edit(data) {
            return Ok(());
        }
        call(
            format!("update secret {}", self.secret),
            self.api()
                .replace(&self.secret.name, &PostParams::default(), &secret),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

fn text(data: &std::collections::BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
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

    async fn read_next(&self) -> Result<Option<CaMaterial>, String> {
        let secret = self.get().await?;
        let data = secret.data.unwrap_or_default();
        match (text(&data, "next.crt"), text(&data, "next.key")) {
            (Some(cert_pem), Some(key)) => Ok(Some(CaMaterial {
                cert_pem,
                key_pem: SecretString::from(key),
            })),
            _ => Ok(None),
        }
    }

    async fn write_next(&self, ca: &CaMaterial) -> Result<(), String> {
        use secrecy::ExposeSecret;
        let key = ca.key_pem.expose_secret().as_bytes().to_vec();
        self.update(|d| {
            d.insert(
                "next.crt".into(),
                ByteString(ca.cert_pem.as_bytes().to_vec()),
            );
            d.insert("next.key".into(), ByteString(key.clone()));
            true
        })
        .await
    }

    async fn discard_next(&self) -> Result<(), String> {
        self.update(|d| {
            let a = d.remove("next.crt").is_some();
            let b = d.remove("next.key").is_some();
            a || b
        })
        .await
    }

    async fn promote_next(&self) -> Result<(), String> {
        self.update(|d| {
            let (Some(cert), Some(key)) = (d.remove("next.crt"), d.remove("next.key")) else {
                return false;
            };
            if let (Some(c), Some(k)) = (d.remove("tls.crt"), d.remove("tls.key")) {
                d.insert("previous.crt".into(), c);
                d.insert("previous.key".into(), k);
            }
            d.insert("tls.crt".into(), cert);
            d.insert("tls.key".into(), key);
            true
        })
        .await
    }
}
