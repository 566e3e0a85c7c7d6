//! Authorization and audit, as methods of the handlers' shared state: who is
//! calling (`authenticate`: a client certificate's role, anonymous on plain
//! HTTP, or a bearer token through TokenReview), may they do this (`check`:
//! the role, or a SubjectAccessReview), and the audit record of every
//! mutating call, refusals included, under the request id.
//!
//! Reads start with [`Inner::authorize`]. Every mutating call goes through
//! [`Inner::mutating`], which runs the whole call in a task of its own, so a
//! client that goes away (a reset connection cancels the request's future)
//! cannot cut it between the action and its audit event:
//!
//! ```text
//!  handler: check input (pure) ─► Intent (what was asked, bounded) ─► mutating(req, intent, checked, work)
//!  task:    authenticate ─► refused? ─────────────────────────────┐
//!           input invalid? (400-class) ─────────────────────────────┤ audit (denied | failure), answer
//!           check role / SubjectAccessReview ─► refused? ────────────┘
//!           work(Call { caller, input, ticket })
//!             └─ the action commits its ticket's event in its own transaction
//!                (rotation request, etcd check, backup record, token revoked)
//!           ticket not written (failed, or not one transaction)? ─► audit it now
//! ```
//!
//! A new mutating endpoint: build its [`Intent`], check its input into a
//! `Result`, and pass its work to [`Inner::mutating`]; where the action is
//! one transaction, hand it `call.ticket` and have it commit the event with
//! [`crate::store::audit::Ticket::commit_with`].

use std::{future::Future, sync::Arc};

use tracing::Instrument;

use super::{
    auth::{self, Action, Caller, Principal},
    config::Role,
    context::Inner,
    extract::Req,
    problem::{HttpError, in_request},
};
use crate::store::audit::{self, NewEvent, Outcome, Ticket};

/// What a mutating call asked for, as the audit log keeps it: its action,
/// a bounded and sanitised copy of its target and reason (whatever the
/// caller sent, valid or not), and the name RBAC is asked about.
#[derive(Debug, Clone)]
pub struct Intent {
    action: Action,
    target: String,
    reason: Option<String>,
    rbac_name: Option<String>,
}

impl Intent {
    /// An intent to do `action` on `target` (bounded here).
    pub fn new(action: Action, target: &str) -> Self {
        Self {
            action,
            target: audit::bounded(target, audit::MAX_TARGET),
            reason: None,
            rbac_name: None,
        }
    }

    /// With the caller's reason (bounded here).
    pub fn reason(mut self, reason: Option<&str>) -> Self {
        self.reason = reason.map(|r| audit::bounded(r, audit::MAX_REASON));
        self
    }

    /// With the resource name a SubjectAccessReview names (a checked name only).
    pub fn rbac_name(mut self, name: Option<&str>) -> Self {
        self.rbac_name = name.map(str::to_string);
        self
    }
}

/// What a mutating call's work gets: the authorized caller, its checked
/// input, and the ticket its action commits its audit event with.
pub struct Call<I> {
    /// Who is calling (authorized for the action).
    pub caller: Caller,
    /// The checked input.
    pub input: I,
    /// The call's audit event, written once (see [`Ticket`]).
    pub ticket: Arc<Ticket>,
}

/// The outcome and details an error is audited with.
fn audited(err: &HttpError) -> (Outcome, serde_json::Value) {
    match err {
        HttpError::Forbidden(_) | HttpError::Unauthenticated(_) => (
            Outcome::Denied,
            serde_json::json!({ "error": err.to_string(), "status": err.kind().status().as_u16() }),
        ),
        _ => (
            Outcome::Failure,
            serde_json::json!({ "error": err.to_string(), "status": err.kind().status().as_u16() }),
        ),
    }
}

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
                if identity.common_names > 1 {
                    return Err(HttpError::Forbidden(format!(
                        "the client certificate's subject has {} common names; rekey refuses \
                         certificates with more than one CN (which one would name the role?)",
                        identity.common_names
                    )));
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

    /// Authenticates and authorizes a read (reads are not audited).
    pub(super) async fn authorize(
        &self,
        req: &Req,
        action: Action,
        target: Option<&str>,
    ) -> Result<Caller, HttpError> {
        debug_assert!(
            action.audit_name().is_none(),
            "{action:?} goes through mutating()"
        );
        let caller = self.authenticate(req).await?;
        self.check(&caller, action, target).await?;
        Ok(caller)
    }

    /// Runs a mutating call (see the module documentation): in a task of its
    /// own, authenticate, refuse invalid input (`checked`) and callers
    /// without the right, then `work`; every outcome, refusals included, is
    /// audited once under the request id with [`Intent`]'s bounded copy of
    /// what was asked. An outcome that cannot be recorded answers 500.
    pub(super) async fn mutating<I, T, F, Fut>(
        self: &Arc<Self>,
        req: Req,
        intent: Intent,
        checked: Result<I, HttpError>,
        work: F,
    ) -> Result<T, HttpError>
    where
        I: Send + 'static,
        T: Send + 'static,
        F: FnOnce(Call<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(T, serde_json::Value), HttpError>> + Send + 'static,
    {
        let action = intent.action;
        let request_id = req.request_id.clone();
        let name = action.audit_name().unwrap_or("unknown");
        let s = self.clone();
        let call = async move {
            let (actor, admitted) = match s.authenticate(&req).await {
                Err(e) => ("anonymous".to_string(), Err(e)),
                Ok(caller) => {
                    let actor = caller.actor.clone();
                    let admitted = match checked {
                        Err(e) => Err(e),
                        Ok(input) => s
                            .check(&caller, action, intent.rbac_name.as_deref())
                            .await
                            .map(|()| (caller, input)),
                    };
                    (actor, admitted)
                }
            };
            let ticket = Arc::new(Ticket::new(NewEvent {
                actor,
                action: name.into(),
                target: intent.target,
                outcome: Outcome::Success,
                reason: intent.reason,
                request_id: Some(req.request_id.clone()),
                details: serde_json::json!({}),
            }));
            let result = match admitted {
                Ok((caller, input)) => {
                    let call = Call {
                        caller,
                        input,
                        ticket: ticket.clone(),
                    };
                    work(call).await
                }
                Err(e) => Err(e),
            };
            if !ticket.is_written() {
                let (outcome, details) = match &result {
                    Ok((_, details)) => (Outcome::Success, details.clone()),
                    Err(e) => audited(e),
                };
                ticket.write(&s.api.store, outcome, details).await?;
            }
            result.map(|(value, _)| value)
        };
        // The task owns the call: dropping this request's future (the client
        // went away) no longer drops the work or its audit event.
        let call = in_request(request_id, call).instrument(tracing::Span::current());
        tokio::spawn(call)
            .await
            .map_err(|e| HttpError::internal("the request's task failed", e))?
    }
}
