//! The API server's `EncryptionConfiguration`: strict parsing and validation.
//!
//! The file is read the way `kube-apiserver --encryption-provider-config`
//! reads it: YAML (or JSON), strict (unknown and duplicate fields are errors),
//! `apiserver.config.k8s.io/v1` `EncryptionConfiguration` or the legacy `v1`
//! `EncryptionConfig`, then the API server's validation rules
//! (`validation_encryption.go`) and its masking check (`config.go`). Every
//! error names its YAML path (`resources[0].providers[1].aescbc.keys[0].secret`)
//! and the line, and all errors are reported at once, as the API server does.
//!
//! Key material is decoded into [`SecretBytes`] and never printed.

use std::{collections::HashSet, fmt};

use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use marked_yaml::{
    LoaderOptions, Node,
    types::{MarkedMappingNode, MarkedScalarNode},
};
use sha2::{Digest, Sha256};

use crate::secret::{ExposeSecret, SecretBytes, secret_bytes};

/// The `apiVersion` of the current kind.
pub const API_VERSION: &str = "apiserver.config.k8s.io/v1";
/// Where a key's creation time can be written, in a YAML comment next to it:
/// `# rekey.io/created-at: 2025-01-31T00:00:00Z` (or a date).
pub const CREATED_AT_ANNOTATION: &str = "rekey.io/created-at";

/// AES key sizes accepted for `aescbc` and `aesgcm`.
const AES_KEY_SIZES: &[usize] = &[16, 24, 32];
/// `secretbox` (XSalsa20-Poly1305) takes exactly one key size.
const SECRETBOX_KEY_SIZES: &[usize] = &[32];

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

    fn from_field(s: &str) -> Option<Self> {
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

    fn yaml_string(&self) -> String {
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

/// Parses and validates a file's text; `Err` lists every problem found.
pub fn parse(text: &str) -> Result<EncryptionConfiguration, ValidationErrors> {
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    let root = marked_yaml::parse_yaml_with_options(0, text, options)
        .map_err(|e| ValidationErrors(vec![load_error(&e)]))?;
    let mut v = Validator {
        errors: Vec::new(),
        text,
    };
    let config = v.document(&root);
    if v.errors.is_empty() {
        let mut config = config.expect("a document without errors parses");
        config.sha256 = hex::encode(Sha256::digest(text.as_bytes()));
        Ok(config)
    } else {
        Err(ValidationErrors(v.errors))
    }
}

fn load_error(e: &marked_yaml::LoadError) -> ValidationError {
    use marked_yaml::LoadError as L;
    let (marker, message) = match e {
        L::TopLevelMustBeMapping(m) => (Some(*m), "the document must be a mapping".to_string()),
        L::TopLevelMustBeSequence(m) => (Some(*m), "the document must be a sequence".to_string()),
        L::UnexpectedAnchor(m) => (
            Some(*m),
            "YAML anchors and aliases are not supported here".to_string(),
        ),
        L::MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be scalars".to_string()),
        L::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported here".to_string()),
        L::ScanError(m, err) => (Some(*m), format!("YAML syntax error: {}", err.info())),
        L::DuplicateKey(d) => (
            d.key.span().start().copied(),
            format!(
                "duplicate field `{}` (first on line {})",
                d.key.as_str(),
                d.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
            ),
        ),
    };
    ValidationError {
        path: "(syntax)".into(),
        message,
        line: marker.map(|m| m.line()),
    }
}

fn line_of(node: &Node) -> Option<usize> {
    node.span().start().map(|m| m.line())
}

/// Line of a mapping's key (where a null or empty value was written).
fn key_line(map: &MarkedMappingNode, field: &str) -> Option<usize> {
    map.keys()
        .find(|k| k.as_str() == field)
        .and_then(scalar_line)
}

fn scalar_line(node: &MarkedScalarNode) -> Option<usize> {
    node.span().start().map(|m| m.line())
}

/// What a plain (unquoted) YAML scalar resolves to.
fn plain_type(s: &str) -> &'static str {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => "null",
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" | "yes" | "Yes" | "YES" | "no"
        | "No" | "NO" | "on" | "On" | "ON" | "off" | "Off" | "OFF" | "y" | "Y" | "n" | "N" => {
            "bool"
        }
        _ if s.parse::<i64>().is_ok()
            || (s.starts_with("0x") && i64::from_str_radix(&s[2..], 16).is_ok()) =>
        {
            "number"
        }
        _ if s.parse::<f64>().is_ok()
            && s.bytes().any(|b| b.is_ascii_digit())
            && !s.contains(char::is_alphabetic) =>
        {
            "number"
        }
        ".inf" | "-.inf" | ".Inf" | "-.Inf" | ".nan" | ".NaN" => "number",
        _ => "string",
    }
}

