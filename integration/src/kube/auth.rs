//! Authentication as the API server does it: static bearer tokens (the
//! harness's identities), service-account JWTs this stand-in signed (ES256,
//! checked for signature, expiry, audience, and a still-existing service
//! account and bound object), and bootstrap tokens (`[a-z0-9]{6}.[a-z0-9]{16}`
//! against `bootstrap-token-<id>` Secrets in `kube-system`).

use std::collections::{BTreeMap, HashMap};

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::store::{RESOURCES, ResourceType, World};

/// The issuer in every service-account token.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Audiences the API itself accepts (and the default for TokenRequest).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// e.g. `system:serviceaccount:rekey:rekey`.
    pub username: String,
    /// uid, when known.
    #[serde(default)]
    pub uid: String,
    /// Groups, including `system:authenticated`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with groups (`system:authenticated` added).
    pub fn new(username: impl Into<String>, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        Self {
            username: username.into(),
            uid: String::new(),
            groups,
            extra: BTreeMap::new(),
        }
    }

    /// The identity of a service account.
    pub fn service_account(ns: &str, name: &str) -> Self {
        Self::new(
            format!("system:serviceaccount:{ns}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{ns}"),
            ],
        )
    }
}

/// Claims of a service-account token (the fields Kubernetes puts in).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaClaims {
    /// Issuer.
    pub iss: String,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Token id.
    pub jti: String,
    /// Namespace, service account and bound object.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// Namespace of the service account.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: ObjRef,
    /// The Secret the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjRef>,
}

/// A name and uid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjRef {
    /// Name.
    pub name: String,
    /// uid.
    pub uid: String,
}

/// Signs and verifies service-account tokens; holds the static tokens.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// PEM public key, for tests that verify tokens themselves.
    pub public_key_pem: String,
    statics: HashMap<String, UserInfo>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("static_tokens", &self.statics.len())
            .finish()
    }
}

fn secret_rt() -> &'static ResourceType {
    RESOURCES
        .iter()
        .find(|r| r.resource == "secrets")
        .expect("secrets")
}

fn sa_rt() -> &'static ResourceType {
    RESOURCES
        .iter()
        .find(|r| r.resource == "serviceaccounts")
        .expect("serviceaccounts")
}

/// Decodes `data[key]` of a Secret object.
pub fn secret_data(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret["data"][key].as_str()?;
    String::from_utf8(STANDARD.decode(b64).ok()?).ok()
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `s` has the shape of a bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn bootstrap_token_format(s: &str) -> Option<(&str, &str)> {
    let (id, secret) = s.split_once('.')?;
    (id.len() == 6
        && secret.len() == 16
        && id.bytes().all(is_token_char)
        && secret.bytes().all(is_token_char))
    .then_some((id, secret))
}

/// Whether a group name is allowed in `auth-extra-groups`.
fn valid_bootstrap_group(g: &str) -> bool {
    g.strip_prefix("system:bootstrappers:").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 256
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
            && !rest.ends_with([':', '-'])
    })
}

