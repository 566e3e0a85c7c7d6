//! The router, its handlers and middleware, and the OpenAPI document.
//!
//! Each handler starts with [`Shared::authorize`] (authenticate, then check
//! the [`Action`]); mutating handlers run inside an [`Audit`] so that every
//! outcome, denials included, lands in `audit_events` with the request id.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequestParts, MatchedPath, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::inventory::{CredentialList, CredentialSummary};
use super::{
    ApiConfig, ApiError, ApiState,
    auth::{self, Action, Caller, PeerInfo, Principal, TokenAuthenticator},
    problem::{HttpError, PROBLEM_JSON, Problem, ProblemType},
};
use crate::store::{
    audit::{Filter, NewEvent, Outcome},
    credentials::Credential,
    rotations::{RequestOutcome, Rotation},
};

/// The channel the engine notifies (payload: the rotation id) when a rotation finishes.
pub const ROTATION_DONE_CHANNEL: &str = crate::store::engine::DONE_CHANNEL;

/// How often `?wait=true` re-reads a rotation when no notification arrives.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// `/readyz` gives the database this long to answer.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest accepted `reason`, in bytes.
const MAX_REASON: usize = 1024;

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Rotations shown with a credential.
const RECENT_ROTATIONS: i64 = 10;

/// The request id header (set on every response).
pub const REQUEST_ID: &str = "x-request-id";

/// What handlers share.
pub type Shared = Arc<Inner>;

/// Handler state.
pub struct Inner {
    api: ApiState,
    roles: Vec<super::RoleMapping>,
    tokens: Option<TokenAuthenticator>,
    plain_http: bool,
    wait_timeout: Duration,
    in_flight: Arc<Semaphore>,
    done: crate::store::listen::Notifications,
    inventory: super::inventory::InventoryCache,
}

/// The request id of the current request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Builds the admin API router.
pub fn router(
    state: ApiState,
    config: &ApiConfig,
    shutdown: CancellationToken,
) -> Result<Router, ApiError> {
    let tokens = if config.token_review {
        let client = state.kube.clone().ok_or(ApiError::NoKubeClient)?;
        Some(TokenAuthenticator::new(
            client,
            config.token_audiences.clone(),
        ))
    } else {
        None
    };
    let done = crate::store::listen::listen(&state.store, ROTATION_DONE_CHANNEL, shutdown);
    let shared: Shared = Arc::new(Inner {
        api: state,
        roles: config.roles.clone(),
        tokens,
        plain_http: config.insecure_plain_http,
        wait_timeout: config.wait_timeout.get(),
        in_flight: Arc::new(Semaphore::new(config.max_concurrent_requests)),
        done,
        inventory: Default::default(),
    });
    let limit = config.max_body_size.0 as usize;
    Ok(Router::new()
        .route("/v1/credentials", get(list_credentials))
        .route("/v1/credentials/{name}", get(get_credential))
        .route("/v1/credentials/{name}/rotate", post(rotate_credential))
        .route("/v1/rotations/{id}", get(get_rotation))
        .route("/v1/bootstrap-tokens", get(list_bootstrap_tokens))
        .route(
            "/v1/bootstrap-tokens/{id}/revoke",
            post(revoke_bootstrap_token),
        )
        .route("/v1/etcd/verify", post(verify_etcd))
        .route("/v1/backups", get(list_backups).post(run_backup))
        .route("/v1/audit", get(list_audit))
        .route("/metrics", get(metrics_authed))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            limit_in_flight,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout.get(),
        ))
        .layer(middleware::from_fn(render_problems))
        .layer(middleware::from_fn(request_id))
        .with_state(shared))
}

/// The plain-HTTP metrics listener: `/metrics`, `/healthz`, `/readyz`, no auth.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_open))
        .route("/healthz", get(healthz_plain))
        .route("/readyz", get(readyz_plain))
        .fallback(not_found)
        .layer(middleware::from_fn(render_problems))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

// ---------------------------------------------------------------- middleware

/// Whether a caller's `x-request-id` is kept (else one is made).
pub fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Takes the caller's `x-request-id` if sane, else makes one; echoes it; counts the request.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("rekey_api_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("rekey_api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Every error response leaves as `application/problem+json` with the request id.
async fn render_problems(req: Request, next: Next) -> Response {
    let id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.extensions().get::<KeepBody>().is_some()
    {
        return resp;
    }
    let problem = match resp.extensions_mut().remove::<Problem>() {
        Some(p) => p,
        None => {
            let is_problem = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
            if is_problem {
                return resp;
            }
            let kind = ProblemType::from_status(status);
            let detail = match status {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    "the request body is larger than the server accepts ([api].max_body_size)"
                        .to_string()
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    "the request took longer than [api].request_timeout".to_string()
                }
                StatusCode::METHOD_NOT_ALLOWED => {
                    "this method is not allowed on this resource (see the Allow header)".into()
                }
                s => s.canonical_reason().unwrap_or("error").to_string(),
            };
            let mut p = Problem::new(kind, detail);
            p.status = status.as_u16();
            p
        }
    };
    let problem = Problem {
        instance: Some(path),
        request_id: id,
        ..problem
    };
    problem.into_response_with(resp)
}

