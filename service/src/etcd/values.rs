//! Stored value formats: classifying what etcd holds and opening it.
//!
//! ```text
//!   plaintext   k8s\x00<protobuf runtime.Unknown>   or   {"kind":...} (JSON)
//!   aescbc      k8s:enc:aescbc:v1:<key>:    IV(16) ‖ AES-CBC(PKCS#7)
//!   aesgcm      k8s:enc:aesgcm:v1:<key>:    nonce(12) ‖ ciphertext ‖ tag(16), AAD = etcd key
//!   secretbox   k8s:enc:secretbox:v1:<key>: nonce(24) ‖ tag(16) ‖ XSalsa20 ciphertext
//!   kms         k8s:enc:kms:v1:<name>: / k8s:enc:kms:v2:<name>:  (needs the plugin)
//! ```
//!
//! [`Keyring`] holds the transformers the API server would use for one
//! resource, in its order, and [`Keyring::judge`] decides everything about one
//! value: its format, whether it is stale, whether the configured keys open
//! it into a Kubernetes object. It is pure: no I/O, no clock.

use aes::{Aes128, Aes192, Aes256};
use aes_gcm::{
    AesGcm, KeyInit,
    aead::{Aead, Payload, consts::U12},
};
use cbc::cipher::{BlockModeDecrypt, KeyIvInit, block_padding::Pkcs7};
use crypto_secretbox::XSalsa20Poly1305;
use zeroize::Zeroizing;

use super::encryption::{EncryptionConfiguration, GroupResource, ProviderKind, Transformer};
use crate::secret::ExposeSecret;

/// The protobuf envelope magic of Kubernetes storage.
pub const PROTOBUF_MAGIC: &[u8] = b"k8s\x00";
/// Every encrypted value starts with this.
pub const ENCRYPTED_MAGIC: &[u8] = b"k8s:enc:";

/// How a plaintext value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainFormat {
    /// `k8s\x00` + protobuf.
    Protobuf,
    /// A JSON object (custom resources, old clusters).
    Json,
}

/// What a value's bytes say it is, before any key is tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Not encrypted.
    Plaintext(PlainFormat),
    /// `k8s:enc:<provider>:<version>:<key>:`.
    Encrypted {
        /// Provider named in the prefix.
        provider: ProviderKind,
        /// `v1` (or `v2` for kms).
        version: String,
        /// Key (or KMS plugin) name.
        key: String,
    },
    /// `k8s:enc:` with a provider this version does not know.
    UnknownProvider(String),
    /// Neither plaintext nor encrypted.
    Unrecognised,
}

impl Format {
    /// The provider for counting (`identity` for plaintext).
    pub fn provider(&self) -> Option<ProviderKind> {
        match self {
            Self::Plaintext(_) => Some(ProviderKind::Identity),
            Self::Encrypted { provider, .. } => Some(*provider),
            Self::UnknownProvider(_) | Self::Unrecognised => None,
        }
    }

    /// `provider:key` (kms: `kms:v2:name`), `identity`, or `unknown`.
    pub fn label(&self) -> String {
        match self {
            Self::Plaintext(_) => "identity".into(),
            Self::Encrypted {
                provider: ProviderKind::Kms,
                version,
                key,
            } => format!("kms:{version}:{key}"),
            Self::Encrypted { provider, key, .. } => format!("{provider}:{key}"),
            Self::UnknownProvider(p) => format!("{p}:?"),
            Self::Unrecognised => "unknown".into(),
        }
    }
}

