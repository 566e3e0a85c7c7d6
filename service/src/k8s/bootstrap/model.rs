//! Pure bootstrap-token logic: reading token Secrets and kubelet CSRs,
//! deciding what to do with a token, and writing tokens as kubeadm does.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::{
    ByteString,
    api::{certificates::v1::CertificateSigningRequest, core::v1::Secret},
};
use kube::api::ObjectMeta;
use secrecy::{ExposeSecret, SecretString};

use super::super::objects::to_chrono;

/// Type of bootstrap-token Secrets.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Their name prefix: `bootstrap-token-<id>`.
pub const SECRET_PREFIX: &str = "bootstrap-token-";
/// Their namespace.
pub const NAMESPACE: &str = "kube-system";
/// The signer of kubelet client certificates (what a joining node asks for).
pub const KUBELET_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Label on a token Secret choosing its policy.
pub const POLICY_LABEL: &str = "rekey.io/bootstrap-policy";
/// The group kubeadm puts node-join tokens in.
pub const DEFAULT_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// When a token is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Revoke once a node has joined with it (default).
    RevokeAfterJoin,
    /// Keep until its expiration (then revoke); several nodes may join with it.
    KeepUntilExpiry,
}

impl Policy {
    /// The spelling in labels, the table and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RevokeAfterJoin => "revoke-after-join",
            Self::KeepUntilExpiry => "keep-until-expiry",
        }
    }

    /// Parses the spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoke-after-join" => Some(Self::RevokeAfterJoin),
            "keep-until-expiry" => Some(Self::KeepUntilExpiry),
            _ => None,
        }
    }
}

/// The policy of a token: its label, else the config's list, else the default.
pub fn effective_policy(
    label: Option<Policy>,
    id: &str,
    cfg: &crate::k8s::BootstrapTokensConfig,
) -> Policy {
    if let Some(p) = label {
        return p;
    }
    if cfg.keep_until_expiry.iter().any(|k| k == id) || !cfg.revoke_after_join {
        Policy::KeepUntilExpiry
    } else {
        Policy::RevokeAfterJoin
    }
}

/// What rekey knows about a token Secret (never its secret part).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    /// The 6-character id.
    pub id: String,
    /// The Secret's uid.
    pub secret_uid: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// The Secret's creationTimestamp.
    pub created: Option<DateTime<Utc>>,
    /// `expiration`.
    pub expiration: Option<DateTime<Utc>>,
    /// `usage-bootstrap-*` set to `true`.
    pub usages: Vec<String>,
    /// `auth-extra-groups`.
    pub groups: Vec<String>,
    /// The policy label, if set and valid.
    pub policy_label: Option<Policy>,
}

/// Whether `id` is a token id, `[a-z0-9]{6}`.
pub fn valid_id(id: &str) -> bool {
    id.len() == 6
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn data_str(s: &Secret, key: &str) -> Option<String> {
    let d = s.data.as_ref()?.get(key)?;
    String::from_utf8(d.0.clone()).ok()
}

/// Reads a bootstrap-token Secret.
pub fn token_from_secret(s: &Secret) -> Result<TokenInfo, String> {
    let name = s.metadata.name.as_deref().unwrap_or("");
    if s.type_.as_deref() != Some(SECRET_TYPE) {
        return Err(format!("secret {name} is not of type {SECRET_TYPE}"));
    }
    let id = name
        .strip_prefix(SECRET_PREFIX)
        .filter(|id| valid_id(id))
        .ok_or_else(|| format!("secret {name} is not named {SECRET_PREFIX}<[a-z0-9]{{6}}>"))?;
    if let Some(data_id) = data_str(s, "token-id")
        && data_id != id
    {
        return Err(format!(
            "secret {name}: token-id `{data_id}` does not match the name"
        ));
    }
    let expiration = match data_str(s, "expiration") {
        None => None,
        Some(e) => Some(
            DateTime::parse_from_rfc3339(e.trim())
                .map_err(|err| format!("secret {name}: expiration `{e}` is not RFC 3339: {err}"))?
                .with_timezone(&Utc),
        ),
    };
    let mut usages: Vec<String> = s
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            let u = k.strip_prefix("usage-bootstrap-")?;
            (v.0 == b"true").then(|| u.to_string())
        })
        .collect();
    usages.sort();
    let groups = data_str(s, "auth-extra-groups")
        .map(|g| {
            g.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let policy_label = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POLICY_LABEL))
        .and_then(|v| Policy::parse(v));
    Ok(TokenInfo {
        id: id.to_string(),
        secret_uid: s.metadata.uid.clone(),
        description: data_str(s, "description"),
        created: s.metadata.creation_timestamp.as_ref().map(to_chrono),
        expiration,
        usages,
        groups,
        policy_label,
    })
}