/// Refuses requests beyond `max_concurrent_requests` with 503 instead of queueing.
async fn limit_in_flight(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let Ok(_permit) = s.in_flight.clone().try_acquire_owned() else {
        return HttpError::Unavailable(
            "too many requests in flight ([api].max_concurrent_requests); retry shortly".into(),
        )
        .into_response();
    };
    next.run(req).await
}

async fn not_found(uri: axum::http::Uri) -> HttpError {
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/v1/credentials/")
        && rest.contains('/')
        && !rest.ends_with("/rotate")
    {
        return HttpError::NotFound(
            "no such route: credential names containing `/` must be URL-encoded, \
             e.g. /v1/credentials/cert%2Fdefault%2Fweb-tls"
                .into(),
        );
    }
    HttpError::NotFound(format!("no route for {path}"))
}

async fn method_not_allowed() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

// ---------------------------------------------------------------- extractors

/// `Path` whose rejection is a problem document.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(HttpError))]
pub struct PathParam<T>(pub T);

/// `Query` whose rejection is a problem document.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(HttpError))]
pub struct QueryParams<T>(pub T);

impl From<axum::extract::rejection::PathRejection> for HttpError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for HttpError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

/// Facts about the request every handler needs.
pub struct Req {
    peer: PeerInfo,
    request_id: String,
    bearer: Option<SecretString>,
}

impl<S: Send + Sync> FromRequestParts<S> for Req {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            peer: parts
                .extensions
                .get::<PeerInfo>()
                .cloned()
                .unwrap_or_default(),
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            bearer: auth::bearer_token(
                parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            ),
        })
    }
}

// ---------------------------------------------------------------- auth + audit

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
                if action.allowed_for(Some(super::Role::Viewer)) {
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
    async fn authorize(
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
    async fn audit<T>(
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

// ---------------------------------------------------------------- views

/// A tracked credential.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    /// Unique name, e.g. `cert/default/web-tls`.
    pub name: String,
    /// `certificate`, `service_account_token` or `bootstrap_token`.
    pub kind: String,
    /// `valid`, `expired`, `failing`, `pending`, `no-expiry` or `revoked`.
    pub state: String,
    /// Start of the current version's validity.
    pub not_before: Option<DateTime<Utc>>,
    /// End of the current version's validity.
    pub not_after: Option<DateTime<Utc>>,
    /// When the engine will rotate it next.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Why then: `schedule`, `renew_fraction`, `renew_before`, `manual`, ...
    pub next_rotation_reason: Option<String>,
    /// `config`, `api`, `scan` or `discovered`.
    pub source: String,
    /// Rotated by rekey (false: tracked for expiry only).
    pub managed: bool,
    /// Cron schedule, if any.
    pub schedule: Option<String>,
    /// Id of the current published version.
    pub current_version: Option<i64>,
    /// Consecutive failed rotations.
    pub failures: i32,
    /// The last rotation error, while failing.
    pub last_error: Option<String>,
    /// The declared spec.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// Where it is published.
    #[schema(value_type = Object)]
    pub sink: serde_json::Value,
    /// When first tracked.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl CredentialView {
    fn from_stored(c: Credential, now: DateTime<Utc>) -> Self {
        Self {
            state: c.state(now).as_str().to_string(),
            name: c.name,
            kind: c.kind,
            not_before: c.not_before,
            not_after: c.not_after,
            next_rotation_at: c.next_rotation_at,
            next_rotation_reason: c.next_rotation_reason,
            source: c.source,
            managed: c.managed,
            schedule: c.schedule,
            current_version: c.current_version,
            failures: c.failures,
            last_error: c.last_error,
            spec: c.spec,
            sink: c.sink,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// One credential and its latest rotations.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CredentialDetail {
    /// The credential.
    #[serde(flatten)]
    pub credential: CredentialView,
    /// Its latest rotations, newest first.
    pub recent_rotations: Vec<RotationView>,
}

/// A rotation attempt.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotationView {
    /// Rotation id.
    pub id: Uuid,
    /// The credential's name.
    pub credential: String,
    /// `schedule`, `expiry`, `manual`, `join` or `startup`.
    pub trigger: String,
    /// Who asked.
    pub requested_by: String,
    /// Why.
    pub reason: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `abandoned`.
    pub status: String,
    /// True once it has succeeded, failed or been abandoned.
    pub finished: bool,
    /// The version it produced.
    pub version_id: Option<i64>,
    /// The replica that ran it.
    pub replica: Option<String>,
    /// The due time it served.
    pub due_at: Option<DateTime<Utc>>,
    /// When requested.
    pub requested_at: DateTime<Utc>,
    /// When the engine started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<Rotation> for RotationView {
    fn from(r: Rotation) -> Self {
        Self {
            finished: r.is_finished(),
            id: r.id,
            credential: r.credential,
            trigger: r.trigger,
            requested_by: r.requested_by,
            reason: r.reason,
            status: r.status,
            version_id: r.version_id,
            replica: r.replica,
            due_at: r.due_at,
            requested_at: r.requested_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            error: r.error,
        }
    }
}

/// Body of `POST /v1/credentials/{name}/rotate` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Why, for the audit record (at most 1024 bytes).
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
}

/// Query of `POST /v1/credentials/{name}/rotate`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RotateQuery {
    /// Answer only when the rotation has finished (or `[api].wait_timeout` passed: then 202).
    pub wait: Option<bool>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this actor (certificate subject or Kubernetes user).
    pub actor: Option<String>,
    /// Only this action, e.g. `credential.rotate`.
    pub action: Option<String>,
    /// Only this target, e.g. a credential name.
    pub target: Option<String>,
    /// Only events after this id (the `next_after` of the previous page).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// An audit event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEventView {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who: certificate subject, Kubernetes user, or `rekey/<replica>`.
    pub actor: String,
    /// What, e.g. `credential.rotate`.
    pub action: String,
    /// On what.
    pub target: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Why (from the caller).
    pub reason: Option<String>,
    /// The API request id.
    pub request_id: Option<String>,
    /// More facts (never secrets).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// A page of audit events, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The events.
    pub events: Vec<AuditEventView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<i64>,
}

/// `/healthz`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
}