/// Reads the format from the bytes alone (key names end at the first `:`).
pub fn classify(value: &[u8]) -> Format {
    if let Some(rest) = value.strip_prefix(ENCRYPTED_MAGIC) {
        let mut parts = rest.splitn(4, |b| *b == b':');
        let provider = parts.next().unwrap_or_default();
        let version = parts.next();
        let key = parts.next();
        let has_body = parts.next().is_some();
        let provider_name = String::from_utf8_lossy(provider).into_owned();
        let Some(kind) = ProviderKind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes() == provider && *k != ProviderKind::Identity)
        else {
            return Format::UnknownProvider(provider_name);
        };
        return match (version, key, has_body) {
            (Some(v), Some(k), true) => Format::Encrypted {
                provider: kind,
                version: String::from_utf8_lossy(v).into_owned(),
                key: String::from_utf8_lossy(k).into_owned(),
            },
            _ => Format::UnknownProvider(provider_name),
        };
    }
    if value.starts_with(PROTOBUF_MAGIC) {
        return Format::Plaintext(PlainFormat::Protobuf);
    }
    if value.trim_ascii_start().starts_with(b"{") {
        return Format::Plaintext(PlainFormat::Json);
    }
    Format::Unrecognised
}

/// `runtime.Unknown`, the protobuf envelope after `k8s\x00`.
#[derive(Clone, PartialEq, prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
}

/// `runtime.TypeMeta`.
#[derive(Clone, PartialEq, prost::Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

#[derive(serde::Deserialize)]
struct JsonTypeMeta {
    #[serde(default)]
    kind: String,
    #[serde(default, rename = "apiVersion")]
    api_version: String,
}

/// Checks that bytes are a stored Kubernetes object (protobuf envelope or
/// JSON, with a kind and apiVersion); returns the kind.
pub fn kubernetes_kind(bytes: &[u8]) -> Result<String, String> {
    let (api_version, kind) = if let Some(body) = bytes.strip_prefix(PROTOBUF_MAGIC) {
        let u = <Unknown as prost::Message>::decode(body)
            .map_err(|_| "not a Kubernetes protobuf object (bad envelope)".to_string())?;
        let tm = u.type_meta.unwrap_or_default();
        (tm.api_version, tm.kind)
    } else if bytes.trim_ascii_start().starts_with(b"{") {
        let tm: JsonTypeMeta = serde_json::from_slice(bytes)
            .map_err(|_| "not a Kubernetes object (invalid JSON)".to_string())?;
        (tm.api_version, tm.kind)
    } else {
        return Err("not a Kubernetes object (neither protobuf nor JSON)".into());
    };
    if kind.is_empty() || api_version.is_empty() {
        return Err("not a Kubernetes object (no kind or apiVersion)".into());
    }
    Ok(kind)
}

/// Why a value could not be opened with a given key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than the format's fixed parts.
    #[error("malformed: {0} bytes is too short for {1}")]
    TooShort(usize, &'static str),
    /// AEAD tag did not verify (wrong key, tampered, or moved to another key).
    #[error("authentication failed")]
    Authentication,
    /// CBC padding invalid, or length not a multiple of the block size.
    #[error("bad padding")]
    Padding,
}

enum Gcm {
    A128(AesGcm<Aes128, U12>),
    A192(AesGcm<Aes192, U12>),
    A256(AesGcm<Aes256, U12>),
}

/// What opens values of one transformer.
enum Opener {
    Identity,
    Kms,
    Aescbc(Zeroizing<Vec<u8>>),
    Aesgcm(Box<Gcm>),
    Secretbox(Box<XSalsa20Poly1305>),
}

struct Entry {
    label: String,
    prefix: Vec<u8>,
    opener: Opener,
}

/// The transformers for one resource, in the API server's order.
pub struct Keyring {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.label))
            .finish()
    }
}

/// What opening one value with a keyring found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// A Kubernetes object of this kind, opened with this key (`identity`
    /// for plaintext).
    Object {
        /// The object's kind, e.g. `Secret`.
        kind: String,
        /// The key that opened it.
        key: String,
    },
    /// Encrypted by a KMS plugin: only the plugin opens it.
    NotVerifiable(String),
    /// Could not be opened into an object, and why.
    Failed(String),
}

/// Everything decided about one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What the bytes say.
    pub format: Format,
    /// Readable, encrypted, but not by the current write transformer (an
    /// undecryptable value is never also stale).
    pub stale: bool,
    /// Why the API server could not read it (`None` when it can, or when it
    /// was not opened and nothing short of opening would tell).
    pub problem: Option<String>,
    /// Decrypted with a configured key into a Kubernetes object (plaintext
    /// values are checked to be objects, but never count as verified).
    pub verified: bool,
    /// Encrypted by a KMS plugin: cannot be opened here.
    pub not_verifiable: bool,
}

