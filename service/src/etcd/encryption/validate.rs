//! Parsing and validating an `EncryptionConfiguration` the way the API
//! server does (`validation_encryption.go`, and the masking check of
//! `config.go`): strict structure, then every rule, reporting all errors
//! at once with their YAML paths and lines.

use std::collections::HashSet;

use base64::Engine;
use marked_yaml::{
    LoaderOptions, Node,
    types::{MarkedMappingNode, MarkedScalarNode},
};
use sha2::{Digest, Sha256};

use super::{
    model::{
        API_VERSION, ConfigKind, EncryptionConfiguration, GroupResource, Key, KmsProvider,
        Provider, ProviderKind, Rule, ValidationError, ValidationErrors,
    },
    positions::{
        created_at_near, is_null, key_line, line_of, load_error, node_type, plain_type, scalar_line,
    },
};
use crate::secret::{ExposeSecret, SecretBytes, secret_bytes};

/// AES key sizes accepted for `aescbc` and `aesgcm`.
const AES_KEY_SIZES: &[usize] = &[16, 24, 32];
/// `secretbox` (XSalsa20-Poly1305) takes exactly one key size.
const SECRETBOX_KEY_SIZES: &[usize] = &[32];

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

#[cfg(test)]
mod tests {
    use super::*;

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
