//! `[issuer]` / `[[issuer]]`: who signs certificates, with the checks that
//! need no file and no cluster. The CA itself is checked when the registry
//! is built ([`super::registry`]), where its files or Secret are read.
//!
//! One table (`[issuer]`, the form of the first release) is the issuer
//! named `default`, of kind `ca`; an array of tables (`[[issuer]]`) names
//! each. TOML cannot hold both in one file.

use std::{collections::HashSet, fmt, path::PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use super::{policy::IssuerPolicy, spec::DEFAULT_ISSUER};
use crate::sink::spec::validate_k8s_name;

/// `kind` of an issuer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssuerKind {
    /// rekey signs with a CA certificate and key it holds (files or a Secret).
    #[default]
    Ca,
    /// The cluster signs: rekey requests each certificate through the
    /// CertificateSigningRequest API and never sees a CA key.
    KubernetesCsr,
}

impl IssuerKind {
    /// The spelling in configuration and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ca => "ca",
            Self::KubernetesCsr => "kubernetes-csr",
        }
    }
}

impl fmt::Display for IssuerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes Secret holding a CA (`tls.crt`, `tls.key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One issuer: `[issuer]` or an entry of `[[issuer]]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Unique name; required in `[[issuer]]`, `default` for `[issuer]`.
    pub name: Option<String>,
    /// `ca` (default) or `kubernetes-csr`.
    #[serde(default)]
    pub kind: IssuerKind,
    /// `ca`: PEM CA certificate (with `ca_key`).
    pub ca_cert: Option<PathBuf>,
    /// `ca`: PEM private key of the CA (with `ca_cert`).
    pub ca_key: Option<PathBuf>,
    /// `ca`: a Secret holding `tls.crt` and `tls.key`, instead of files.
    pub secret: Option<SecretRef>,
    /// `kubernetes-csr`: the `signerName` of every request.
    pub signer_name: Option<String>,
    /// `kubernetes-csr`: PEM file of the CA certificates that consumers
    /// trust for this signer (its `ca.crt`); default: the cluster CA of
    /// rekey's Kubernetes client, which signs the `kubernetes.io/*`
    /// signers in kubeadm and most clusters.
    pub ca_bundle: Option<PathBuf>,
    /// Namespaces whose Credential resources may use this issuer (`*`
    /// globs); none when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// DNS names such a Credential may ask for (`*` within one label,
    /// `{namespace}` for its namespace); none when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_dns_names: Vec<String>,
    /// `ca`: start a CA rotation by itself when the CA has less than this
    /// left (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_before: Option<crate::units::HumanDuration>,
}

/// Where a `ca` issuer's CA lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource<'a> {
    /// `ca_cert` and `ca_key`.
    Files {
        /// The certificate file.
        cert: &'a std::path::Path,
        /// The key file.
        key: &'a std::path::Path,
    },
    /// `secret = { namespace, name }`.
    Secret(&'a SecretRef),
}