/// `/readyz`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// All of the below.
    pub ready: bool,
    /// Postgres answers and every migration is applied.
    pub database: bool,
    /// The rotation engine is running.
    pub engine: bool,
}

// ---------------------------------------------------------------- handlers

#[utoipa::path(get, path = "/v1/credentials", tag = "credentials",
    responses((status = 200, description = "Every tracked credential, by name", body = CredentialList)))]
async fn list_credentials(State(s): State<Shared>, req: Req) -> Result<Response, HttpError> {
    s.authorize(&req, Action::ListCredentials, None, None)
        .await?;
    let body = s.inventory.body(&s.api.store, Utc::now()).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/credentials/{name}", tag = "credentials",
    params(("name" = String, Path, description = "Credential name, URL-encoded (`cert%2Fdefault%2Fweb-tls`)", min_length = 1, max_length = 253)),
    responses(
        (status = 200, description = "The credential and its latest rotations", body = CredentialDetail),
        (status = 404, description = "No credential of that name", body = Problem, content_type = "application/problem+json")))]
async fn get_credential(
    State(s): State<Shared>,
    req: Req,
    PathParam(name): PathParam<String>,
) -> Result<Json<CredentialDetail>, HttpError> {
    s.authorize(&req, Action::GetCredential, Some(&name), None)
        .await?;
    let Some(c) = s.api.store.credential(&name).await? else {
        return Err(HttpError::NotFound(format!("no credential named `{name}`")));
    };
    let recent_rotations = s
        .api
        .store
        .rotations_of(&name, RECENT_ROTATIONS)
        .await?
        .into_iter()
        .map(RotationView::from)
        .collect();
    Ok(Json(CredentialDetail {
        credential: CredentialView::from_stored(c, Utc::now()),
        recent_rotations,
    }))
}

/// Parses an optional JSON body: empty is `None`; anything else must be JSON.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<T>, HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    if !json {
        return Err(HttpError::UnsupportedMediaType(
            "send the body as `Content-Type: application/json`".into(),
        ));
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| HttpError::BadRequest(format!("invalid JSON body: {e}")))
}

