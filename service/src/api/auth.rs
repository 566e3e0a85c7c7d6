//! Who is calling, and may they do this?
//!
//! Two ways in, both ending in a [`Caller`] with an audit name:
//!
//! ```text
//!  TLS handshake ── client cert (verified against [api].client_ca) ──► subject CN ──► role (roles = [...])
//!  Authorization: Bearer <ServiceAccount token>
//!        └─► TokenReview (authn) ──► user ──► SubjectAccessReview per action (authz, like kube-rbac-proxy)
//! ```
//!
//! Every endpoint is an [`Action`] with the least [`Role`] it needs and the
//! RBAC attributes (`rekey.io` API group) a bearer caller needs. The decisions
//! ([`Action::allowed_for`], [`role_of`]) are pure; only [`TokenAuthenticator`]
//! talks to the Kubernetes API.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::config::{Role, RoleMapping};

/// The API group of the RBAC attributes bearer callers are checked against.
pub const RBAC_GROUP: &str = "rekey.io";

/// How long a successful TokenReview is trusted before asking again (like
/// kube-rbac-proxy's token cache): short, so a revoked token stops working soon.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);

/// At most this many tokens are cached; the cache is cleared when full.
const TOKEN_CACHE_MAX: usize = 1024;

/// The identity from a verified client certificate (set per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject as text, e.g. `CN=ops, O=rekey` (the audit actor).
    pub subject: String,
    /// The subject's common name, if it has exactly one (what `roles` map).
    pub common_name: Option<String>,
    /// How many common names the subject has: a certificate with more than
    /// one is refused (403), whatever its CNs' roles.
    pub common_names: usize,
}

/// Per-connection facts handed to every request on that connection.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The verified client certificate's identity, if one was presented.
    pub cert: Option<CertIdentity>,
}

/// Reads the identity from a DER certificate (already verified by rustls).
pub fn identity_from_der(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let common_names = subject.iter_common_name().count();
    let common_name = subject
        .iter_common_name()
        .next()
        .filter(|_| common_names == 1)
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Some(CertIdentity {
        subject: subject.to_string(),
        common_name,
        common_names,
    })
}

/// The role of a certificate common name (the highest if listed twice).
pub fn role_of(roles: &[RoleMapping], common_name: Option<&str>) -> Option<Role> {
    let cn = common_name?;
    roles
        .iter()
        .filter(|m| m.subject_cn == cn)
        .map(|m| m.role)
        .max()
}

/// What an authenticated caller is.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A client certificate, with the role `roles` gives its CN (None: unmapped).
    Certificate {
        /// Identity from the certificate.
        identity: CertIdentity,
        /// Its role.
        role: Option<Role>,
    },
    /// A bearer token TokenReview accepted.
    Token(TokenUser),
    /// Nobody in particular, on a plain-HTTP listener (`insecure_plain_http`): a viewer.
    Anonymous,
}

/// The audit name of callers on a plain-HTTP listener without a token.
pub const ANONYMOUS: &str = "anonymous (plain HTTP)";

/// A caller: who (for the audit log) and how they proved it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Audit name: the certificate subject or the Kubernetes user name.
    pub actor: String,
    /// The proof.
    pub principal: Principal,
}

/// The user TokenReview found behind a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    /// e.g. `system:serviceaccount:ci:deployer`.
    pub username: String,
    /// The user's uid.
    pub uid: Option<String>,
    /// The user's groups.
    pub groups: Vec<String>,
    /// Extra attributes, passed on to SubjectAccessReview.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// Every operation of the API, for authorization and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `GET /v1/credentials`
    ListCredentials,
    /// `GET /v1/credentials/{name}`
    GetCredential,
    /// `POST /v1/credentials/{name}/rotate`
    RotateCredential,
    /// `GET /v1/rotations/{id}`
    GetRotation,
    /// `GET /v1/bootstrap-tokens`
    ListBootstrapTokens,
    /// `POST /v1/bootstrap-tokens/{id}/revoke`
    RevokeBootstrapToken,
    /// `POST /v1/etcd/verify`
    VerifyEtcd,
    /// `POST /v1/etcd/migrate`
    MigrateEtcd,
    /// `GET /v1/backups`
    ListBackups,
    /// `POST /v1/backups`
    RunBackup,
    /// `GET /v1/audit`
    ReadAudit,
    /// `GET /metrics` on the API listener.
    ReadMetrics,
    /// `GET /v1/issuers`, `GET /v1/issuers/{name}`
    ReadIssuers,
    /// `POST /v1/issuers/{name}/rotate`
    RotateIssuer,
}

/// RBAC attributes of an action for SubjectAccessReview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RbacAttributes {
    /// Resource in the `rekey.io` group.
    pub resource: &'static str,
    /// Subresource, if any.
    pub subresource: Option<&'static str>,
    /// Verb.
    pub verb: &'static str,
}