impl Keyring {
    /// The keyring for `gr` under `config`.
    pub fn new(config: &EncryptionConfiguration, gr: &GroupResource) -> Self {
        let entries = config
            .transformers_for(gr)
            .into_iter()
            .map(|t| Entry {
                label: t.label(),
                prefix: t.prefix().into_bytes(),
                opener: opener(&t),
            })
            .collect();
        Self { entries }
    }

    /// Every transformer of every rule, in file order: classifies (and
    /// opens) values of any resource, to find which keys stored values need.
    pub fn census(config: &EncryptionConfiguration) -> Self {
        let mut entries = Vec::new();
        for rule in &config.rules {
            for p in &rule.providers {
                let ts: Vec<Transformer<'_>> = if p.keys.is_empty() {
                    vec![Transformer {
                        provider: p,
                        key: None,
                    }]
                } else {
                    p.keys
                        .iter()
                        .map(|k| Transformer {
                            provider: p,
                            key: Some(k),
                        })
                        .collect()
                };
                entries.extend(ts.iter().map(|t| Entry {
                    label: t.label(),
                    prefix: t.prefix().into_bytes(),
                    opener: opener(t),
                }));
            }
        }
        Self { entries }
    }

    /// A keyring of bare keys `(provider, name, key bytes)` (escrowed keys,
    /// no EncryptionConfiguration): opens what they encrypted; plaintext is
    /// read as with an `identity` provider. Keys of the wrong length for
    /// their provider are skipped (they can open nothing).
    pub fn from_keys<'a>(
        keys: impl IntoIterator<Item = (ProviderKind, &'a str, &'a [u8])>,
    ) -> Self {
        let mut entries: Vec<Entry> = keys
            .into_iter()
            .filter(|(kind, _, key)| match kind {
                ProviderKind::Aescbc | ProviderKind::Aesgcm => matches!(key.len(), 16 | 24 | 32),
                ProviderKind::Secretbox => key.len() == 32,
                _ => false,
            })
            .map(|(kind, name, key)| Entry {
                label: format!("{kind}:{name}"),
                prefix: format!("k8s:enc:{kind}:v1:{name}:").into_bytes(),
                opener: opener_for(kind, Some(key)),
            })
            .collect();
        entries.push(Entry {
            label: "identity".into(),
            prefix: Vec::new(),
            opener: Opener::Identity,
        });
        Self { entries }
    }

    /// The write transformer's label (`identity` when nothing covers the resource).
    pub fn write_label(&self) -> String {
        self.entries
            .first()
            .map(|e| e.label.clone())
            .unwrap_or_else(|| "identity".into())
    }

    /// True when an `identity` provider is configured (plaintext readable).
    pub fn reads_plaintext(&self) -> bool {
        self.entries.is_empty()
            || self
                .entries
                .iter()
                .any(|e| matches!(e.opener, Opener::Identity))
    }

    /// Opens one value stored under `etcd_key` with the ring's keys (any of
    /// them, in order): the kind of object it holds, and with which key.
    pub fn open_kind(&self, etcd_key: &[u8], value: &[u8]) -> Opened {
        let format = classify(value);
        match &format {
            Format::Plaintext(_) => {
                return match kubernetes_kind(value) {
                    Ok(kind) => Opened::Object {
                        kind,
                        key: "identity".into(),
                    },
                    Err(m) => Opened::Failed(m),
                };
            }
            Format::Encrypted {
                provider: ProviderKind::Kms,
                ..
            } => return Opened::NotVerifiable(format.label()),
            Format::Encrypted { .. } => {}
            _ => return Opened::Failed(format!("unrecognised value ({})", format.label())),
        }
        let mut errors = Vec::new();
        for e in self
            .entries
            .iter()
            .filter(|e| !e.prefix.is_empty() && value.starts_with(&e.prefix))
        {
            match open_with(&e.opener, etcd_key, &value[e.prefix.len()..]) {
                Ok(plain) => match kubernetes_kind(&plain) {
                    Ok(kind) => {
                        return Opened::Object {
                            kind,
                            key: e.label.clone(),
                        };
                    }
                    Err(m) => errors.push(format!("{}: decrypts, but {m}", e.label)),
                },
                Err(err) => errors.push(format!("{}: {err}", e.label)),
            }
        }
        if errors.is_empty() {
            return Opened::Failed(format!("no key for `{}`", format.label()));
        }
        Opened::Failed(errors.join("; "))
    }

    /// Decides about one value stored under `etcd_key`; opens it only when
    /// `open` is set (classification alone otherwise).
    pub fn judge(&self, etcd_key: &[u8], value: &[u8], open: bool) -> Verdict {
        let mut format = classify(value);
        let mut v = Verdict {
            format: format.clone(),
            stale: false,
            problem: None,
            verified: false,
            not_verifiable: false,
        };
        match &format {
            Format::Unrecognised => {
                v.problem =
                    Some("unrecognised format: neither a Kubernetes object nor `k8s:enc:`".into());
                return v;
            }
            Format::UnknownProvider(p) => {
                v.problem = Some(format!(
                    "unknown or malformed encryption prefix `k8s:enc:{p}`"
                ));
                return v;
            }
            Format::Plaintext(_) => {
                if open {
                    // Not decrypted, so never "verified"; but a plaintext
                    // value that is no object is unreadable all the same.
                    if let Err(m) = kubernetes_kind(value) {
                        v.problem = Some(m);
                    }
                }
                return v;
            }
            Format::Encrypted { .. } => {}
        }
        // Encrypted: which configured transformers claim it (by full prefix,
        // so key names containing `:` resolve as the API server resolves them).
        let candidates: Vec<(usize, &Entry)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.prefix.is_empty() && value.starts_with(&e.prefix))
            .collect();
        let Some((first_idx, first)) = candidates.first().copied() else {
            v.problem = Some(format!(
                "no configured provider or key for `{}`",
                format.label()
            ));
            return v;
        };
        if let Format::Encrypted { key, provider, .. } = &mut format
            && *provider != ProviderKind::Kms
            && let Some(name) = first.label.strip_prefix(&format!("{provider}:"))
        {
            *key = name.to_string();
        }
        v.format = format;
        if matches!(first.opener, Opener::Kms) {
            v.not_verifiable = true;
            v.stale = first_idx != 0;
            return v;
        }
        let body_of = |e: &Entry| &value[e.prefix.len()..];
        if !open {
            // Classification only: structural checks that need no key.
            match structure(&first.opener, body_of(first).len()) {
                Ok(()) => v.stale = first_idx != 0,
                Err(e) => v.problem = Some(format!("{}: {e}", first.label)),
            }
            return v;
        }
        let mut errors = Vec::new();
        for (idx, e) in &candidates {
            match open_with(&e.opener, etcd_key, body_of(e)) {
                Ok(plain) => match kubernetes_kind(&plain) {
                    Ok(_) => {
                        v.verified = true;
                        v.stale = *idx != 0;
                        return v;
                    }
                    Err(m) => errors.push(format!("{}: decrypts, but {m}", e.label)),
                },
                Err(err) => errors.push(format!("{}: {err}", e.label)),
            }
        }
        v.problem = Some(errors.join("; "));
        v
    }
}

