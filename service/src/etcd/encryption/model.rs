//! What an `EncryptionConfiguration` is once parsed: rules, providers,
//! keys (their material in [`SecretBytes`], never printed), the transformers
//! a resource's values go through, and the errors a file can have.

use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::secret::{ExposeSecret, SecretBytes};

/// The `apiVersion` of the current kind.
pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";
/// Where a key's creation time can be written, in a YAML comment next to it:
/// `# rekey.io/created-at: 2025-01-31T00:00:00Z` (or a date).
pub const CREATED_AT_ANNOTATION: &str = "rekey.io/created-at";

/// One problem in the file: where, what, and the line when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// YAML path, e.g. `resources[0].providers[1].aescbc.keys[0].secret`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// 1-based line in the file.
    pub line: Option<usize>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        Ok(())
    }
}

/// All the problems in a file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_all(.0))]
pub struct ValidationErrors(pub Vec<ValidationError>);

fn display_all(errors: &[ValidationError]) -> String {
    let mut out = format!(
        "invalid EncryptionConfiguration ({} error{})",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        out.push_str("\n  ");
        out.push_str(&e.to_string());
    }
    out
}

/// Which document kind the file declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// `apiserver.config.k8s.io/v1` `EncryptionConfiguration`.
    Current,
    /// The legacy `v1` `EncryptionConfig` of early API servers.
    Legacy,
}

/// A provider type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    /// No encryption.
    Identity,
    /// AES-CBC with PKCS#7 padding.
    Aescbc,
    /// AES-GCM with a random nonce.
    Aesgcm,
    /// XSalsa20-Poly1305 (NaCl secretbox).
    Secretbox,
    /// Envelope encryption through a KMS plugin.
    Kms,
}