impl Action {
    /// The least role that may do it.
    pub fn min_role(self) -> Role {
        match self {
            Self::ListCredentials
            | Self::GetCredential
            | Self::GetRotation
            | Self::ListBootstrapTokens
            | Self::ListBackups
            | Self::ReadAudit
            | Self::ReadMetrics
            | Self::ReadIssuers => Role::Viewer,
            Self::RotateCredential | Self::RevokeBootstrapToken => Role::Operator,
            // Verification decrypts stored secrets; a backup copies all of etcd.
            // A storage migration rewrites every stale object.
            // A CA rotation re-issues every leaf of the issuer.
            Self::VerifyEtcd | Self::MigrateEtcd | Self::RunBackup | Self::RotateIssuer => {
                Role::Admin
            }
        }
    }

    /// The audit `action` of a mutating call; `None` for reads.
    pub fn audit_name(self) -> Option<&'static str> {
        match self {
            Self::RotateCredential => Some("credential.rotate"),
            Self::RevokeBootstrapToken => Some("bootstrap_token.revoke"),
            Self::VerifyEtcd => Some("etcd.verify"),
            Self::MigrateEtcd => Some("etcd.migrate"),
            Self::RunBackup => Some("backup.run"),
            Self::RotateIssuer => Some("ca.rotate"),
            _ => None,
        }
    }

    /// What a bearer caller needs in RBAC (API group `rekey.io`, cluster scope).
    pub fn rbac(self) -> RbacAttributes {
        let a = |resource, subresource, verb| RbacAttributes {
            resource,
            subresource,
            verb,
        };
        match self {
            Self::ListCredentials => a("credentials", None, "list"),
            Self::GetCredential => a("credentials", None, "get"),
            Self::RotateCredential => a("credentials", Some("rotate"), "create"),
            Self::GetRotation => a("rotations", None, "get"),
            Self::ListBootstrapTokens => a("bootstraptokens", None, "list"),
            Self::RevokeBootstrapToken => a("bootstraptokens", Some("revoke"), "create"),
            Self::VerifyEtcd => a("etcdverifications", None, "create"),
            Self::MigrateEtcd => a("etcdmigrations", None, "create"),
            Self::ListBackups => a("backups", None, "list"),
            Self::RunBackup => a("backups", None, "create"),
            Self::ReadAudit => a("auditevents", None, "list"),
            Self::ReadMetrics => a("metrics", None, "get"),
            Self::ReadIssuers => a("issuers", None, "get"),
            Self::RotateIssuer => a("issuers", Some("rotate"), "create"),
        }
    }

    /// Whether a certificate role allows it (pure; tokens go through SAR).
    pub fn allowed_for(self, role: Option<Role>) -> bool {
        role.is_some_and(|r| r >= self.min_role())
    }
}

/// Errors asking the Kubernetes API about a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The API server could not be asked.
    #[error("asking the Kubernetes API ({what}): {source}")]
    Kube {
        /// TokenReview or SubjectAccessReview.
        what: &'static str,
        /// kube's error.
        source: kube::Error,
    },
}

/// Accepted tokens by sha256, with when they were reviewed.
type TokenCache = HashMap<[u8; 32], (Instant, TokenUser)>;

/// Verifies bearer tokens with TokenReview and authorizes with SubjectAccessReview.
#[derive(Clone)]
pub struct TokenAuthenticator {
    client: kube::Client,
    audiences: Vec<String>,
    cache: Arc<Mutex<TokenCache>>,
}

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthenticator")
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl TokenAuthenticator {
    /// Uses `client` (in-cluster config or a kubeconfig) for reviews.
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        Self {
            client,
            audiences,
            cache: Arc::default(),
        }
    }

    /// Who the token belongs to, or `None` if TokenReview does not accept it.
    pub async fn authenticate(&self, token: &SecretString) -> Result<Option<TokenUser>, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.expose_secret().as_bytes()).into();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, user)) = cache.get(&key)
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(Some(user.clone()));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.expose_secret().to_string(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|source| AuthError::Kube {
                what: "TokenReview",
                source,
            })?;
        let user = answer.status.and_then(|s| {
            if s.authenticated != Some(true) || s.error.as_deref().is_some_and(|e| !e.is_empty()) {
                return None;
            }
            let u = s.user?;
            Some(TokenUser {
                username: u.username.filter(|n| !n.is_empty())?,
                uid: u.uid,
                groups: u.groups.unwrap_or_default(),
                extra: u.extra.unwrap_or_default(),
            })
        });
        if let Some(user) = &user
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), user.clone()));
        }
        Ok(user)
    }

    /// Whether RBAC lets `user` do `action` (on `name`, when the action has a target).
    pub async fn authorize(
        &self,
        user: &TokenUser,
        action: Action,
        name: Option<&str>,
    ) -> Result<bool, AuthError> {
        let review = access_review(user, action, name);
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|source| AuthError::Kube {
                what: "SubjectAccessReview",
                source,
            })?;
        Ok(answer
            .status
            .is_some_and(|s| s.allowed && s.denied != Some(true)))
    }
}