fn opener(t: &Transformer<'_>) -> Opener {
    opener_for(t.provider.kind, t.key.map(|k| k.secret.expose_secret()))
}

fn opener_for(kind: ProviderKind, key: Option<&[u8]>) -> Opener {
    match (kind, key) {
        (ProviderKind::Identity, _) => Opener::Identity,
        (ProviderKind::Kms, _) => Opener::Kms,
        (ProviderKind::Aescbc, Some(k)) => Opener::Aescbc(Zeroizing::new(k.to_vec())),
        (ProviderKind::Aesgcm, Some(k)) => Opener::Aesgcm(Box::new(match k.len() {
            16 => Gcm::A128(AesGcm::new_from_slice(k).expect("validated key length")),
            24 => Gcm::A192(AesGcm::new_from_slice(k).expect("validated key length")),
            _ => Gcm::A256(AesGcm::new_from_slice(k).expect("validated key length")),
        })),
        (ProviderKind::Secretbox, Some(k)) => Opener::Secretbox(Box::new(
            <XSalsa20Poly1305 as crypto_secretbox::KeyInit>::new_from_slice(k)
                .expect("validated key length"),
        )),
        (_, None) => Opener::Identity,
    }
}

/// Length checks that hold for any key.
fn structure(opener: &Opener, len: usize) -> Result<(), OpenError> {
    match opener {
        Opener::Aescbc(_) if len < 32 => Err(OpenError::TooShort(len, "aescbc (IV + one block)")),
        Opener::Aescbc(_) if !len.is_multiple_of(16) => Err(OpenError::Padding),
        Opener::Aesgcm(_) if len < 28 => Err(OpenError::TooShort(len, "aesgcm (nonce + tag)")),
        Opener::Secretbox(_) if len < 40 => {
            Err(OpenError::TooShort(len, "secretbox (nonce + tag)"))
        }
        _ => Ok(()),
    }
}