#[utoipa::path(post, path = "/v1/credentials/{name}/rotate", tag = "credentials",
    params(
        ("name" = String, Path, description = "Credential name, URL-encoded", min_length = 1, max_length = 253),
        RotateQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key get the same rotation", max_length = 255)),
    request_body(content = Option<RotateRequest>, content_type = "application/json", description = "Optional reason for the audit record"),
    responses(
        (status = 200, description = "`?wait=true`: the rotation has finished", body = RotationView,
            headers(("Location" = String, description = "/v1/rotations/{id}"))),
        (status = 202, description = "Queued (or joined the rotation already in flight)", body = RotationView,
            headers(("Location" = String, description = "/v1/rotations/{id}"))),
        (status = 404, description = "No managed credential of that name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key was used for another credential", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json")))]
async fn rotate_credential(
    State(s): State<Shared>,
    req: Req,
    PathParam(name): PathParam<String>,
    QueryParams(query): QueryParams<RotateQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let action = Action::RotateCredential;
    let parsed = parse_body::<RotateRequest>(&headers, &body);
    let reason = parsed
        .as_ref()
        .ok()
        .and_then(|b| b.as_ref())
        .and_then(|b| b.reason.clone())
        .filter(|r| !r.trim().is_empty());
    let caller = s
        .authorize(&req, action, Some(&name), reason.as_deref())
        .await?;
    let result = async {
        parsed?;
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
            return Err(HttpError::BadRequest(format!(
                "reason is longer than {MAX_REASON} bytes"
            )));
        }
        let key = match headers.get("idempotency-key") {
            None => None,
            Some(v) => {
                let k = v.to_str().ok().filter(|k| {
                    !k.is_empty()
                        && k.len() <= MAX_IDEMPOTENCY_KEY
                        && k.bytes().all(|b| b.is_ascii_graphic())
                });
                Some(k.ok_or_else(|| {
                    HttpError::BadRequest(format!(
                        "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                    ))
                })?)
            }
        };
        let outcome = s
            .api
            .store
            .request_rotation(&name, &caller.actor, reason.as_deref(), key)
            .await?;
        let (rotation, joined) = match outcome {
            RequestOutcome::Queued(r) => (r, false),
            RequestOutcome::Existing(r) => (r, true),
            RequestOutcome::NotFound => {
                return Err(HttpError::NotFound(format!(
                    "no managed credential named `{name}`"
                )));
            }
        };
        if rotation.credential != name {
            return Err(HttpError::Conflict(
                "this Idempotency-Key was already used for another credential".into(),
            ));
        }
        let details = serde_json::json!({ "rotation_id": rotation.id, "joined": joined });
        Ok((rotation, details))
    }
    .await;
    let rotation = s
        .audit(&req, &caller, action, &name, reason.as_deref(), result)
        .await?;
    let rotation = if query.wait == Some(true) {
        s.wait_finished(rotation).await?
    } else {
        rotation
    };
    let status = if rotation.is_finished() && query.wait == Some(true) {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/v1/rotations/{}", rotation.id);
    let mut resp = (status, Json(RotationView::from(rotation))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

impl Inner {
    /// Waits until `rotation` has finished or `wait_timeout` has passed.
    async fn wait_finished(&self, rotation: Rotation) -> Result<Rotation, HttpError> {
        let mut rx = self.done.subscribe();
        let deadline = tokio::time::Instant::now() + self.wait_timeout;
        let id = rotation.id;
        let mut current = rotation;
        loop {
            if current.is_finished() || tokio::time::Instant::now() >= deadline {
                return Ok(current);
            }
            let poll_at = (tokio::time::Instant::now() + WAIT_POLL).min(deadline);
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Ok(done) if done.parse::<Uuid>().is_ok_and(|d| d != id) => continue,
                        _ => break,
                    },
                    () = tokio::time::sleep_until(poll_at) => break,
                }
            }
            current = self
                .api
                .store
                .rotation(id)
                .await?
                .ok_or_else(|| HttpError::internal("the rotation disappeared", id))?;
        }
    }
}

#[utoipa::path(get, path = "/v1/rotations/{id}", tag = "credentials",
    params(("id" = Uuid, Path, description = "Rotation id")),
    responses(
        (status = 200, description = "The rotation", body = RotationView),
        (status = 404, description = "No rotation with that id", body = Problem, content_type = "application/problem+json")))]
async fn get_rotation(
    State(s): State<Shared>,
    req: Req,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<RotationView>, HttpError> {
    s.authorize(&req, Action::GetRotation, None, None).await?;
    match s.api.store.rotation(id).await? {
        Some(r) => Ok(Json(r.into())),
        None => Err(HttpError::NotFound(format!("no rotation with id {id}"))),
    }
}

/// Operations that answer 501 in this build (their capability is not wired).
pub const NOT_WIRED: &[&str] = &[];

#[utoipa::path(get, path = "/v1/bootstrap-tokens", tag = "bootstrap-tokens",
    responses((status = 200, description = "Tracked bootstrap tokens with the nodes that joined with them: `{\"tokens\": [...]}` (as `rekey token list --json`)", body = Object)))]
async fn list_bootstrap_tokens(State(s): State<Shared>, req: Req) -> Result<Response, HttpError> {
    s.authorize(&req, Action::ListBootstrapTokens, None, None)
        .await?;
    use crate::k8s::bootstrap::db;
    let tokens = db::tokens(&s.api.store).await?;
    let joins = db::all_joins(&s.api.store).await?;
    let mut out = Vec::with_capacity(tokens.len());
    for t in &tokens {
        let mut v = serde_json::to_value(t)
            .map_err(|e| HttpError::internal("a token row could not be shown", e))?;
        v["joins"] = serde_json::to_value(
            joins
                .iter()
                .filter(|j| j.token_id == t.id)
                .collect::<Vec<_>>(),
        )
        .map_err(|e| HttpError::internal("a join row could not be shown", e))?;
        out.push(v);
    }
    Ok(Json(serde_json::json!({ "tokens": out })).into_response())
}

#[utoipa::path(post, path = "/v1/bootstrap-tokens/{id}/revoke", tag = "bootstrap-tokens",
    params(("id" = String, Path, description = "Token id (the 6 characters before the dot)", min_length = 6, max_length = 6)),
    request_body(content = Option<RotateRequest>, content_type = "application/json", description = "Optional reason for the audit record"),
    responses(
        (status = 200, description = "`{\"id\", \"outcome\": \"revoked\" | \"not-live\", \"state\"}`", body = Object),
        (status = 404, description = "No such token in Postgres or the cluster", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No Kubernetes client is configured on this server", body = Problem, content_type = "application/problem+json")))]
async fn revoke_bootstrap_token(
    State(s): State<Shared>,
    req: Req,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let action = Action::RevokeBootstrapToken;
    let parsed = parse_body::<RotateRequest>(&headers, &body);
    let reason = parsed
        .as_ref()
        .ok()
        .and_then(|b| b.as_ref())
        .and_then(|b| b.reason.clone());
    let caller = s
        .authorize(&req, action, Some(&id), reason.as_deref())
        .await?;
    let result = async {
        parsed?;
        if id.len() != 6 || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(HttpError::BadRequest(format!(
                "`{id}` is not a bootstrap token id ([a-z0-9]{{6}})"
            )));
        }
        let client = s.api.kube.clone().ok_or_else(|| {
            HttpError::NotImplemented(
                "bootstrap tokens cannot be revoked here: no Kubernetes client is configured ([kubernetes] or in-cluster)".into(),
            )
        })?;
        let config = s.api.capabilities.bootstrap_tokens.clone().unwrap_or_default();
        let outcome = crate::k8s::bootstrap::revoke(
            &s.api.store,
            &client,
            &config,
            &id,
            "manual",
            None,
            &caller.actor,
        )
        .await
        .map_err(|e| HttpError::Unavailable(format!("the Kubernetes API could not complete the revocation: {e}")))?;
        let body = match outcome {
            crate::k8s::bootstrap::RevokeOutcome::Revoked => {
                serde_json::json!({ "id": id, "outcome": "revoked", "state": "revoked" })
            }
            crate::k8s::bootstrap::RevokeOutcome::NotLive(state) => {
                serde_json::json!({ "id": id, "outcome": "not-live", "state": state })
            }
            crate::k8s::bootstrap::RevokeOutcome::Unknown => {
                return Err(HttpError::NotFound(format!(
                    "no bootstrap token `{id}`: not tracked and no secret kube-system/bootstrap-token-{id}"
                )));
            }
        };
        Ok((Json(body.clone()).into_response(), body))
    }
    .await;
    s.audit(&req, &caller, action, &id, reason.as_deref(), result)
        .await
}

#[utoipa::path(post, path = "/v1/etcd/verify", tag = "etcd",
    request_body(content = Option<Object>, content_type = "application/json",
        description = "Optional overrides of [etcd]: `prefix`, `resource`, `sample`, `max_listed`"),
    responses(
        (status = 200, description = "The verification report (as `rekey etcd verify --json`); `exit_code` 1 when problems were found", body = Object),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "[etcd] endpoints and encryption_config are not configured on this server", body = Problem, content_type = "application/problem+json")))]