fn is_null(node: &Node) -> bool {
    matches!(node, Node::Scalar(s) if s.may_coerce() && plain_type(s.as_str()) == "null")
}

fn node_type(node: &Node) -> &'static str {
    match node {
        Node::Scalar(s) if s.may_coerce() => plain_type(s.as_str()),
        Node::Scalar(_) => "string",
        Node::Mapping(_) => "object",
        Node::Sequence(_) => "array",
    }
}

struct Validator<'t> {
    errors: Vec<ValidationError>,
    text: &'t str,
}

struct KeyEntry {
    name: String,
    secret: SecretBytes,
    line: Option<usize>,
}

impl Validator<'_> {
    fn err(&mut self, path: impl Into<String>, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            path: path.into(),
            message: message.into(),
            line,
        });
    }

    /// Strict-decoding check of a mapping: every field known, returns it.
    fn mapping<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        known: &[&str],
    ) -> Option<&'n MarkedMappingNode> {
        let Some(map) = node.as_mapping() else {
            self.err(
                path,
                line_of(node),
                format!("expected an object, found {}", node_type(node)),
            );
            return None;
        };
        for k in map.keys() {
            if !known.contains(&k.as_str()) {
                let at = join(path, k.as_str());
                self.err(
                    at,
                    scalar_line(k),
                    format!(
                        "unknown field `{}` (expected one of: {})",
                        k.as_str(),
                        known.join(", ")
                    ),
                );
            }
        }
        Some(map)
    }

    /// A string field: missing and null read as `""`, like Go's JSON decoding.
    fn string(
        &mut self,
        map: &MarkedMappingNode,
        field: &str,
        path: &str,
    ) -> (String, Option<usize>) {
        let at = join(path, field);
        match map.get_node(field) {
            None => (String::new(), None),
            Some(n) if is_null(n) => (String::new(), line_of(n)),
            Some(Node::Scalar(s)) if !s.may_coerce() || plain_type(s.as_str()) == "string" => {
                (s.as_str().to_string(), scalar_line(s))
            }
            Some(n) => {
                self.err(
                    at,
                    line_of(n),
                    format!("expected a string, found {}", node_type(n)),
                );
                (String::new(), line_of(n))
            }
        }
    }

    fn sequence<'n>(&mut self, map: &'n MarkedMappingNode, field: &str, path: &str) -> &'n [Node] {
        let at = join(path, field);
        match map.get_node(field) {
            None => &[],
            Some(n) if is_null(n) => &[],
            Some(Node::Sequence(s)) => s.as_slice(),
            Some(n) => {
                self.err(
                    at,
                    line_of(n),
                    format!("expected a list, found {}", node_type(n)),
                );
                &[]
            }
        }
    }

    fn document(&mut self, root: &Node) -> Option<EncryptionConfiguration> {
        let map = self.mapping(root, "", &["kind", "apiVersion", "resources"])?;
        let (kind, kind_line) = self.string(map, "kind", "");
        let (api_version, av_line) = self.string(map, "apiVersion", "");
        let kind = match (kind.as_str(), api_version.as_str()) {
            ("EncryptionConfiguration", API_VERSION) => Some(ConfigKind::Current),
            ("EncryptionConfig", "v1") => Some(ConfigKind::Legacy),
            ("", _) => {
                self.err(
                    "kind",
                    kind_line.or(Some(1)),
                    "missing: expected `kind: EncryptionConfiguration`",
                );
                None
            }
            ("EncryptionConfiguration" | "EncryptionConfig", _) => {
                self.err(
                    "apiVersion",
                    av_line.or(kind_line),
                    format!(
                        "`{api_version}` is not supported: expected `{API_VERSION}` (or `v1` for the legacy `EncryptionConfig`)"
                    ),
                );
                None
            }
            (other, _) => {
                self.err(
                    "kind",
                    kind_line,
                    format!("`{other}` is not supported: expected `EncryptionConfiguration`"),
                );
                None
            }
        };
        let resources = self.sequence(map, "resources", "");
        if resources.is_empty() {
            let line = key_line(map, "resources");
            self.err("resources", line, "at least one resources is required");
        }
        let mut rules = Vec::new();
        let mut kms_names: HashSet<String> = HashSet::new();
        for (i, node) in resources.iter().enumerate() {
            if let Some(rule) = self.rule(node, i, &mut kms_names) {
                rules.push(rule);
            }
        }
        self.masking(&rules);
        Some(EncryptionConfiguration {
            kind: kind?,
            rules,
            sha256: String::new(),
        })
    }

    fn rule(&mut self, node: &Node, i: usize, kms_names: &mut HashSet<String>) -> Option<Rule> {
        let path = format!("resources[{i}]");
        let map = self.mapping(node, &path, &["resources", "providers"])?;
        let rpath = format!("{path}.resources");
        let res_nodes = self.sequence(map, "resources", &path);
        if res_nodes.is_empty() {
            self.err(
                &rpath,
                key_line(map, "resources").or(line_of(node)),
                format!("at least one {rpath} is required"),
            );
        }
        let mut resources = Vec::new();
        let mut lines = Vec::new();
        for (j, n) in res_nodes.iter().enumerate() {
            match n {
                Node::Scalar(s) if !s.may_coerce() || plain_type(s.as_str()) == "string" => {
                    resources.push(s.as_str().to_string());
                    lines.push(scalar_line(s));
                }
                other => self.err(
                    format!("{rpath}[{j}]"),
                    line_of(other),
                    format!("expected a string, found {}", node_type(other)),
                ),
            }
        }
        let first_line = lines.first().copied().flatten().or(line_of(node));
        self.resource_overlap(&resources, &rpath, first_line);
        self.resource_names(&resources, &lines, &rpath);

        let ppath = format!("{path}.providers");
        let prov_nodes = self.sequence(map, "providers", &path);
        if prov_nodes.is_empty() {
            self.err(
                &ppath,
                key_line(map, "providers").or(line_of(node)),
                format!("at least one {ppath} is required"),
            );
        }
        let mut providers = Vec::new();
        for (j, n) in prov_nodes.iter().enumerate() {
            if let Some(p) = self.provider(n, &format!("{ppath}[{j}]"), kms_names) {
                providers.push(p);
            }
        }
        Some(Rule {
            resources,
            providers,
            path,
        })
    }

    /// `validateResourceOverlap`.
    fn resource_overlap(&mut self, resources: &[String], path: &str, line: Option<usize>) {
        if resources.len() < 2 {
            return;
        }
        let r: Vec<GroupResource> = resources.iter().map(|s| GroupResource::parse(s)).collect();
        let (mut overlap, mut duplicate) = (false, false);
        for (i, r1) in r.iter().enumerate() {
            for (j, r2) in r.iter().enumerate() {
                if i == j {
                    continue;
                }
                if r1 == r2 && !duplicate {
                    duplicate = true;
                    continue;
                }
                if overlap {
                    continue;
                }
                if r1.group == "*" && r1.resource == "*" {
                    overlap = true;
                    continue;
                }
                if r1.group != r2.group {
                    continue;
                }
                if r1.resource == "*" || r2.resource == "*" {
                    overlap = true;
                }
            }
        }
        if duplicate {
            self.err(
                path,
                line,
                "the same resource cannot be specified multiple times",
            );
        }
        if overlap {
            self.err(
                path,
                line,
                "using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked",
            );
        }
    }

    /// `validateResourceNames`.
    fn resource_names(&mut self, resources: &[String], lines: &[Option<usize>], path: &str) {
        for (j, res) in resources.iter().enumerate() {
            let at = format!("{path}[{j}]");
            let line = lines.get(j).copied().flatten();
            let gr = GroupResource::parse(res);
            let msg = if res.chars().any(char::is_uppercase) {
                "resource name should not contain capital letters"
            } else if res == "*" {
                "use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources"
            } else if matches!(
                res.as_str(),
                "apiserveripinfo" | "serviceipallocations" | "servicenodeportallocations"
            ) {
                "resources which do not have REST API/s cannot be encrypted"
            } else if gr.group == "events.k8s.io" {
                "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file"
            } else if gr.group == "extensions" {
                "'extensions' group has been removed and cannot be used for encryption"
            } else if gr.group == "*" && gr.resource != "*" {
                "encrypting the same resource across groups is not supported"
            } else if res.is_empty() {
                "resource name must not be empty"
            } else {
                continue;
            };
            self.err(at, line, format!("`{res}`: {msg}"));
        }
    }

    /// The API server's "resource is masked by earlier rule" check.
    fn masking(&mut self, rules: &[Rule]) {
        let mut seen: HashSet<GroupResource> = HashSet::new();
        let any = GroupResource::parse("*.*");
        for rule in rules {
            for (j, res) in rule.resources.iter().enumerate() {
                let gr = GroupResource::parse(res);
                let group_any = GroupResource {
                    group: gr.group.clone(),
                    resource: "*".into(),
                };
                let masked_by = [&group_any, &any].into_iter().find(|m| seen.contains(*m));
                if let Some(m) = masked_by {
                    let path = format!("{}.resources[{j}]", rule.path);
                    let line = self.line_of_path(&path);
                    self.err(
                        path,
                        line,
                        format!(
                            "resource \"{}\" is masked by earlier rule \"{}\"",
                            gr.yaml_string(),
                            m.yaml_string()
                        ),
                    );
                }
            }
            for res in &rule.resources {
                seen.insert(GroupResource::parse(res));
            }
        }
    }

    /// Line of `resources[i].resources[j]`, found again from the text's nodes.
    fn line_of_path(&self, path: &str) -> Option<usize> {
        let options = LoaderOptions::default().prevent_coercion(true);
        let root = marked_yaml::parse_yaml_with_options(0, self.text, options).ok()?;
        let (i, j) = path
            .strip_prefix("resources[")
            .and_then(|r| r.split_once("].resources["))
            .and_then(|(i, j)| {
                Some((
                    i.parse::<usize>().ok()?,
                    j.trim_end_matches(']').parse::<usize>().ok()?,
                ))
            })?;
        let node = root
            .as_mapping()?
            .get_sequence("resources")?
            .get_mapping(i)?
            .get_sequence("resources")?
            .get_node(j)?;
        line_of(node)
    }

    fn provider(
        &mut self,
        node: &Node,
        path: &str,
        kms_names: &mut HashSet<String>,
    ) -> Option<Provider> {
        let map = self.mapping(
            node,
            path,
            &["identity", "aescbc", "aesgcm", "secretbox", "kms"],
        )?;
        let present: Vec<(&MarkedScalarNode, &Node)> =
            map.iter().filter(|(_, v)| !is_null(v)).collect();
        let line = line_of(node);
        if present.is_empty() {
            self.err(
                path,
                line,
                "provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity",
            );
            return None;
        }
        if present.len() > 1 {
            self.err(
                path,
                line,
                "more than one provider specified in a single element, should split into different list elements",
            );
            return None;
        }
        let (field, body) = present[0];
        let kind = ProviderKind::from_field(field.as_str())?;
        let bpath = join(path, kind.as_str());
        let mut provider = Provider {
            kind,
            keys: Vec::new(),
            kms: None,
            path: path.to_string(),
            line,
        };
        match kind {
            ProviderKind::Identity => {
                self.mapping(body, &bpath, &[]);
            }
            ProviderKind::Aescbc | ProviderKind::Aesgcm | ProviderKind::Secretbox => {
                let sizes = if kind == ProviderKind::Secretbox {
                    SECRETBOX_KEY_SIZES
                } else {
                    AES_KEY_SIZES
                };
                let map = self.mapping(body, &bpath, &["keys"])?;
                let kpath = join(&bpath, "keys");
                let keys = self.sequence(map, "keys", &bpath);
                if keys.is_empty() {
                    self.err(
                        &kpath,
                        key_line(map, "keys").or(line_of(body)),
                        "at least one keys is required",
                    );
                }
                for (k, n) in keys.iter().enumerate() {
                    let at = format!("{kpath}[{k}]");
                    if let Some(entry) = self.key(n, &at, sizes) {
                        provider.keys.push(Key {
                            created_at: created_at_near(self.text, entry.line),
                            name: entry.name,
                            secret: entry.secret,
                            path: at,
                            line: entry.line,
                        });
                    }
                }
            }
            ProviderKind::Kms => {
                provider.kms = self.kms(body, &bpath, kms_names);
            }
        }
        Some(provider)
    }

    /// `validateKey`.
    fn key(&mut self, node: &Node, path: &str, sizes: &[usize]) -> Option<KeyEntry> {
        let map = self.mapping(node, path, &["name", "secret"])?;
        let line = line_of(node);
        let before = self.errors.len();
        let (name, _) = self.string(map, "name", path);
        if name.is_empty() && self.errors.len() == before {
            self.err(
                join(path, "name"),
                line,
                "name is a mandatory field for a key",
            );
        }
        let (secret, sline) = self.string(map, "secret", path);
        let spath = join(path, "secret");
        if secret.is_empty() {
            self.err(
                &spath,
                sline.or(line),
                "secret is a mandatory field for a key",
            );
            return None;
        }
        // The key's text is as secret as its bytes: both are wiped on drop.
        let secret = zeroize::Zeroizing::new(secret);
        let cleaned: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
            secret
                .chars()
                .filter(|c| *c != '\n' && *c != '\r')
                .collect(),
        );
        let decoded = match BASE64.decode(cleaned.as_bytes()) {
            Ok(d) => secret_bytes(d),
            Err(_) => {
                self.err(&spath, sline, "secrets must be base64 encoded");
                return None;
            }
        };
        let len = decoded.expose_secret().len();
        if !sizes.contains(&len) {
            self.err(
                &spath,
                sline,
                format!(
                    "secret is not of the expected length, got {len}, expected one of {sizes:?}"
                ),
            );
            return None;
        }
        Some(KeyEntry {
            name,
            secret: decoded,
            line,
        })
    }

    /// `validateKMSConfiguration`, after the API server's defaulting.
    fn kms(
        &mut self,
        body: &Node,
        path: &str,
        kms_names: &mut HashSet<String>,
    ) -> Option<KmsProvider> {
        let map = self.mapping(
            body,
            path,
            &["apiVersion", "name", "endpoint", "cachesize", "timeout"],
        )?;
        let line = line_of(body);
        let (mut api_version, av_line) = self.string(map, "apiVersion", path);
        if api_version.is_empty() {
            api_version = "v1".into();
        }
        let (name, name_line) = self.string(map, "name", path);
        let (endpoint, ep_line) = self.string(map, "endpoint", path);
        let cachesize = match map.get_node("cachesize") {
            None => None,
            Some(n) if is_null(n) => None,
            Some(Node::Scalar(s)) if s.may_coerce() && s.as_str().parse::<i32>().is_ok() => {
                s.as_str().parse::<i64>().ok()
            }
            Some(n) => {
                self.err(
                    join(path, "cachesize"),
                    line_of(n),
                    format!("expected an integer, found {}", node_type(n)),
                );
                None
            }
        };
        let cachesize_line = map.get_node("cachesize").and_then(line_of);
        let (timeout_text, t_line) = self.string(map, "timeout", path);
        let timeout_nanos = if timeout_text.is_empty() {
            3_000_000_000
        } else {
            match parse_go_duration(&timeout_text) {
                Ok(n) => n,
                Err(m) => {
                    self.err(join(path, "timeout"), t_line, m);
                    1
                }
            }
        };
        // validateKMSConfigName
        let npath = join(path, "name");
        if name.is_empty() {
            self.err(
                &npath,
                name_line.or(line),
                "name is a mandatory field for a provider",
            );
        }
        if api_version != "v1" && name.contains(':') {
            self.err(
                &npath,
                name_line,
                format!("invalid KMS provider name {name}, must not contain ':'"),
            );
        }
        if api_version != "v1" && kms_names.contains(&name) {
            self.err(
                &npath,
                name_line,
                format!("duplicate KMS provider name {name}, names must be unique"),
            );
        }
        kms_names.insert(name.clone());
        // validateKMSTimeout
        if timeout_nanos <= 0 {
            self.err(
                join(path, "timeout"),
                t_line,
                "timeout should be a positive value",
            );
        }
        // validateKMSEndpoint
        let epath = join(path, "endpoint");
        if endpoint.is_empty() {
            self.err(
                &epath,
                ep_line.or(line),
                "endpoint is a mandatory field for a kms",
            );
        } else {
            match endpoint.split_once("://") {
                Some(("unix", _)) => {}
                Some((scheme, _)) => self.err(
                    &epath,
                    ep_line,
                    format!("unsupported scheme {scheme:?} for KMS provider, only unix is supported"),
                ),
                None => self.err(
                    &epath,
                    ep_line,
                    format!("unsupported scheme \"\" for KMS provider, only unix is supported (got `{endpoint}`)"),
                ),
            }
        }
        // defaulting + validateKMSCacheSize
        let cachesize = match (api_version.as_str(), cachesize) {
            ("v1", None) => Some(1000),
            (_, c) => c,
        };
        if api_version != "v1" && map.get_node("cachesize").is_some_and(|n| !is_null(n)) {
            self.err(
                join(path, "cachesize"),
                cachesize_line,
                "cachesize is not supported in v2",
            );
        }
        if api_version == "v1" && cachesize == Some(0) {
            self.err(
                join(path, "cachesize"),
                cachesize_line,
                "cachesize should be a positive value, or negative to disable",
            );
        }
        // validateKMSAPIVersion
        if api_version != "v1" && api_version != "v2" {
            self.err(
                join(path, "apiVersion"),
                av_line,
                format!("unsupported apiVersion {api_version} for KMS provider, only v1 and v2 are supported"),
            );
        }
        Some(KmsProvider {
            api_version,
            name,
            endpoint,
            cachesize,
            timeout_nanos,
        })
    }
}