impl ProviderKind {
    /// The name used in the file and in stored prefixes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Aescbc => "aescbc",
            Self::Aesgcm => "aesgcm",
            Self::Secretbox => "secretbox",
            Self::Kms => "kms",
        }
    }

    /// All kinds, in report order.
    pub const ALL: [ProviderKind; 5] = [
        Self::Identity,
        Self::Aescbc,
        Self::Aesgcm,
        Self::Secretbox,
        Self::Kms,
    ];

    pub(super) fn from_field(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named key of an `aescbc`, `aesgcm` or `secretbox` provider.
pub struct Key {
    /// The key's name (part of the stored prefix).
    pub name: String,
    /// The decoded key bytes.
    pub secret: SecretBytes,
    /// YAML path of the key entry, e.g. `resources[0].providers[0].aesgcm.keys[1]`.
    pub path: String,
    /// Line of the entry.
    pub line: Option<usize>,
    /// From a `# rekey.io/created-at:` comment next to the entry.
    pub created_at: Option<DateTime<Utc>>,
}

impl Key {
    /// First 16 hex digits of the SHA-256 of the key bytes: identifies a key
    /// across runs (e.g. for its age) without revealing it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.secret.expose_secret());
        hex::encode(&digest[..8])
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("secret", &"[redacted]")
            .field("path", &self.path)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A `kms` provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsProvider {
    /// `v1` or `v2` (defaulted to `v1` like the API server).
    pub api_version: String,
    /// Plugin name (part of the stored prefix).
    pub name: String,
    /// `unix://` socket of the plugin.
    pub endpoint: String,
    /// v1 DEK cache size (defaulted to 1000 for v1).
    pub cachesize: Option<i64>,
    /// Call timeout in nanoseconds (defaulted to 3s).
    pub timeout_nanos: i128,
}

/// One element of a rule's `providers` list.
#[derive(Debug)]
pub struct Provider {
    /// Which type.
    pub kind: ProviderKind,
    /// Keys (`aescbc`, `aesgcm`, `secretbox`), in file order.
    pub keys: Vec<Key>,
    /// The KMS settings (`kms` only).
    pub kms: Option<KmsProvider>,
    /// YAML path, e.g. `resources[0].providers[1]`.
    pub path: String,
    /// Line of the element.
    pub line: Option<usize>,
}

/// A `group/resource` pair as the API server parses `resources` entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupResource {
    /// API group (`""` for the core group, `*` for all).
    pub group: String,
    /// Resource (`*` for all).
    pub resource: String,
}

impl GroupResource {
    /// `schema.ParseGroupResource`: `secrets`, `deployments.apps`, `*.`, `*.*`.
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((r, g)) => Self {
                group: g.into(),
                resource: r.into(),
            },
            None => Self {
                group: String::new(),
                resource: s.into(),
            },
        }
    }

    pub(super) fn yaml_string(&self) -> String {
        if self.group.is_empty() {
            if self.resource == "*" {
                "*.".into()
            } else {
                self.resource.clone()
            }
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// One element of `resources`: which resources, encrypted how.
#[derive(Debug)]
pub struct Rule {
    /// Resource names as written.
    pub resources: Vec<String>,
    /// Providers in order: the first writes, all read.
    pub providers: Vec<Provider>,
    /// YAML path, e.g. `resources[0]`.
    pub path: String,
}

/// A parsed and valid configuration.
#[derive(Debug)]
pub struct EncryptionConfiguration {
    /// Current or legacy kind.
    pub kind: ConfigKind,
    /// Rules in file order.
    pub rules: Vec<Rule>,
    /// SHA-256 of the file, hex (identifies the configuration in records).
    pub sha256: String,
}

/// A provider and, for keyed providers, one of its keys: what a stored
/// value's prefix names.
#[derive(Debug, Clone, Copy)]
pub struct Transformer<'a> {
    /// The provider.
    pub provider: &'a Provider,
    /// The key (`None` for identity and kms).
    pub key: Option<&'a Key>,
}

impl Transformer<'_> {
    /// The stored prefix, e.g. `k8s:enc:aesgcm:v1:key1:` (empty for identity).
    pub fn prefix(&self) -> String {
        match (self.provider.kind, self.key, &self.provider.kms) {
            (ProviderKind::Identity, _, _) => String::new(),
            (ProviderKind::Kms, _, Some(k)) => format!("k8s:enc:kms:{}:{}:", k.api_version, k.name),
            (kind, Some(key), _) => format!("k8s:enc:{kind}:v1:{}:", key.name),
            (kind, None, _) => format!("k8s:enc:{kind}:v1:"),
        }
    }

    /// `provider` or `provider:key`, for reports.
    pub fn label(&self) -> String {
        match (self.key, &self.provider.kms) {
            (Some(k), _) => format!("{}:{}", self.provider.kind, k.name),
            (None, Some(k)) => format!("kms:{}:{}", k.api_version, k.name),
            (None, None) => self.provider.kind.to_string(),
        }
    }
}

impl EncryptionConfiguration {
    /// The providers the API server uses for `gr`, in order (the first one
    /// writes), as `transformerFromOverrides` picks them: rules naming the
    /// resource exactly, else `*.<group>`, else `*.*`. Empty when no rule
    /// covers it (the API server then stores it unencrypted).
    pub fn providers_for(&self, gr: &GroupResource) -> Vec<&Provider> {
        let any_in_group = GroupResource {
            group: gr.group.clone(),
            resource: "*".into(),
        };
        let any = GroupResource {
            group: "*".into(),
            resource: "*".into(),
        };
        for wanted in [gr, &any_in_group, &any] {
            let found: Vec<&Provider> = self
                .rules
                .iter()
                .filter(|r| {
                    r.resources
                        .iter()
                        .any(|s| GroupResource::parse(s) == *wanted)
                })
                .flat_map(|r| r.providers.iter())
                .collect();
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    }

    /// The transformers for `gr` in the API server's order (each key of a
    /// keyed provider is its own prefix transformer); the first one writes.
    pub fn transformers_for(&self, gr: &GroupResource) -> Vec<Transformer<'_>> {
        let mut out = Vec::new();
        for p in self.providers_for(gr) {
            if p.keys.is_empty() {
                out.push(Transformer {
                    provider: p,
                    key: None,
                });
            } else {
                out.extend(p.keys.iter().map(|k| Transformer {
                    provider: p,
                    key: Some(k),
                }));
            }
        }
        out
    }
}