/// Opens one value body (after the prefix) with one transformer.
fn open_with(
    opener: &Opener,
    etcd_key: &[u8],
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    structure(opener, body.len())?;
    match opener {
        Opener::Identity | Opener::Kms => Ok(Zeroizing::new(body.to_vec())),
        Opener::Aescbc(key) => {
            let (iv, ct) = body.split_at(16);
            let out = match key.len() {
                16 => cbc::Decryptor::<Aes128>::new_from_slices(key, iv)
                    .map_err(|_| OpenError::Padding)?
                    .decrypt_padded_vec::<Pkcs7>(ct),
                24 => cbc::Decryptor::<Aes192>::new_from_slices(key, iv)
                    .map_err(|_| OpenError::Padding)?
                    .decrypt_padded_vec::<Pkcs7>(ct),
                _ => cbc::Decryptor::<Aes256>::new_from_slices(key, iv)
                    .map_err(|_| OpenError::Padding)?
                    .decrypt_padded_vec::<Pkcs7>(ct),
            };
            out.map(Zeroizing::new).map_err(|_| OpenError::Padding)
        }
        Opener::Aesgcm(gcm) => {
            let (nonce, ct) = body.split_at(12);
            let nonce =
                aes_gcm::Nonce::<U12>::try_from(nonce).map_err(|_| OpenError::Authentication)?;
            let payload = Payload {
                msg: ct,
                aad: etcd_key,
            };
            let out = match gcm.as_ref() {
                Gcm::A128(c) => c.decrypt(&nonce, payload),
                Gcm::A192(c) => c.decrypt(&nonce, payload),
                Gcm::A256(c) => c.decrypt(&nonce, payload),
            };
            out.map(Zeroizing::new)
                .map_err(|_| OpenError::Authentication)
        }
        Opener::Secretbox(sb) => {
            let (nonce, ct) = body.split_at(24);
            let nonce: [u8; 24] = nonce.try_into().map_err(|_| OpenError::Authentication)?;
            let nonce = crypto_secretbox::Nonce::from(nonce);
            crypto_secretbox::aead::Aead::decrypt(sb.as_ref(), &nonce, ct)
                .map(Zeroizing::new)
                .map_err(|_| OpenError::Authentication)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cbc::cipher::BlockModeEncrypt;

    pub(crate) const K32: [u8; 32] = [7u8; 32];
    const K32_B64: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

    /// A `k8s\x00` protobuf Secret envelope.
    pub(crate) fn proto_secret(name: &str) -> Vec<u8> {
        let type_meta = TypeMeta {
            api_version: "v1".into(),
            kind: "Secret".into(),
        };
        let mut tm = Vec::new();
        prost::Message::encode(&type_meta, &mut tm).unwrap();
        let mut out = PROTOBUF_MAGIC.to_vec();
        out.push(0x0a);
        out.push(tm.len() as u8);
        out.extend_from_slice(&tm);
        out.push(0x12);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out
    }

    pub(crate) fn gcm_value(key: &[u8], name: &str, etcd_key: &[u8], plain: &[u8]) -> Vec<u8> {
        let c = AesGcm::<Aes256, U12>::new_from_slice(key).unwrap();
        let nonce = [9u8; 12];
        let ct = c
            .encrypt(
                &aes_gcm::Nonce::<U12>::try_from(&nonce[..]).unwrap(),
                Payload {
                    msg: plain,
                    aad: etcd_key,
                },
            )
            .unwrap();
        [format!("k8s:enc:aesgcm:v1:{name}:").as_bytes(), &nonce, &ct].concat()
    }

    fn cbc_value(key: &[u8], name: &str, plain: &[u8]) -> Vec<u8> {
        let iv = [3u8; 16];
        let ct = cbc::Encryptor::<Aes256>::new_from_slices(key, &iv)
            .unwrap()
            .encrypt_padded_vec::<Pkcs7>(plain);
        [format!("k8s:enc:aescbc:v1:{name}:").as_bytes(), &iv, &ct].concat()
    }

    fn box_value(key: &[u8], name: &str, plain: &[u8]) -> Vec<u8> {
        let sb = <XSalsa20Poly1305 as crypto_secretbox::KeyInit>::new_from_slice(key).unwrap();
        let nonce = [5u8; 24];
        let ct = crypto_secretbox::aead::Aead::encrypt(
            &sb,
            &crypto_secretbox::Nonce::from(nonce),
            plain,
        )
        .unwrap();
        [
            format!("k8s:enc:secretbox:v1:{name}:").as_bytes(),
            &nonce,
            &ct,
        ]
        .concat()
    }

    fn config(order: &str) -> EncryptionConfiguration {
        let providers: String = order
            .split(',')
            .map(|p| match p {
                "identity" => "      - identity: {}\n".to_string(),
                "kms" => "      - kms: {apiVersion: v2, name: vault, endpoint: 'unix:///k'}\n".into(),
                p => format!(
                    "      - {}:\n          keys:\n            - name: {}\n              secret: {K32_B64}\n",
                    p.split_once(':').unwrap().0,
                    p.split_once(':').unwrap().1
                ),
            })
            .collect();
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n{providers}"
        );
        super::super::encryption::parse(&text).unwrap()
    }

    #[test]
    fn classifies_prefixes() {
        assert_eq!(
            classify(b"k8s\x00\x0a"),
            Format::Plaintext(PlainFormat::Protobuf)
        );
        assert_eq!(
            classify(b" {\"kind\":1}"),
            Format::Plaintext(PlainFormat::Json)
        );
        assert_eq!(
            classify(b"k8s:enc:aesgcm:v1:key1:xyz"),
            Format::Encrypted {
                provider: ProviderKind::Aesgcm,
                version: "v1".into(),
                key: "key1".into()
            }
        );
        assert_eq!(
            classify(b"k8s:enc:kms:v2:vault:\x0a").label(),
            "kms:v2:vault"
        );
        assert_eq!(
            classify(b"k8s:enc:rot13:v1:k:x"),
            Format::UnknownProvider("rot13".into())
        );
        assert_eq!(
            classify(b"k8s:enc:aesgcm"),
            Format::UnknownProvider("aesgcm".into())
        );
        assert_eq!(classify(b"hello"), Format::Unrecognised);
    }

    #[test]
    fn opens_each_format_and_marks_stale() {
        let c = config("aesgcm:k1,aescbc:k2,secretbox:k3,identity");
        let ring = Keyring::new(&c, &GroupResource::parse("secrets"));
        assert_eq!(ring.write_label(), "aesgcm:k1");
        let key = b"/registry/secrets/default/a";
        let plain = proto_secret("a");
        let cases = [
            (gcm_value(&K32, "k1", key, &plain), false),
            (cbc_value(&K32, "k2", &plain), true),
            (box_value(&K32, "k3", &plain), true),
        ];
        for (value, stale) in cases {
            let v = ring.judge(key, &value, true);
            assert!(v.verified, "{v:?}");
            assert_eq!(v.stale, stale, "{v:?}");
            assert!(v.problem.is_none(), "{v:?}");
            let v = ring.judge(key, &value, false);
            assert!(
                !v.verified && v.problem.is_none() && v.stale == stale,
                "{v:?}"
            );
        }
        let v = ring.judge(key, &plain, true);
        assert_eq!(v.format, Format::Plaintext(PlainFormat::Protobuf));
        assert!(!v.verified && !v.stale && v.problem.is_none());
    }

    #[test]
    fn gcm_binds_the_etcd_key() {
        let c = config("aesgcm:k1");
        let ring = Keyring::new(&c, &GroupResource::parse("secrets"));
        let value = gcm_value(
            &K32,
            "k1",
            b"/registry/secrets/default/a",
            &proto_secret("a"),
        );
        let v = ring.judge(b"/registry/secrets/default/b", &value, true);
        assert!(!v.verified);
        assert!(v.problem.unwrap().contains("authentication failed"));
    }

    #[test]
    fn damaged_values_are_problems_not_panics() {
        let c = config("aesgcm:k1,aescbc:k2,secretbox:k3,kms");
        let ring = Keyring::new(&c, &GroupResource::parse("secrets"));
        let key = b"/registry/secrets/ns/x";
        let plain = proto_secret("x");
        for value in [
            gcm_value(&K32, "k1", key, &plain),
            cbc_value(&K32, "k2", &plain),
            box_value(&K32, "k3", &plain),
        ] {
            let prefix_len = value
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b':')
                .nth(4)
                .unwrap()
                .0
                + 1;
            for cut in [prefix_len, prefix_len + 5, value.len() - 1] {
                let v = ring.judge(key, &value[..cut], true);
                assert!(v.problem.is_some() && !v.verified, "cut {cut}: {v:?}");
            }
            for bit in [prefix_len, prefix_len + 20, value.len() - 1] {
                let mut flipped = value.clone();
                flipped[bit] ^= 0x01;
                let v = ring.judge(key, &flipped, true);
                assert!(!v.verified, "flip {bit}: {v:?}");
                assert!(v.problem.is_some(), "flip {bit}: {v:?}");
            }
        }
        let v = ring.judge(
            key,
            b"k8s:enc:aesgcm:v1:nokey:abcdefghijklmnopqrstuvwxyz0123456789",
            true,
        );
        assert!(v.problem.unwrap().contains("no configured provider or key"));
        let v = ring.judge(key, b"k8s:enc:kms:v2:vault:\x0a\x01x", true);
        assert!(v.not_verifiable && v.problem.is_none() && v.stale);
        let v = ring.judge(
            key,
            b"k8s:enc:aesgcm:v1:nokey:abcdefghijklmnopqrstuvwxyz0123456789",
            false,
        );
        assert!(v.problem.is_some() && !v.stale);
        let v = ring.judge(key, b"garbage", true);
        assert!(v.problem.is_some());
        // The API server without identity cannot read plaintext.
        assert!(!ring.reads_plaintext());
        assert!(!ring.judge(key, &plain, true).verified);
        let v = ring.judge(key, b"{\"not\":\"an object\"}", true);
        assert!(v.problem.is_some());
    }

    #[test]
    fn key_names_with_colons_resolve_by_full_prefix() {
        let c = config("aesgcm:a:b");
        let ring = Keyring::new(&c, &GroupResource::parse("secrets"));
        let key = b"/registry/secrets/ns/x";
        let value = gcm_value(&K32, "a:b", key, &proto_secret("x"));
        let v = ring.judge(key, &value, true);
        assert!(v.verified, "{v:?}");
        assert_eq!(v.format.label(), "aesgcm:a:b");
    }

    #[test]
    fn kubernetes_objects() {
        assert_eq!(kubernetes_kind(&proto_secret("a")).unwrap(), "Secret");
        assert_eq!(
            kubernetes_kind(br#"{"kind":"Widget","apiVersion":"x/v1"}"#).unwrap(),
            "Widget"
        );
        assert!(kubernetes_kind(b"k8s\x00\xff\xff").is_err());
        assert!(kubernetes_kind(b"{}").is_err());
        assert!(kubernetes_kind(b"\x00\x01").is_err());
    }
}