/// Go's `base64.StdEncoding` (padding required, trailing bits tolerated).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical),
);

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let bad = || format!("invalid duration `{s}` (expected e.g. `3s`, `500ms`, `1m30s`)");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() || num == "." {
            return Err(bad());
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let mult = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * mult;
        rest = next;
    }
    let n = total.round() as i128;
    Ok(if neg { -n } else { n })
}

/// A `# rekey.io/created-at: <RFC 3339 time or date>` comment on the key
/// entry's line or on the comment lines directly above it.
fn created_at_near(text: &str, line: Option<usize>) -> Option<DateTime<Utc>> {
    let line = line?.checked_sub(1)? + 1;
    let lines = yaml_lines(text);
    let mut candidates: Vec<&str> = Vec::new();
    if let Some(l) = lines.get(line - 1) {
        candidates.push(l);
    }
    if let Some(l) = lines.get(line) {
        // `secret:` or `name:` right below a `- name:` line
        if !l.trim_start().starts_with('-') {
            candidates.push(l);
        }
    }
    for l in lines[..(line - 1).min(lines.len())].iter().rev() {
        if l.trim_start().starts_with('#') {
            candidates.push(l);
        } else {
            break;
        }
    }
    candidates.into_iter().find_map(|l| {
        let (_, comment) = l.split_once('#')?;
        let value = comment.trim().strip_prefix(CREATED_AT_ANNOTATION)?;
        let value = value.trim_start().strip_prefix(':')?.trim();
        parse_time(value)
    })
}