/// A node join seen in a kubelet client CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The token id (`spec.username` = `system:bootstrap:<id>`).
    pub token_id: String,
    /// The CSR's uid.
    pub csr_uid: String,
    /// The CSR's name.
    pub csr_name: String,
    /// From the request's subject `CN=system:node:<name>`.
    pub node_name: String,
    /// An `Approved` condition is present.
    pub approved: bool,
    /// `status.certificate` is set.
    pub issued: bool,
}

/// Reads a CSR: `None` when it is not a kubelet client CSR made with a
/// bootstrap token; an error when it is but cannot be understood.
pub fn join_from_csr(csr: &CertificateSigningRequest) -> Option<Result<Join, String>> {
    if csr.spec.signer_name != KUBELET_SIGNER {
        return None;
    }
    let id = csr
        .spec
        .username
        .as_deref()?
        .strip_prefix("system:bootstrap:")?;
    let name = csr.metadata.name.clone().unwrap_or_default();
    Some((|| {
        if !valid_id(id) {
            return Err(format!(
                "CSR {name}: `system:bootstrap:{id}` does not name a token id"
            ));
        }
        let node_name =
            node_of_request(&csr.spec.request.0).map_err(|e| format!("CSR {name}: {e}"))?;
        let status = csr.status.as_ref();
        let approved = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Approved" && c.status == "True")
            });
        let issued = status
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| !c.0.is_empty());
        Ok(Join {
            token_id: id.to_string(),
            csr_uid: csr.metadata.uid.clone().unwrap_or_else(|| name.clone()),
            csr_name: name.clone(),
            node_name,
            approved,
            issued,
        })
    })())
}

/// The node name in a PEM CSR's subject, `CN=system:node:<name>`.
pub fn node_of_request(pem: &[u8]) -> Result<String, String> {
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("request is not PEM: {e}"))?;
    use x509_parser::prelude::FromDer;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&p.contents)
            .map_err(|e| format!("request is not a PKCS#10 CSR: {e}"))?;
    let cn = req
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .ok_or("request subject has no common name")?;
    cn.strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
        .map(String::from)
        .ok_or_else(|| format!("request subject CN `{cn}` is not system:node:<name>"))
}

/// A stored token's state, as [`decide`] needs it.
#[derive(Debug, Clone)]
pub struct TokenFacts {
    /// `active`, `used`, `revoking`, `revoked`, `expired`, `deleted`.
    pub state: String,
    /// Its policy.
    pub policy: Policy,
    /// Creation time.
    pub created: Option<DateTime<Utc>>,
    /// Expiration.
    pub expiration: Option<DateTime<Utc>>,
}

/// A recorded join, as [`decide`] needs it.
#[derive(Debug, Clone)]
pub struct JoinFacts {
    /// The node.
    pub node_name: String,
    /// Approved.
    pub approved: bool,
    /// Certificate issued.
    pub issued: bool,
    /// The Node object exists (or existed).
    pub registered: bool,
}

/// What to do with a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing.
    Keep,
    /// A node joined and the policy keeps the token: mark it `used`.
    MarkUsed,
    /// Revoke it.
    Revoke {
        /// `joined`, `expired` or `max-age`.
        reason: &'static str,
        /// The node whose join triggered it.
        node: Option<String>,
    },
}