impl IssuerConfig {
    /// The issuer's name (`default` when unnamed).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(DEFAULT_ISSUER)
    }

    /// Where a `ca` issuer's CA lives (`None` for other kinds; assumes the
    /// config was validated).
    pub fn ca_source(&self) -> Option<CaSource<'_>> {
        if self.kind != IssuerKind::Ca {
            return None;
        }
        match (&self.secret, &self.ca_cert, &self.ca_key) {
            (Some(s), _, _) => Some(CaSource::Secret(s)),
            (None, Some(cert), Some(key)) => Some(CaSource::Files { cert, key }),
            _ => None,
        }
    }

    /// The policy for Credential resources (assumes the config was validated).
    pub fn policy(&self) -> IssuerPolicy {
        IssuerPolicy::parse(&self.allowed_namespaces, &self.allowed_dns_names).unwrap_or_default()
    }

    /// Checks field values; an error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let f = |field: &str, message: String| Err((field.to_string(), message));
        if let Some(n) = &self.name {
            validate_k8s_name(n).map_err(|m| ("name".to_string(), m))?;
        }
        match self.kind {
            IssuerKind::Ca => {
                for (field, set) in [
                    ("signer_name", self.signer_name.is_some()),
                    ("ca_bundle", self.ca_bundle.is_some()),
                ] {
                    if set {
                        return f(
                            field,
                            "only for kind = \"kubernetes-csr\" (a `ca` issuer's trust bundle is its CA)"
                                .into(),
                        );
                    }
                }
                match (&self.secret, &self.ca_cert, &self.ca_key) {
                    (Some(s), None, None) => {
                        validate_k8s_name(&s.namespace)
                            .map_err(|m| ("secret.namespace".to_string(), m))?;
                        validate_k8s_name(&s.name).map_err(|m| ("secret.name".to_string(), m))?;
                    }
                    (Some(_), _, _) => {
                        return f(
                            "secret",
                            "give either `secret` or `ca_cert` and `ca_key`, not both".into(),
                        );
                    }
                    (None, Some(_), Some(_)) => {}
                    (None, None, Some(_)) => {
                        return f("ca_cert", "missing: `ca_key` needs its certificate".into());
                    }
                    (None, Some(_), None) => {
                        return f("ca_key", "missing: `ca_cert` needs its private key".into());
                    }
                    (None, None, None) => {
                        return f(
                            "ca_cert",
                            "missing: a `ca` issuer needs `ca_cert` and `ca_key` (from `rekey ca init --out DIR`) or `secret = { namespace, name }`"
                                .into(),
                        );
                    }
                }
            }
            IssuerKind::KubernetesCsr => {
                match self.signer_name.as_deref() {
                    None => {
                        return f(
                            "signer_name",
                            "missing: a `kubernetes-csr` issuer needs the signerName of its requests, e.g. \"kubernetes.io/kube-apiserver-client\""
                                .into(),
                        );
                    }
                    Some(s) => {
                        validate_signer_name(s).map_err(|m| ("signer_name".to_string(), m))?
                    }
                }
                for (field, set) in [
                    ("ca_cert", self.ca_cert.is_some()),
                    ("ca_key", self.ca_key.is_some()),
                    ("secret", self.secret.is_some()),
                    ("rotate_before", self.rotate_before.is_some()),
                ] {
                    if set {
                        return f(
                            field,
                            "not for kind = \"kubernetes-csr\": rekey holds no CA key for it (the signer's CA is the cluster's to rotate)"
                                .into(),
                        );
                    }
                }
            }
        }
        if self.rotate_before.is_some_and(|d| d.get().is_zero()) {
            return f("rotate_before", "must be more than 0".into());
        }
        IssuerPolicy::parse(&self.allowed_namespaces, &self.allowed_dns_names)?;
        Ok(())
    }
}

/// A signerName: `<domain>/<path>`, the domain a DNS subdomain.
pub fn validate_signer_name(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "`{s}` is not a signer name: a domain and a path, e.g. \"kubernetes.io/kube-apiserver-client\" or \"example.com/my-signer\""
        )
    };
    let (domain, path) = s.split_once('/').ok_or_else(bad)?;
    if validate_k8s_name(domain).is_err()
        || path.is_empty()
        || s.len() > 571
        || !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'))
    {
        return Err(bad());
    }
    Ok(())
}

/// The `issuer` entry of rekey.toml: one table or an array of tables.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum IssuerSection {
    /// `[issuer]`: the issuer `default`.
    One(Box<IssuerConfig>),
    /// `[[issuer]]`.
    Many(Vec<IssuerConfig>),
}

impl<'de> Deserialize<'de> for IssuerSection {
    /// A table is one issuer, an array many; each deserialised strictly, so
    /// an unknown field is reported at its path (`issuer[1].colour`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IssuerSection;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an [issuer] table or [[issuer]] tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                IssuerConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|c| IssuerSection::One(Box::new(c)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::<IssuerConfig>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(IssuerSection::Many)
            }
        }
        d.deserialize_any(V)
    }
}

impl IssuerSection {
    /// Every issuer, in file order; `[issuer]` named `default`.
    pub fn list(&self) -> Vec<IssuerConfig> {
        match self {
            Self::One(c) => {
                let mut c = (**c).clone();
                c.name.get_or_insert_with(|| DEFAULT_ISSUER.to_string());
                vec![c]
            }
            Self::Many(v) => v.clone(),
        }
    }

    /// Mutable access to every entry (for resolving relative paths).
    pub fn entries_mut(&mut self) -> Vec<&mut IssuerConfig> {
        match self {
            Self::One(c) => vec![&mut **c],
            Self::Many(v) => v.iter_mut().collect(),
        }
    }