async fn verify_etcd(
    State(s): State<Shared>,
    req: Req,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let action = Action::VerifyEtcd;
    let parsed = parse_body::<crate::etcd::verify::VerifyRequest>(&headers, &body);
    let caller = s.authorize(&req, action, None, None).await?;
    let result = async {
        let request = parsed?.unwrap_or_default();
        let opts = s
            .api
            .capabilities
            .etcd
            .as_ref()
            .and_then(crate::etcd::VerifyOptions::from_config)
            .ok_or_else(|| {
                HttpError::NotImplemented(
                    "etcd verification is not configured on this server: set [etcd] endpoints and encryption_config".into(),
                )
            })?;
        let opts = request
            .apply(opts)
            .map_err(|(field, msg)| HttpError::BadRequest(format!("{field}: {msg}")))?;
        let store = s.api.store.clone();
        // Run to the end even if the caller goes away: the check is recorded.
        let (report, check_id) = tokio::spawn(async move {
            crate::etcd::verify::verify_and_record(
                &opts,
                Some(&store),
                crate::etcd::db::Trigger::Api,
            )
            .await
        })
        .await
        .map_err(|e| HttpError::internal("the verification task failed", e))?
        .map_err(|e| match e {
            crate::etcd::VerifyError::Connect(_) | crate::etcd::VerifyError::Scan(_) => {
                HttpError::Unavailable(format!("etcd could not be read: {e}"))
            }
            e => HttpError::internal("the verification could not run", e),
        })?;
        let details = serde_json::json!({ "check_id": check_id, "exit_code": report.exit_code });
        Ok((Json(report).into_response(), details))
    }
    .await;
    s.audit(&req, &caller, action, "etcd", None, result).await
}