/// Decides what to do with a token at `now`.
pub fn decide(
    t: &TokenFacts,
    joins: &[JoinFacts],
    max_age: Option<TimeDelta>,
    now: DateTime<Utc>,
) -> Decision {
    if !matches!(t.state.as_str(), "active" | "used") {
        return Decision::Keep;
    }
    let complete = joins
        .iter()
        .find(|j| j.approved && j.issued && j.registered);
    if t.policy == Policy::RevokeAfterJoin
        && let Some(j) = complete
    {
        return Decision::Revoke {
            reason: "joined",
            node: Some(j.node_name.clone()),
        };
    }
    if t.expiration.is_some_and(|e| e <= now) {
        return Decision::Revoke {
            reason: "expired",
            node: None,
        };
    }
    if let (Some(age), Some(created)) = (max_age, t.created)
        && created + age <= now
    {
        return Decision::Revoke {
            reason: "max-age",
            node: None,
        };
    }
    if t.state == "active" && complete.is_some() {
        return Decision::MarkUsed;
    }
    Decision::Keep
}

/// A new random token id and secret, `[a-z0-9]{6}` and `[a-z0-9]{16}`.
pub fn new_token() -> (String, SecretString) {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect()
    };
    let id = pick(6);
    let secret = SecretString::from(pick(16));
    (id, secret)
}

/// What `rekey token create` writes.
#[derive(Debug, Clone)]
pub struct NewTokenSpec {
    /// Time to live (None: never expires).
    pub ttl: Option<TimeDelta>,
    /// Usages (`signing`, `authentication`).
    pub usages: Vec<String>,
    /// Extra groups (`system:bootstrappers:...`).
    pub groups: Vec<String>,
    /// Description.
    pub description: Option<String>,
    /// Policy label to set.
    pub policy: Option<Policy>,
}

/// Checks an extra group name as the API server's bootstrap authenticator does.
pub fn valid_group(g: &str) -> bool {
    g.strip_prefix("system:bootstrappers:").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
            && !rest.ends_with([':', '-'])
    })
}