impl Authenticator {
    /// A new signing key (ECDSA P-256).
    pub fn new() -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let encoding =
            EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("encoding key");
        let public_key_pem = kp.public_key_pem();
        let decoding = DecodingKey::from_ec_pem(public_key_pem.as_bytes()).expect("decoding key");
        Self {
            encoding,
            decoding,
            public_key_pem,
            statics: HashMap::new(),
        }
    }

    /// Registers a static bearer token.
    pub fn add_static(&mut self, token: String, user: UserInfo) {
        self.statics.insert(token, user);
    }

    /// Signs a service-account token.
    pub fn sign(&self, claims: &SaClaims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.encoding)
            .expect("signing")
    }

    /// Verifies a JWT's signature and expiry (not its audience).
    pub fn verify_jwt(&self, token: &str) -> Result<SaClaims, String> {
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_aud = false;
        v.set_issuer(&[ISSUER]);
        v.leeway = 0;
        jsonwebtoken::decode::<SaClaims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| format!("invalid bearer token: {e}"))
    }

    /// Authenticates a bearer token for `audiences` (the API's own when
    /// empty); returns the user and the audiences it was valid for.
    pub fn authenticate(
        &self,
        world: &World,
        token: &str,
        audiences: &[String],
        now: DateTime<Utc>,
    ) -> Result<(UserInfo, Vec<String>), String> {
        let api = [API_AUDIENCE.to_string()];
        let wanted: &[String] = if audiences.is_empty() {
            &api
        } else {
            audiences
        };
        if let Some(u) = self.statics.get(token) {
            return Ok((u.clone(), wanted.to_vec()));
        }
        if bootstrap_token_format(token).is_some() {
            return check_bootstrap_token(world, token, now).map(|u| (u, wanted.to_vec()));
        }
        let claims = self.verify_jwt(token)?;
        let matched: Vec<String> = wanted
            .iter()
            .filter(|a| claims.aud.contains(a))
            .cloned()
            .collect();
        if matched.is_empty() {
            return Err("invalid bearer token, token audiences are invalid".into());
        }
        let k = &claims.kubernetes;
        let sa = world
            .get(sa_rt(), &k.namespace, &k.serviceaccount.name)
            .ok_or_else(|| {
                format!(
                    "service account {}/{} has been deleted",
                    k.namespace, k.serviceaccount.name
                )
            })?;
        if !k.serviceaccount.uid.is_empty()
            && sa["metadata"]["uid"].as_str() != Some(&k.serviceaccount.uid)
        {
            return Err("service account uid does not match the token".into());
        }
        if let Some(s) = &k.secret {
            let secret = world
                .get(secret_rt(), &k.namespace, &s.name)
                .ok_or_else(|| {
                    format!(
                        "secret {}/{} bound to the token has been deleted",
                        k.namespace, s.name
                    )
                })?;
            if secret["metadata"]["uid"].as_str() != Some(&s.uid) {
                return Err("the secret bound to the token was replaced".into());
            }
        }
        let mut user = UserInfo::service_account(&k.namespace, &k.serviceaccount.name);
        user.uid = k.serviceaccount.uid.clone();
        Ok((user, matched))
    }
}

impl Default for Authenticator {
    fn default() -> Self {
        Self::new()
    }
}

/// The bootstrap-token authenticator: the token's shape, its Secret in
/// `kube-system`, the secret part, usage, expiry and extra groups, as
/// kube-apiserver's `bootstrap` authenticator checks them.
pub fn check_bootstrap_token(
    world: &World,
    token: &str,
    now: DateTime<Utc>,
) -> Result<UserInfo, String> {
    let (id, secret) = bootstrap_token_format(token)
        .ok_or_else(|| "bootstrap token does not match [a-z0-9]{6}.[a-z0-9]{16}".to_string())?;
    let name = format!("bootstrap-token-{id}");
    let s = world
        .get(secret_rt(), "kube-system", &name)
        .ok_or_else(|| format!("no secret kube-system/{name}"))?;
    if s["type"].as_str() != Some("bootstrap.kubernetes.io/token") {
        return Err(format!(
            "secret kube-system/{name} is not of type bootstrap.kubernetes.io/token"
        ));
    }
    if s["metadata"]["deletionTimestamp"].is_string() {
        return Err(format!("secret kube-system/{name} is being deleted"));
    }
    if secret_data(s, "token-id").as_deref() != Some(id) {
        return Err(format!(
            "secret kube-system/{name}: token-id does not match the name"
        ));
    }
    if secret_data(s, "token-secret").as_deref() != Some(secret) {
        return Err("bootstrap token secret does not match".into());
    }
    if secret_data(s, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!(
            "secret kube-system/{name} is not marked usage-bootstrap-authentication=true"
        ));
    }
    if let Some(exp) = secret_data(s, "expiration") {
        let t = DateTime::parse_from_rfc3339(&exp).map_err(|e| {
            format!("secret kube-system/{name}: expiration `{exp}` is not RFC 3339: {e}")
        })?;
        if t <= now {
            return Err(format!("bootstrap token {id} expired at {exp}"));
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    if let Some(extra) = secret_data(s, "auth-extra-groups") {
        for g in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if !valid_bootstrap_group(g) {
                return Err(format!(
                    "secret kube-system/{name}: auth-extra-groups `{g}` is not system:bootstrappers:*"
                ));
            }
            groups.push(g.to_string());
        }
    }
    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
    Ok(UserInfo::new(format!("system:bootstrap:{id}"), &refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shapes() {
        assert!(bootstrap_token_format("abcdef.0123456789abcdef").is_some());
        assert!(bootstrap_token_format("ABCDEF.0123456789abcdef").is_none());
        assert!(bootstrap_token_format("abcde.0123456789abcdef").is_none());
        assert!(bootstrap_token_format("abcdef0123456789abcdef").is_none());
        assert!(valid_bootstrap_group(
            "system:bootstrappers:kubeadm:default-node-token"
        ));
        assert!(!valid_bootstrap_group("system:masters"));
    }
}