    /// Checks each issuer and that names are unique; an error is
    /// `(path, message)` with the path from `issuer` on (`issuer[1].name`,
    /// `issuer.ca_key`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            Self::One(c) => c
                .validate()
                .map_err(|(field, m)| (format!("issuer.{field}"), m)),
            Self::Many(v) => {
                let mut seen = HashSet::new();
                for (i, c) in v.iter().enumerate() {
                    let Some(name) = &c.name else {
                        return Err((
                            format!("issuer[{i}].name"),
                            "missing: every [[issuer]] needs a unique name".into(),
                        ));
                    };
                    c.validate()
                        .map_err(|(field, m)| (format!("issuer[{i}].{field}"), m))?;
                    if !seen.insert(name.as_str()) {
                        return Err((
                            format!("issuer[{i}].name"),
                            format!("duplicate issuer name `{name}`"),
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IssuerSection, String> {
        #[derive(Deserialize)]
        struct Doc {
            issuer: IssuerSection,
        }
        let v: toml::Value = text.parse::<toml::Table>().unwrap().into();
        serde_path_to_error::deserialize::<_, Doc>(v)
            .map(|d| d.issuer)
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    #[test]
    fn one_table_is_the_default_issuer_and_many_are_named() {
        let one = parse("[issuer]\nca_cert = \"a\"\nca_key = \"b\"\n").unwrap();
        let list = one.list();
        assert_eq!(list[0].name(), "default");
        assert_eq!(list[0].kind, IssuerKind::Ca);
        one.validate().unwrap();
        let many = parse(
            "[[issuer]]\nname = \"cluster\"\nsecret = { namespace = \"rekey\", name = \"ca\" }\n\
             [[issuer]]\nname = \"clients\"\nkind = \"kubernetes-csr\"\nsigner_name = \"kubernetes.io/kube-apiserver-client\"\n",
        )
        .unwrap();
        many.validate().unwrap();
        let list = many.list();
        assert_eq!(list[1].kind, IssuerKind::KubernetesCsr);
        assert!(matches!(list[0].ca_source(), Some(CaSource::Secret(_))));
        let e = parse("[issuer]\nca_cert = \"a\"\ncolour = \"red\"\n").unwrap_err();
        assert!(e.starts_with("issuer.colour"), "{e}");
        let e = parse("[[issuer]]\nname = \"x\"\ncolour = \"red\"\n").unwrap_err();
        assert!(e.starts_with("issuer[0].colour"), "{e}");
    }

    #[test]
    fn each_mistake_names_its_field() {
        let cases = [
            (
                "[[issuer]]\nca_cert = \"a\"\nca_key = \"b\"\n",
                "issuer[0].name",
            ),
            (
                "[[issuer]]\nname = \"a\"\nca_cert = \"a\"\nca_key = \"b\"\n[[issuer]]\nname = \"a\"\nca_cert = \"a\"\nca_key = \"b\"\n",
                "issuer[1].name",
            ),
            ("[issuer]\nca_key = \"b\"\n", "issuer.ca_cert"),
            ("[issuer]\nca_cert = \"b\"\n", "issuer.ca_key"),
            ("[issuer]\n", "issuer.ca_cert"),
            (
                "[issuer]\nca_cert = \"a\"\nca_key = \"b\"\nsecret = { namespace = \"a\", name = \"b\" }\n",
                "issuer.secret",
            ),
            (
                "[issuer]\nsecret = { namespace = \"A\", name = \"b\" }\n",
                "issuer.secret.namespace",
            ),
            (
                "[issuer]\nkind = \"kubernetes-csr\"\n",
                "issuer.signer_name",
            ),
            (
                "[issuer]\nkind = \"kubernetes-csr\"\nsigner_name = \"nope\"\n",
                "issuer.signer_name",
            ),
            (
                "[issuer]\nkind = \"kubernetes-csr\"\nsigner_name = \"example.com/x\"\nca_key = \"k\"\n",
                "issuer.ca_key",
            ),
            (
                "[issuer]\nca_cert = \"a\"\nca_key = \"b\"\nsigner_name = \"example.com/x\"\n",
                "issuer.signer_name",
            ),
            (
                "[issuer]\nca_cert = \"a\"\nca_key = \"b\"\nallowed_namespaces = [\"Shop\"]\n",
                "issuer.allowed_namespaces[0]",
            ),
            (
                "[issuer]\nca_cert = \"a\"\nca_key = \"b\"\nallowed_dns_names = [\"*.{ns}.svc\"]\n",
                "issuer.allowed_dns_names[0]",
            ),
        ];
        for (text, path) in cases {
            let e = parse(text).unwrap().validate().unwrap_err();
            assert_eq!(e.0, path, "{text}: {e:?}");
        }
        let e = parse("[issuer]\nkind = \"vault\"\n").unwrap_err();
        assert!(e.starts_with("issuer.kind"), "{e}");
        let e = parse("[issuer]\nrotate_before = \"soon\"\n").unwrap_err();
        assert!(e.starts_with("issuer.rotate_before"), "{e}");
        let e = parse("[issuer]\nrotate_beffore = \"30d\"\n").unwrap_err();
        assert!(e.starts_with("issuer.rotate_beffore"), "{e}");
    }
}