/// The Secret for a token, exactly as `kubeadm token create` writes it.
pub fn kubeadm_secret(
    id: &str,
    secret: &SecretString,
    spec: &NewTokenSpec,
    now: DateTime<Utc>,
) -> Secret {
    let mut data: BTreeMap<String, ByteString> = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
    };
    if let Some(d) = spec.description.as_deref().filter(|d| !d.is_empty()) {
        put("description", d);
    }
    put("token-id", id);
    put("token-secret", secret.expose_secret());
    if let Some(ttl) = spec.ttl {
        put(
            "expiration",
            &(now + ttl).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    }
    for u in &spec.usages {
        put(&format!("usage-bootstrap-{u}"), "true");
    }
    if !spec.groups.is_empty() {
        put("auth-extra-groups", &spec.groups.join(","));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("{SECRET_PREFIX}{id}")),
            namespace: Some(NAMESPACE.into()),
            labels: spec
                .policy
                .map(|p| BTreeMap::from([(POLICY_LABEL.to_string(), p.as_str().to_string())])),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(state: &str, policy: Policy) -> TokenFacts {
        let now = Utc::now();
        TokenFacts {
            state: state.into(),
            policy,
            created: Some(now - TimeDelta::hours(1)),
            expiration: Some(now + TimeDelta::hours(1)),
        }
    }

    fn join(approved: bool, issued: bool, registered: bool) -> JoinFacts {
        JoinFacts {
            node_name: "n1".into(),
            approved,
            issued,
            registered,
        }
    }

    #[test]
    fn decisions() {
        let now = Utc::now();
        let t = facts("active", Policy::RevokeAfterJoin);
        assert_eq!(decide(&t, &[], None, now), Decision::Keep);
        assert_eq!(
            decide(&t, &[join(true, true, false)], None, now),
            Decision::Keep
        );
        assert_eq!(
            decide(&t, &[join(true, false, true)], None, now),
            Decision::Keep
        );
        assert_eq!(
            decide(&t, &[join(true, true, true)], None, now),
            Decision::Revoke {
                reason: "joined",
                node: Some("n1".into())
            }
        );
        let keep = facts("active", Policy::KeepUntilExpiry);
        assert_eq!(
            decide(&keep, &[join(true, true, true)], None, now),
            Decision::MarkUsed
        );
        let used = facts("used", Policy::KeepUntilExpiry);
        assert_eq!(
            decide(
                &used,
                &[join(true, true, true), join(true, true, true)],
                None,
                now
            ),
            Decision::Keep
        );
        assert_eq!(
            decide(&used, &[], None, now + TimeDelta::hours(2)),
            Decision::Revoke {
                reason: "expired",
                node: None
            }
        );
        assert_eq!(
            decide(&t, &[], Some(TimeDelta::minutes(30)), now),
            Decision::Revoke {
                reason: "max-age",
                node: None
            }
        );
        assert_eq!(
            decide(&t, &[], Some(TimeDelta::hours(2)), now),
            Decision::Keep
        );
        for gone in ["revoking", "revoked", "expired", "deleted"] {
            assert_eq!(
                decide(
                    &facts(gone, Policy::RevokeAfterJoin),
                    &[join(true, true, true)],
                    None,
                    now
                ),
                Decision::Keep
            );
        }
    }

    #[test]
    fn policy_resolution() {
        let mut cfg = crate::k8s::BootstrapTokensConfig {
            revoke_after_join: true,
            max_age: None,
            keep_until_expiry: vec!["abcdef".into()],
        };
        assert_eq!(
            effective_policy(None, "abcdef", &cfg),
            Policy::KeepUntilExpiry
        );
        assert_eq!(
            effective_policy(None, "zzzzzz", &cfg),
            Policy::RevokeAfterJoin
        );
        assert_eq!(
            effective_policy(Some(Policy::RevokeAfterJoin), "abcdef", &cfg),
            Policy::RevokeAfterJoin
        );
        cfg.revoke_after_join = false;
        assert_eq!(
            effective_policy(None, "zzzzzz", &cfg),
            Policy::KeepUntilExpiry
        );
    }

    #[test]
    fn kubeadm_shape_roundtrips() {
        let (id, secret) = new_token();
        assert!(valid_id(&id));
        assert_eq!(secret.expose_secret().len(), 16);
        let spec = NewTokenSpec {
            ttl: Some(TimeDelta::hours(1)),
            usages: vec!["authentication".into(), "signing".into()],
            groups: vec![DEFAULT_GROUP.into()],
            description: Some("test".into()),
            policy: Some(Policy::KeepUntilExpiry),
        };
        let now = Utc::now();
        let s = kubeadm_secret(&id, &secret, &spec, now);
        assert_eq!(
            s.metadata.name.as_deref(),
            Some(format!("bootstrap-token-{id}").as_str())
        );
        let info = token_from_secret(&s).unwrap();
        assert_eq!(info.id, id);
        assert_eq!(info.usages, vec!["authentication", "signing"]);
        assert_eq!(info.groups, vec![DEFAULT_GROUP]);
        assert_eq!(info.policy_label, Some(Policy::KeepUntilExpiry));
        assert!(info.expiration.unwrap() > now);
        assert!(valid_group(DEFAULT_GROUP));
        assert!(!valid_group("system:masters"));
        assert!(!format!("{info:?}").contains(secret.expose_secret()));
    }

    #[test]
    fn csr_subjects() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:worker-1");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        assert_eq!(node_of_request(pem.as_bytes()).unwrap(), "worker-1");
        let mut q = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        q.distinguished_name
            .push(rcgen::DnType::CommonName, "admin");
        let pem = q.serialize_request(&key).unwrap().pem().unwrap();
        assert!(node_of_request(pem.as_bytes()).is_err());
        assert!(node_of_request(b"junk").is_err());
    }
}
