//! Authorization and audit, as methods of the handlers' shared state: who is
//! calling (`authenticate`: a client certificate's role, anonymous on plain
//! HTTP, or a bearer token through TokenReview), may they do this (`check`:
//! the role, or a SubjectAccessReview), and the audit record of every
//! mutating call's outcome, denials included, under the request id.
//!
//! Each handler starts with `authorize` (authenticate, then check; a refused
//! mutating call is audited as denied); mutating handlers pass their work's
//! result through `audit`, so a call that cannot be recorded fails.

use super::{
    auth::{self, Action, Caller, Principal},
    config::Role,
    context::Inner,
    extract::Req,
    problem::HttpError,
};
use crate::store::audit::{NewEvent, Outcome};

impl Inner {
    async fn authenticate(&self, req: &Req) -> Result<Caller, HttpError> {
        if let Some(identity) = &req.peer.cert {
            let role = auth::role_of(&self.roles, identity.common_name.as_deref());
            return Ok(Caller {
                actor: identity.subject.clone(),
                principal: Principal::Certificate {
                    identity: identity.clone(),
                    role,
                },
            });
        }
        let Some(token) = &req.bearer else {
            if self.plain_http {
                return Ok(Caller {
                    actor: auth::ANONYMOUS.into(),
                    principal: Principal::Anonymous,
                });
            }
            return Err(HttpError::Unauthenticated(if self.tokens.is_some() {
                "present a client certificate signed by [api].client_ca or an \
                 `Authorization: Bearer` ServiceAccount token"
                    .into()
            } else {
                "present a client certificate signed by [api].client_ca".into()
            }));
        };
        let Some(tokens) = &self.tokens else {
            return Err(HttpError::Unauthenticated(
                "bearer tokens are not accepted here (api.token_review = false); \
                 present a client certificate"
                    .into(),
            ));
        };
        match tokens.authenticate(token).await {
            Ok(Some(user)) => Ok(Caller {
                actor: user.username.clone(),
                principal: Principal::Token(user),
            }),
            Ok(None) => Err(HttpError::Unauthenticated(
                "the bearer token was not accepted by TokenReview".into(),
            )),
            Err(e) => Err(HttpError::internal(
                "could not verify the bearer token with the Kubernetes API",
                e,
            )),
        }
    }

    async fn check(
        &self,
        caller: &Caller,
        action: Action,
        target: Option<&str>,
    ) -> Result<(), HttpError> {
        match &caller.principal {
            Principal::Certificate { identity, role } => {
                if action.allowed_for(*role) {
                    return Ok(());
                }
                let cn = identity.common_name.as_deref().unwrap_or("(none)");
                Err(HttpError::Forbidden(match role {
                    None => {
                        format!("certificate subject CN `{cn}` has no role: add it to [api].roles")
                    }
                    Some(r) => format!(
                        "role `{}` of CN `{cn}` may not do this; it needs `{}`",
                        r.as_str(),
                        action.min_role().as_str()
                    ),
                }))
            }
            Principal::Anonymous => {
                if action.allowed_for(Some(Role::Viewer)) {
                    Ok(())
                } else {
                    Err(HttpError::Forbidden(
                        "anonymous callers on plain HTTP are viewers; use mutual TLS (or a bearer token) for this".into(),
                    ))
                }
            }
            Principal::Token(user) => {
                let tokens = self.tokens.as_ref().ok_or_else(|| {
                    HttpError::internal("token authorization is not configured", "no authenticator")
                })?;
                match tokens.authorize(user, action, target).await {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        let r = action.rbac();
                        Err(HttpError::Forbidden(format!(
                            "RBAC does not allow `{}` to {} {}{} in API group {}",
                            user.username,
                            r.verb,
                            r.resource,
                            r.subresource.map(|s| format!("/{s}")).unwrap_or_default(),
                            auth::RBAC_GROUP
                        )))
                    }
                    Err(e) => Err(HttpError::internal(
                        "could not check access with the Kubernetes API",
                        e,
                    )),
                }
            }
        }
    }

    /// Authenticates and authorizes; a refused mutating call is audited as denied.
    pub(super) async fn authorize(
        &self,
        req: &Req,
        action: Action,
        target: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Caller, HttpError> {
        let (actor, result) = match self.authenticate(req).await {
            Ok(caller) => (
                caller.actor.clone(),
                self.check(&caller, action, target).await.map(|()| caller),
            ),
            Err(e) => ("anonymous".to_string(), Err(e)),
        };
        if let (Err(err), Some(name)) = (&result, action.audit_name())
            && matches!(err, HttpError::Forbidden(_) | HttpError::Unauthenticated(_))
        {
            let event = NewEvent {
                actor,
                action: name.into(),
                target: target.unwrap_or("").into(),
                outcome: Outcome::Denied,
                reason: reason.map(str::to_string),
                request_id: Some(req.request_id.clone()),
                details: serde_json::json!({ "error": err.to_string() }),
            };
            self.api.store.audit(event).await?;
        }
        result
    }

    /// Records how a mutating call ended; an unrecordable call fails.
    pub(super) async fn audit<T>(
        &self,
        req: &Req,
        caller: &Caller,
        action: Action,
        target: &str,
        reason: Option<&str>,
        result: Result<(T, serde_json::Value), HttpError>,
    ) -> Result<T, HttpError> {
        let (outcome, details) = match &result {
            Ok((_, d)) => (Outcome::Success, d.clone()),
            Err(e @ (HttpError::Forbidden(_) | HttpError::Unauthenticated(_))) => (
                Outcome::Denied,
                serde_json::json!({ "error": e.to_string() }),
            ),
            Err(e) => (
                Outcome::Failure,
                serde_json::json!({ "error": e.to_string(), "status": e.kind().status().as_u16() }),
            ),
        };
        let event = NewEvent {
            actor: caller.actor.clone(),
            action: action.audit_name().unwrap_or("unknown").into(),
            target: target.into(),
            outcome,
            reason: reason.map(str::to_string),
            request_id: Some(req.request_id.clone()),
            details,
        };
        self.api.store.audit(event).await?;
        result.map(|(v, _)| v)
    }
}
