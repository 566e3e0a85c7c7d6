//! Who may use an issuer from a Credential resource: `allowed_namespaces`
//! and `allowed_dns_names`, parsed and checked once, and [`allows`], the
//! pure decision the Credential controller calls for each request.
//!
//! - `allowed_namespaces`: namespace names, `*` matching any run of
//!   characters (`"team-*"`, `"*"` for every namespace).
//! - `allowed_dns_names`: DNS names, `{namespace}` standing for the
//!   requesting namespace and `*` matching any run of characters within one
//!   label (`"*.{namespace}.svc"` allows `web.shop.svc`, not
//!   `a.web.shop.svc`). Compared without regard to case.
//!
//! Both default to nothing: an issuer without `allowed_namespaces` serves
//! only the certificates declared in rekey.toml, and one without
//! `allowed_dns_names` only Credentials that ask for no DNS name (client
//! certificates).

use std::fmt;

/// The placeholder in `allowed_dns_names` for the requesting namespace.
pub const NAMESPACE_PLACEHOLDER: &str = "{namespace}";

/// An issuer's policy for Credential resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerPolicy {
    namespaces: Vec<String>,
    dns_names: Vec<String>,
}

/// Why a Credential may not use an issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The namespace matches no `allowed_namespaces` entry.
    #[error("namespace `{namespace}` may not use this issuer (allowed_namespaces: {allowed})")]
    Namespace {
        /// The requesting namespace.
        namespace: String,
        /// The patterns, for the message (`none` when empty).
        allowed: String,
    },
    /// A DNS name matches no `allowed_dns_names` entry.
    #[error(
        "DNS name `{dns_name}` is not allowed for namespace `{namespace}` (allowed_dns_names: {allowed})"
    )]
    DnsName {
        /// The name refused.
        dns_name: String,
        /// The requesting namespace.
        namespace: String,
        /// The patterns, for the message (`none` when empty).
        allowed: String,
    },
}

fn listed(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "none".into()
    } else {
        patterns.join(", ")
    }
}

impl IssuerPolicy {
    /// Parses and checks the two lists; an error is `(field, message)` with
    /// the field `allowed_namespaces[i]` or `allowed_dns_names[i]`.
    pub fn parse(namespaces: &[String], dns_names: &[String]) -> Result<Self, (String, String)> {
        for (i, p) in namespaces.iter().enumerate() {
            validate_namespace_pattern(p).map_err(|m| (format!("allowed_namespaces[{i}]"), m))?;
        }
        for (i, p) in dns_names.iter().enumerate() {
            validate_dns_pattern(p).map_err(|m| (format!("allowed_dns_names[{i}]"), m))?;
        }
        Ok(Self {
            namespaces: namespaces.to_vec(),
            dns_names: dns_names.iter().map(|p| p.to_ascii_lowercase()).collect(),
        })
    }

    /// The `allowed_namespaces` patterns.
    pub fn allowed_namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The `allowed_dns_names` patterns (lower case).
    pub fn allowed_dns_names(&self) -> &[String] {
        &self.dns_names
    }
}

/// Whether a Credential in `namespace` asking for `dns_names` may use the
/// issuer with this policy: the namespace must match an
/// `allowed_namespaces` pattern, and every DNS name an `allowed_dns_names`
/// pattern with `{namespace}` replaced by `namespace`. The first refusal
/// is returned.
pub fn allows(issuer: &IssuerPolicy, namespace: &str, dns_names: &[String]) -> Result<(), Denial> {
    if !issuer.namespaces.iter().any(|p| glob(p, namespace)) {
        return Err(Denial::Namespace {
            namespace: namespace.into(),
            allowed: listed(&issuer.namespaces),
        });
    }
    for name in dns_names {
        let lower = name.to_ascii_lowercase();
        let ok = issuer.dns_names.iter().any(|p| {
            let p = p.replace(NAMESPACE_PLACEHOLDER, namespace);
            dns_match(&p, &lower)
        });
        if !ok {
            return Err(Denial::DnsName {
                dns_name: name.clone(),
                namespace: namespace.into(),
                allowed: listed(&issuer.dns_names),
            });
        }
    }
    Ok(())
}

/// `*` matches any run of characters (none included); everything else
/// matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// Label by label: as many labels, each matching its pattern label, a
/// wildcard never matching an empty label.
fn dns_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), name.split('.').collect());
    p.len() == n.len() && p.iter().zip(&n).all(|(p, n)| !n.is_empty() && glob(p, n))
}