/// Query of `GET /v1/backups`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BackupsQuery {
    /// Include backups whose objects were pruned.
    pub include_pruned: Option<bool>,
    /// Only completed backups.
    pub completed_only: Option<bool>,
    /// At most this many, newest first (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/backups", tag = "backups",
    params(BackupsQuery),
    responses((status = 200, description = "Recorded backups, newest first: `{\"backups\": [...]}`", body = Object)))]
async fn list_backups(
    State(s): State<Shared>,
    req: Req,
    QueryParams(q): QueryParams<BackupsQuery>,
) -> Result<Response, HttpError> {
    s.authorize(&req, Action::ListBackups, None, None).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(HttpError::BadRequest(format!(
            "limit {limit} is outside 1..=1000"
        )));
    }
    let backups = crate::backup::list_backups(
        &s.api.store,
        crate::backup::db::ListFilter {
            include_pruned: q.include_pruned.unwrap_or(false),
            completed_only: q.completed_only.unwrap_or(false),
            limit,
        },
    )
    .await
    .map_err(|e| HttpError::internal("the backups could not be listed", e))?;
    Ok(Json(serde_json::json!({ "backups": backups })).into_response())
}

#[utoipa::path(post, path = "/v1/backups", tag = "backups",
    responses(
        (status = 201, description = "The completed backup's record", body = Object),
        (status = 501, description = "[backup] and [etcd] are not configured on this server", body = Problem, content_type = "application/problem+json")))]