/// The SubjectAccessReview for `user` doing `action` (pure).
pub fn access_review(user: &TokenUser, action: Action, name: Option<&str>) -> SubjectAccessReview {
    let rbac = action.rbac();
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.username.clone()),
            uid: user.uid.clone(),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(RBAC_GROUP.into()),
                resource: Some(rbac.resource.into()),
                subresource: rbac.subresource.map(Into::into),
                verb: Some(rbac.verb.into()),
                name: name.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The token of an `Authorization: Bearer` header, if that is what it is.
pub fn bearer_token(header: Option<&str>) -> Option<SecretString> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
        .then(|| SecretString::from(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{CertAuthority, KeyType};
    use chrono::{TimeDelta, Utc};

    fn mapping(cn: &str, role: Role) -> RoleMapping {
        RoleMapping {
            subject_cn: cn.into(),
            role,
        }
    }

    #[test]
    fn roles_are_ordered_and_mapped_by_cn() {
        let roles = vec![
            mapping("ops", Role::Operator),
            mapping("auditor", Role::Viewer),
            mapping("ops", Role::Admin),
        ];
        assert_eq!(role_of(&roles, Some("ops")), Some(Role::Admin));
        assert_eq!(role_of(&roles, Some("auditor")), Some(Role::Viewer));
        assert_eq!(role_of(&roles, Some("Ops")), None);
        assert_eq!(role_of(&roles, None), None);
        assert!(Action::RotateCredential.allowed_for(Some(Role::Operator)));
        assert!(Action::RotateCredential.allowed_for(Some(Role::Admin)));
        assert!(!Action::RotateCredential.allowed_for(Some(Role::Viewer)));
        assert!(!Action::ListCredentials.allowed_for(None));
        assert!(!Action::RunBackup.allowed_for(Some(Role::Operator)));
        assert!(Action::ReadAudit.allowed_for(Some(Role::Viewer)));
    }

    #[test]
    fn every_mutating_action_is_audited() {
        for a in [
            Action::RotateCredential,
            Action::RevokeBootstrapToken,
            Action::VerifyEtcd,
            Action::MigrateEtcd,
            Action::RunBackup,
        ] {
            assert!(a.audit_name().is_some(), "{a:?}");
            assert_eq!(a.rbac().verb, "create", "{a:?}");
        }
        assert!(Action::ListCredentials.audit_name().is_none());
    }

    #[test]
    fn identity_comes_from_the_subject() {
        let now = Utc::now();
        let (ca, _) =
            CertAuthority::generate("test CA", KeyType::EcdsaP256, TimeDelta::days(1), now)
                .unwrap();
        let spec = crate::api::dev::client_spec("ops", "/nonexistent".into());
        let leaf = ca.issue(&spec, now).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let id = identity_from_der(&pem.contents).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("ops"));
        assert!(id.subject.contains("CN=ops"), "{}", id.subject);
        assert!(identity_from_der(b"not a certificate").is_none());
    }

    #[test]
    fn subject_access_review_names_the_action() {
        let user = TokenUser {
            username: "system:serviceaccount:ci:deployer".into(),
            uid: Some("u1".into()),
            groups: vec!["system:serviceaccounts".into()],
            extra: Default::default(),
        };
        let sar = access_review(&user, Action::RotateCredential, Some("cert/a/b"));
        let attrs = sar.spec.resource_attributes.unwrap();
        assert_eq!(attrs.group.as_deref(), Some("rekey.io"));
        assert_eq!(attrs.resource.as_deref(), Some("credentials"));
        assert_eq!(attrs.subresource.as_deref(), Some("rotate"));
        assert_eq!(attrs.verb.as_deref(), Some("create"));
        assert_eq!(attrs.name.as_deref(), Some("cert/a/b"));
        assert_eq!(
            sar.spec.user.as_deref(),
            Some("system:serviceaccount:ci:deployer")
        );
    }

    #[test]
    fn bearer_header_parsing() {
        assert!(bearer_token(Some("Bearer abc")).is_some());
        assert!(bearer_token(Some("bearer  abc ")).is_some());
        assert!(bearer_token(Some("Basic abc")).is_none());
        assert!(bearer_token(Some("Bearer ")).is_none());
        assert!(bearer_token(None).is_none());
        let t = bearer_token(Some("Bearer s3cret")).unwrap();
        assert_eq!(t.expose_secret(), "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