fn validate_namespace_pattern(p: &str) -> Result<(), String> {
    let body: String = p.chars().filter(|c| *c != '*').collect();
    let ok = !p.is_empty()
        && p.len() <= 63
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{p}` is not a namespace pattern (lower-case letters, digits, `-`, and `*` for any run of them)"
        ))
    }
}

fn validate_dns_pattern(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{p}` is not a DNS name pattern: {why}"));
    let sample = p.replace(NAMESPACE_PLACEHOLDER, "ns");
    if sample.contains(['{', '}']) {
        return bad("the only placeholder is {namespace}");
    }
    if sample.is_empty() || sample.len() > 253 {
        return bad("empty or longer than 253 characters");
    }
    for label in sample.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*');
        if !ok {
            return bad("each label is letters, digits, `-` and `*` (within the label)");
        }
    }
    Ok(())
}

impl fmt::Display for IssuerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allowed_namespaces: {}; allowed_dns_names: {}",
            listed(&self.namespaces),
            listed(&self.dns_names)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ns: &[&str], dns: &[&str]) -> IssuerPolicy {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        IssuerPolicy::parse(&s(ns), &s(dns)).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_design_example() {
        let p = policy(
            &["shop", "team-*"],
            &["*.{namespace}.svc", "*.{namespace}.svc.cluster.local"],
        );
        assert_eq!(allows(&p, "shop", &names(&["web.shop.svc"])), Ok(()));
        assert_eq!(
            allows(
                &p,
                "team-a",
                &names(&["api.team-a.svc", "API.team-a.svc.cluster.local"])
            ),
            Ok(())
        );
        // No DNS names at all (a client certificate) is fine in an allowed namespace.
        assert_eq!(allows(&p, "shop", &[]), Ok(()));
        assert!(matches!(
            allows(&p, "kube-system", &[]),
            Err(Denial::Namespace { .. })
        ));
        assert!(matches!(
            allows(&p, "team", &[]),
            Err(Denial::Namespace { .. })
        ));
        // Another namespace's names, a wildcard spanning two labels, the bare
        // service domain, an unrelated name: all refused.
        for bad in [
            "web.other.svc",
            "a.web.shop.svc",
            "shop.svc",
            "kubernetes.default.svc",
        ] {
            let e = allows(&p, "shop", &names(&["web.shop.svc", bad])).unwrap_err();
            assert_eq!(
                e,
                Denial::DnsName {
                    dns_name: bad.into(),
                    namespace: "shop".into(),
                    allowed: "*.{namespace}.svc, *.{namespace}.svc.cluster.local".into(),
                },
                "{bad}"
            );
            assert!(e.to_string().contains(bad));
        }
    }

    #[test]
    fn absent_lists_allow_nothing() {
        let p = IssuerPolicy::default();
        let e = allows(&p, "shop", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "namespace `shop` may not use this issuer (allowed_namespaces: none)"
        );
        let p = policy(&["*"], &[]);
        assert_eq!(allows(&p, "anything", &[]), Ok(()));
        assert!(allows(&p, "shop", &names(&["web.shop.svc"])).is_err());
    }

    #[test]
    fn globs_stay_within_a_label() {
        let p = policy(
            &["*"],
            &["web-*.{namespace}.svc", "{namespace}.example.com"],
        );
        assert!(
            allows(
                &p,
                "a",
                &names(&["web-1.a.svc", "web-.a.svc", "a.example.com"])
            )
            .is_ok()
        );
        assert!(allows(&p, "a", &names(&["api.a.svc"])).is_err());
        assert!(allows(&p, "a", &names(&["b.example.com"])).is_err());
        assert!(glob("a*b*c", "aXXbYYc") && !glob("a*b*c", "aXXbYY") && glob("**", ""));
        assert!(!dns_match("*.svc", ".svc"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for (ns, dns, field) in [
            (&["Shop"][..], &[][..], "allowed_namespaces[0]"),
            (&["ok", ""], &[], "allowed_namespaces[1]"),
            (&["a.b"], &[], "allowed_namespaces[0]"),
            (&[], &["*.{ns}.svc"], "allowed_dns_names[0]"),
            (&[], &["a..b"], "allowed_dns_names[0]"),
            (&[], &["a_b.svc"], "allowed_dns_names[0]"),
            (&[], &[""], "allowed_dns_names[0]"),
        ] {
            let e = IssuerPolicy::parse(&s(ns), &s(dns)).unwrap_err();
            assert_eq!(e.0, field, "{ns:?} {dns:?}: {e:?}");
        }
    }
}