async fn run_backup(State(s): State<Shared>, req: Req) -> Result<Response, HttpError> {
    let action = Action::RunBackup;
    let caller = s.authorize(&req, action, None, None).await?;
    let result = async {
        let caps = &s.api.capabilities;
        let (Some(backup), Some(etcd)) = (caps.backup.clone(), caps.etcd.clone()) else {
            return Err(HttpError::NotImplemented(
                "backups are not configured on this server: set [backup] and [etcd]".into(),
            ));
        };
        let store = s.api.store.clone();
        let opts = crate::backup::RunOptions::quiet(caller.actor.clone());
        // Run to the end even if the caller goes away or the request times out.
        let record =
            tokio::spawn(
                async move { crate::backup::run_backup(&store, &backup, &etcd, &opts).await },
            )
            .await
            .map_err(|e| HttpError::internal("the backup task failed", e))?
            .map_err(|e| match e {
                crate::backup::BackupError::Snapshot(_) => {
                    HttpError::Unavailable(format!("the etcd snapshot could not be taken: {e}"))
                }
                e => HttpError::internal("the backup failed", e),
            })?;
        let details = serde_json::json!({ "backup_id": record.id, "location": record.location });
        Ok(((StatusCode::CREATED, Json(record)).into_response(), details))
    }
    .await;
    s.audit(&req, &caller, action, "etcd", None, result).await
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "A page of audit events, oldest first", body = AuditPage)))]
async fn list_audit(
    State(s): State<Shared>,
    req: Req,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<AuditPage>, HttpError> {
    s.authorize(&req, Action::ReadAudit, None, None).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(HttpError::BadRequest(format!(
            "limit {limit} is outside 1..=1000"
        )));
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(HttpError::BadRequest("after must not be negative".into()));
    }
    let events = s
        .api
        .store
        .audit_events(&Filter {
            actor: q.actor,
            action: q.action,
            target: q.target,
            after_id: q.after,
            limit,
        })
        .await?;
    let next_after = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        events: events
            .into_iter()
            .map(|e| AuditEventView {
                id: e.id,
                at: e.at,
                actor: e.actor,
                action: e.action,
                target: e.target,
                outcome: e.outcome,
                reason: e.reason,
                request_id: e.request_id,
                details: e.details,
            })
            .collect(),
        next_after,
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
async fn metrics_authed(State(s): State<Shared>, req: Req) -> Result<Response, HttpError> {
    s.authorize(&req, Action::ReadMetrics, None, None).await?;
    Ok(metrics_response(&s.api).await)
}

async fn metrics_open(State(s): State<ApiState>) -> Response {
    metrics_response(&s).await
}

async fn metrics_response(state: &ApiState) -> Response {
    state.metrics.run_upkeep();
    let mut text = state.metrics.render();
    match tokio::time::timeout(READY_DB_TIMEOUT, state.store.list_credentials()).await {
        Ok(Ok(creds)) => text.push_str(&credential_gauges(&creds)),
        Ok(Err(e)) => tracing::warn!(error = %e, "credential gauges left out of /metrics"),
        Err(_) => tracing::warn!(
            "credential gauges left out of /metrics: the database did not answer in time"
        ),
    }
    match tokio::time::timeout(
        READY_DB_TIMEOUT,
        crate::backup::db::latest_completed_at(&state.store),
    )
    .await
    {
        Ok(Ok(at)) => text.push_str(&backup_gauge(at)),
        Ok(Err(e)) => tracing::warn!(error = %e, "backup gauge left out of /metrics"),
        Err(_) => {
            tracing::warn!("backup gauge left out of /metrics: the database did not answer in time")
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `rekey_credential_not_after_seconds`, `rekey_credential_not_before_seconds`,
/// `rekey_credential_next_rotation_seconds` and
/// `rekey_credential_rotation_failures`, straight from the inventory at scrape
/// time (a removed credential disappears at once). Every replica exports the
/// same values: alerts aggregate with `min`/`max by (name, kind)`.
pub fn credential_gauges(creds: &[Credential]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (metric, help, pick) in [
        (
            "rekey_credential_not_after_seconds",
            "End of validity of each credential's current version (Unix time).",
            (|c: &Credential| c.not_after.map(|t| t.timestamp())) as fn(&Credential) -> Option<i64>,
        ),
        (
            "rekey_credential_not_before_seconds",
            "Start of validity of each credential's current version (Unix time); with not_after, its lifetime.",
            |c: &Credential| c.not_before.map(|t| t.timestamp()),
        ),
        (
            "rekey_credential_next_rotation_seconds",
            "When the engine will rotate each credential next (Unix time).",
            |c: &Credential| c.next_rotation_at.map(|t| t.timestamp()),
        ),
        (
            "rekey_credential_rotation_failures",
            "Consecutive failed rotation attempts of each credential rekey rotates (0 after a success).",
            |c: &Credential| c.managed.then_some(i64::from(c.failures)),
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} gauge");
        for c in creds {
            if let Some(v) = pick(c) {
                let _ = writeln!(
                    out,
                    "{metric}{{name=\"{}\",kind=\"{}\"}} {v}",
                    escape_label(&c.name),
                    escape_label(&c.kind),
                );
            }
        }
    }
    out
}

/// `rekey_backup_latest_completed_timestamp_seconds` from the `backups` table
/// (nothing before the first completed backup).
pub fn backup_gauge(latest: Option<DateTime<Utc>>) -> String {
    let metric = "rekey_backup_latest_completed_timestamp_seconds";
    match latest {
        Some(t) => format!(
            "# HELP {metric} When the newest completed etcd backup recorded in Postgres finished, whoever took it (Unix time).\n\
             # TYPE {metric} gauge\n{metric} {}\n",
            t.timestamp()
        ),
        None => String::new(),
    }
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn healthz_plain() -> Json<Health> {
    healthz().await
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (see which check failed)", body = Readiness)))]
async fn readyz(State(s): State<Shared>) -> Response {
    readiness(&s.api).await
}

async fn readyz_plain(State(s): State<ApiState>) -> Response {
    readiness(&s).await
}

async fn readiness(state: &ApiState) -> Response {
    let database = tokio::time::timeout(READY_DB_TIMEOUT, state.store.ready())
        .await
        .unwrap_or(false);
    let engine = *state.engine_alive.borrow();
    let r = Readiness {
        ready: database && engine,
        database,
        engine,
    };
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = (status, Json(r)).into_response();
    // Not an error document: keep the renderer from replacing it.
    resp.extensions_mut().insert(KeepBody);
    resp
}

/// Marks an error-status response whose body is not a problem (readiness).
#[derive(Debug, Clone, Copy)]
struct KeepBody;

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_document(),
    )
        .into_response()
}

// ---------------------------------------------------------------- OpenAPI

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rekey admin API",
        description = "Rotate now, inventory, audit and operations for rekey. Mutual TLS: present a client certificate signed by `[api].client_ca`; its subject CN maps to a role (`viewer` < `operator` < `admin`). Inside the cluster a ServiceAccount bearer token may be used instead (TokenReview + SubjectAccessReview, API group `rekey.io`) when `[api].token_review = true`. Errors are `application/problem+json` (RFC 9457) with stable `type`s (`urn:rekey:problem:*`). Credential names contain `/`: URL-encode them in paths."
    ),
    paths(
        list_credentials, get_credential, rotate_credential, get_rotation,
        list_bootstrap_tokens, revoke_bootstrap_token, verify_etcd, list_backups, run_backup,
        list_audit, metrics_authed, healthz, readyz, openapi_json
    ),
    components(schemas(Problem, CredentialView, CredentialList, CredentialSummary, CredentialDetail, RotationView,
        RotateRequest, AuditEventView, AuditPage, Health, Readiness)),
    modifiers(&CommonResponses),
    tags(
        (name = "credentials", description = "Inventory and rotate now"),
        (name = "bootstrap-tokens", description = "Bootstrap-token revocation"),
        (name = "etcd", description = "etcd encryption-at-rest verification"),
        (name = "backups", description = "Encrypted etcd backups"),
        (name = "audit", description = "The append-only audit log"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
struct ApiDoc;

/// Adds the error responses every operation can give, and the security schemes.
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            ContentBuilder, Ref, ResponseBuilder,
            security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
        };
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A Kubernetes ServiceAccount token (only with [api].token_review = true)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "mutualTLS",
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate signed by [api].client_ca; its subject CN maps to a role"
                        .into(),
                ),
                extensions: None,
            },
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let authed = path.starts_with("/v1/") || path == "/metrics";
            for op in [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                let r = &mut op.responses.responses;
                let mut add = |code: &str, d: &str| {
                    r.entry(code.to_string())
                        .or_insert_with(|| problem(d).into());
                };
                add("413", "The request body is larger than [api].max_body_size");
                add(
                    "500",
                    "Internal error; details are in the server log under the request id",
                );
                add(
                    "503",
                    "Overloaded ([api].max_concurrent_requests) or timed out ([api].request_timeout)",
                );
                if authed {
                    add("400", "The request is malformed");
                    add("401", "No client certificate or accepted bearer token");
                    add("403", "The caller's role (or RBAC) does not allow this");
                    op.security = Some(vec![
                        SecurityRequirement::new("mutualTLS", Vec::<String>::new()),
                        SecurityRequirement::new("bearer", Vec::<String>::new()),
                    ]);
                }
            }
        }
    }
}