/// The lines of `text` as the YAML parser numbers them: `\r\n`, `\r` and
/// `\n` each end a line (`str::lines` does not split on a lone `\r`).
fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    if !rest.is_empty() {
        lines.push(rest);
    }
    lines
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_at_counts_lines_like_yaml() {
        // Found by the encryption_config fuzz target: a lone `\r` is a line
        // break for YAML but not for `str::lines`, and line numbers ran past
        // the end of the text.
        let text = "a:\r\r\r# rekey.io/created-at: 2026-01-02\r- name: k1\r";
        assert_eq!(
            created_at_near(text, Some(5)),
            parse_time("2026-01-02"),
            "the comment above line 5"
        );
        assert_eq!(created_at_near(text, Some(60)), None);
        assert_eq!(created_at_near(text, Some(0)), None);
        assert_eq!(yaml_lines("a\r\nb\rc\nd"), ["a", "b", "c", "d"]);
    }

    const K32: &str = "c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/IDEyMzQ="; // 32 bytes
    const K16: &str = "MDEyMzQ1Njc4OWFiY2RlZg=="; // 16 bytes

    fn good() -> String {
        format!(
            r#"apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
      - configmaps
    providers:
      - aesgcm:
          keys:
            # rekey.io/created-at: 2025-01-02T03:04:05Z
            - name: key1
              secret: {K32}
            - name: key0
              secret: {K16}
      - aescbc:
          keys:
            - name: old
              secret: {K32}
      - secretbox:
          keys:
            - name: box
              secret: {K32}
      - kms:
          apiVersion: v2
          name: vault
          endpoint: unix:///var/run/kms.sock
          timeout: 3s
      - identity: {{}}
  - resources:
      - '*.apps'
    providers:
      - identity: {{}}
"#
        )
    }

    #[test]
    fn parses_a_good_file() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.kind, ConfigKind::Current);
        assert_eq!(c.rules.len(), 2);
        let secrets = GroupResource::parse("secrets");
        let t = c.transformers_for(&secrets);
        let labels: Vec<String> = t.iter().map(|t| t.label()).collect();
        assert_eq!(
            labels,
            [
                "aesgcm:key1",
                "aesgcm:key0",
                "aescbc:old",
                "secretbox:box",
                "kms:v2:vault",
                "identity"
            ]
        );
        assert_eq!(t[0].prefix(), "k8s:enc:aesgcm:v1:key1:");
        assert_eq!(t[4].prefix(), "k8s:enc:kms:v2:vault:");
        assert_eq!(t[5].prefix(), "");
        let key1 = t[0].key.unwrap();
        assert_eq!(
            key1.created_at.unwrap().to_rfc3339(),
            "2025-01-02T03:04:05+00:00"
        );
        assert!(t[1].key.unwrap().created_at.is_none());
        assert_eq!(key1.path, "resources[0].providers[0].aesgcm.keys[0]");
        assert_eq!(key1.line, Some(11));
        let deploy = GroupResource::parse("deployments.apps");
        assert_eq!(c.transformers_for(&deploy)[0].label(), "identity");
        assert!(c.providers_for(&GroupResource::parse("pods")).is_empty());
        assert!(!format!("{c:?}").contains(K32));
    }

    fn errors(text: &str) -> Vec<ValidationError> {
        parse(text).unwrap_err().0
    }

    fn one_error(text: &str, path: &str, needle: &str, line: usize) {
        let errs = errors(text);
        assert!(
            errs.iter()
                .any(|e| e.path == path && e.message.contains(needle) && e.line == Some(line)),
            "expected `{path}` `{needle}` at line {line}, got {errs:#?}"
        );
    }

    #[test]
    fn each_rule_names_its_path_and_line() {
        let g = good();
        let cases: Vec<(String, &str, &str, usize)> = vec![
            (g.replace(K16, "not base64!"), "resources[0].providers[0].aesgcm.keys[1].secret", "base64", 14),
            (g.replace(K16, "MDEy"), "resources[0].providers[0].aesgcm.keys[1].secret", "got 3, expected one of [16, 24, 32]", 14),
            (g.replace(&format!("name: box\n              secret: {K32}"), &format!("name: box\n              secret: {K16}")), "resources[0].providers[2].secretbox.keys[0].secret", "got 16, expected one of [32]", 22),
            (g.replace("name: old\n", "name: ''\n"), "resources[0].providers[1].aescbc.keys[0].name", "mandatory", 17),
            (g.replace(&format!("secret: {K32}\n      - secretbox"), "secret: ''\n      - secretbox"), "resources[0].providers[1].aescbc.keys[0].secret", "mandatory", 18),
            (g.replace("            - name: old\n              secret: c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/IDEyMzQ=\n", ""), "resources[0].providers[1].aescbc.keys", "at least one keys", 16),
            (g.replace("      - identity: {}\n  - resources", "      - identity: {}\n        aescbc: {keys: []}\n  - resources"), "resources[0].providers[4]", "more than one provider", 28),
            (g.replace("unix:///var/run/kms.sock", "tcp://10.0.0.1:1"), "resources[0].providers[3].kms.endpoint", "only unix", 26),
            (g.replace("timeout: 3s", "timeout: 0s"), "resources[0].providers[3].kms.timeout", "positive", 27),
            (g.replace("apiVersion: v2", "apiVersion: v3"), "resources[0].providers[3].kms.apiVersion", "only v1 and v2", 24),
            (g.replace("timeout: 3s", "timeout: 3s\n          cachesize: 10"), "resources[0].providers[3].kms.cachesize", "not supported in v2", 28),
            (g.replace("name: vault", "name: 'va:ult'"), "resources[0].providers[3].kms.name", "must not contain ':'", 25),
            (g.replace("      - secrets\n", "      - Secrets\n"), "resources[0].resources[0]", "capital letters", 5),
            (g.replace("      - '*.apps'\n", "      - '*'\n"), "resources[1].resources[0]", "use '*.'", 30),
            (g.replace("      - configmaps\n", "      - secrets\n"), "resources[0].resources", "multiple times", 5),
            (g.replace("      - configmaps\n", "      - '*.'\n"), "resources[0].resources", "overlapping", 5),
            (g.replace("      - '*.apps'\n", "      - deployments.apps\n").replace("      - configmaps\n", "      - '*.apps'\n"), "resources[1].resources[0]", "masked by earlier rule \"*.apps\"", 30),
            (g.replace("          keys:\n            # rekey", "          keyz: 1\n          keys:\n            # rekey"), "resources[0].providers[0].aesgcm.keyz", "unknown field", 9),
            (g.replace("kind: EncryptionConfiguration", "kind: Pod"), "kind", "not supported", 2),
            (g.replace("apiserver.config.k8s.io/v1", "v2"), "apiVersion", "not supported", 1),
            (g.replace("name: key0", "name: 12"), "resources[0].providers[0].aesgcm.keys[1].name", "expected a string", 13),
            (g.replace("      - identity: {}\n  - resources", "      - {}\n  - resources"), "resources[0].providers[4]", "does not contain any", 28),
            (g.replace("      - identity: {}\n  - resources", "      - identity:\n  - resources"), "resources[0].providers[4]", "does not contain any", 28),
        ];
        for (text, path, needle, line) in cases {
            one_error(&text, path, needle, line);
        }
    }

    #[test]
    fn kms_v1_defaults_and_duplicates() {
        let text = "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers:\n  - kms: {name: a, endpoint: 'unix:///a'}\n  - kms: {apiVersion: v2, name: a, endpoint: 'unix:///b'}\n";
        one_error(
            text,
            "resources[0].providers[1].kms.name",
            "duplicate KMS provider name a",
            7,
        );
        let ok = text.replace(
            "name: a, endpoint: 'unix:///b'",
            "name: b, endpoint: 'unix:///b'",
        );
        let c = parse(&ok).unwrap();
        let kms = c.rules[0].providers[0].kms.as_ref().unwrap();
        assert_eq!(
            (kms.api_version.as_str(), kms.cachesize, kms.timeout_nanos),
            ("v1", Some(1000), 3_000_000_000)
        );
        one_error(
            &ok.replace(
                "endpoint: 'unix:///a'",
                "endpoint: 'unix:///a', cachesize: 0",
            ),
            "resources[0].providers[0].kms.cachesize",
            "positive value, or negative",
            6,
        );
    }

    #[test]
    fn syntax_and_structure_errors() {
        let e = errors("kind: EncryptionConfiguration\nresources: [\n");
        assert_eq!(e[0].path, "(syntax)");
        assert!(e[0].line.is_some());
        let e = errors("kind: EncryptionConfiguration\nkind: x\n");
        assert!(e[0].message.contains("duplicate field `kind`"), "{e:?}");
        assert_eq!(e[0].line, Some(2));
        one_error(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources: []\n",
            "resources",
            "at least one",
            3,
        );
        one_error(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: []\n  providers: [{identity: {}}]\n",
            "resources[0].resources",
            "at least one resources[0].resources",
            4,
        );
        one_error(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n",
            "resources[0].providers",
            "at least one",
            4,
        );
    }

    #[test]
    fn legacy_kind_and_json() {
        let json = r#"{"kind":"EncryptionConfig","apiVersion":"v1","resources":[{"resources":["secrets"],"providers":[{"secretbox":{"keys":[{"name":"k","secret":"c2VjcmV0IGlzIHNlY3VyZSwgb3IgaXMgaXQ/IDEyMzQ="}]}}]}]}"#;
        let c = parse(json).unwrap();
        assert_eq!(c.kind, ConfigKind::Legacy);
        assert_eq!(c.rules[0].providers[0].keys[0].name, "k");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("3s").unwrap(), 3_000_000_000);
        assert_eq!(parse_go_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_go_duration("1.5h").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_go_duration("-2ms").unwrap(), -2_000_000);
        assert!(parse_go_duration("3").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("3x").is_err());
    }

    #[test]
    fn fingerprint_identifies_without_revealing() {
        let c = parse(&good()).unwrap();
        let k = &c.rules[0].providers[0].keys[0];
        assert_eq!(k.fingerprint().len(), 16);
        assert_ne!(
            k.fingerprint(),
            c.rules[0].providers[0].keys[1].fingerprint()
        );
    }
}