/// The OpenAPI document (JSON), generated from the handlers' annotations.
pub fn openapi_document() -> String {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".into())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_covers_every_route_and_error() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/credentials",
            "/v1/credentials/{name}",
            "/v1/credentials/{name}/rotate",
            "/v1/rotations/{id}",
            "/v1/bootstrap-tokens",
            "/v1/bootstrap-tokens/{id}/revoke",
            "/v1/etcd/verify",
            "/v1/backups",
            "/v1/audit",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        let rotate = &paths["/v1/credentials/{name}/rotate"]["post"]["responses"];
        for code in [
            "200", "202", "400", "401", "403", "404", "409", "413", "415", "500", "503",
        ] {
            assert!(rotate.get(code).is_some(), "rotate lacks {code}");
        }
        assert_eq!(
            rotate["404"]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }

    #[test]
    fn gauges_escape_labels_and_skip_unknown_times() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let c = |name: &str, not_after| Credential {
            id: 1,
            name: name.into(),
            kind: "certificate".into(),
            source: "config".into(),
            managed: true,
            spec: serde_json::json!({}),
            sink: serde_json::json!({}),
            schedule: None,
            not_before: None,
            not_after,
            current_version: None,
            next_rotation_at: Some(now),
            next_rotation_reason: None,
            failures: 0,
            last_error: None,
            lease_owner: None,
            created_at: now,
            updated_at: now,
        };
        let mut issued = c("cert/a\"b", Some(now));
        issued.not_before = Some(now - chrono::TimeDelta::hours(1));
        issued.failures = 2;
        let text = credential_gauges(&[issued, c("cert/pending", None)]);
        assert!(text.contains(
            "rekey_credential_not_before_seconds{name=\"cert/a\\\"b\",kind=\"certificate\"} 1699996400"
        ), "{text}");
        assert!(
            text.contains(
                "rekey_credential_rotation_failures{name=\"cert/a\\\"b\",kind=\"certificate\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "rekey_credential_not_after_seconds{name=\"cert/a\\\"b\",kind=\"certificate\"} 1700000000"
        ), "{text}");
        assert!(!text.contains("rekey_credential_not_after_seconds{name=\"cert/pending\""));
        assert!(text.contains(
            "rekey_credential_next_rotation_seconds{name=\"cert/pending\",kind=\"certificate\"} 1700000000"
        ));
        assert!(text.contains(
            "rekey_credential_rotation_failures{name=\"cert/pending\",kind=\"certificate\"} 0"
        ));
        assert!(!text.contains("rekey_credential_not_before_seconds{name=\"cert/pending\""));
    }

    #[test]
    fn backup_gauge_only_after_a_backup() {
        assert_eq!(backup_gauge(None), "");
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let text = backup_gauge(Some(at));
        assert!(
            text.ends_with("\nrekey_backup_latest_completed_timestamp_seconds 1700000000\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE rekey_backup_latest_completed_timestamp_seconds gauge\n"));
    }

    #[test]
    fn request_ids_are_sanitised() {
        assert!(valid_request_id("abc-123_x.y:z"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(&"x".repeat(200)));
    }
}
