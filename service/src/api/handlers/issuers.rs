//! `GET /v1/issuers`, `GET /v1/issuers/{name}` (as `rekey ca status
//! --json`) and `POST /v1/issuers/{name}/rotate` (as `rekey ca rotate`):
//! the request is recorded with its audit event; the serving replicas carry
//! the rotation out.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use secrecy::SecretString;

use crate::{
    api::{
        auth::Action,
        authz::{Call, Intent},
        context::Shared,
        extract::{PathName, Req, parse_body},
        problem::{HttpError, Problem},
    },
    issue::CaMaterial,
    rotate::ca_rotation::{
        DEFAULT_MAX_RATE, DEFAULT_OVERLAP,
        follow::Follower,
        request::{self, RequestError, Requester, RotateAnswer, RotateOptions, RotationView},
    },
    units::HumanDuration,
};

/// The body of `POST /v1/issuers/{name}/rotate` (every field optional).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateIssuerRequest {
    /// `--overlap` (`"5m"`).
    pub overlap: Option<HumanDuration>,
    /// `--max-rate` (0: no limit).
    pub max_rate: Option<f64>,
    /// `--abort`.
    #[serde(default)]
    pub abort: bool,
    /// `--new-ca-cert`, PEM.
    pub new_ca_cert: Option<String>,
    /// `--new-ca-key`, PEM (never logged or stored in the audit log).
    pub new_ca_key: Option<String>,
}

impl std::fmt::Debug for RotateIssuerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateIssuerRequest")
            .field("overlap", &self.overlap)
            .field("max_rate", &self.max_rate)
            .field("abort", &self.abort)
            .field("new_ca_cert", &self.new_ca_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// A checked request.
#[derive(Debug)]
pub struct RotateIssuerInput {
    issuer: String,
    abort: bool,
    opts: RotateOptions,
}

fn check(
    name: &PathName,
    body: Result<Option<RotateIssuerRequest>, HttpError>,
) -> Result<RotateIssuerInput, HttpError> {
    let issuer = name.get()?.to_string();
    let b = body?.unwrap_or_default();
    let max_rate = b.max_rate.unwrap_or(DEFAULT_MAX_RATE);
    if !(max_rate.is_finite() && max_rate >= 0.0) {
        return Err(HttpError::BadRequest(
            "max_rate: must be 0 (no limit) or more".into(),
        ));
    }
    let new_ca = match (b.new_ca_cert, b.new_ca_key) {
        (Some(cert_pem), Some(key)) => Some(CaMaterial {
            cert_pem,
            key_pem: SecretString::from(key),
        }),
        (None, None) => None,
        _ => {
            return Err(HttpError::BadRequest(
                "new_ca_cert and new_ca_key go together".into(),
            ));
        }
    };
    if b.abort && new_ca.is_some() {
        return Err(HttpError::BadRequest("abort takes no new CA".into()));
    }
    Ok(RotateIssuerInput {
        issuer,
        abort: b.abort,
        opts: RotateOptions {
            overlap: b.overlap.map_or(DEFAULT_OVERLAP, HumanDuration::get),
            max_rate,
            new_ca,
        },
    })
}

fn follower(s: &Shared) -> Result<Arc<Follower>, HttpError> {
    s.api
        .capabilities
        .issuers
        .clone()
        .ok_or_else(|| HttpError::NotImplemented("this server has no issuers".into()))
}

fn refused(e: RequestError) -> HttpError {
    match e {
        e @ RequestError::UnknownIssuer(_) => HttpError::NotFound(e.to_string()),
        e @ (RequestError::NotRunning(_) | RequestError::TooLate { .. }) => {
            HttpError::Conflict(e.to_string())
        }
        e if e.is_bad_input() => HttpError::BadRequest(e.to_string()),
        e @ RequestError::Store { .. } => HttpError::unavailable(
            "the issuer's CA store could not be written; see the server log for this request id",
            e,
        ),
        e => HttpError::internal("the CA rotation could not be recorded", e),
    }
}

#[utoipa::path(get, path = "/v1/issuers", tag = "issuers",
    responses((status = 200, description = "Every issuer: its CA, trust bundle and latest CA rotation (as `rekey ca status --json`)", body = Object)))]
pub async fn list_issuers(State(s): State<Shared>, req: Req) -> Result<Response, HttpError> {
    s.authorize(&req, Action::ReadIssuers, None).await?;
    let f = follower(&s)?;
    let doc = request::status(&f, &s.api.store, None)
        .await
        .map_err(refused)?;
    Ok(Json(doc).into_response())
}

#[utoipa::path(get, path = "/v1/issuers/{name}", tag = "issuers",
    params(("name" = String, Path, description = "Issuer name")),
    responses(
        (status = 200, description = "The issuer: its CA, trust bundle and latest CA rotation", body = Object),
        (status = 404, description = "No issuer of that name", body = Problem, content_type = "application/problem+json")))]
pub async fn get_issuer(
    State(s): State<Shared>,
    req: Req,
    name: PathName,
) -> Result<Response, HttpError> {
    s.authorize(&req, Action::ReadIssuers, None).await?;
    let name = name.get()?.to_string();
    let f = follower(&s)?;
    let mut doc = request::status(&f, &s.api.store, Some(&name))
        .await
        .map_err(refused)?;
    let view = doc
        .issuers
        .pop()
        .ok_or_else(|| HttpError::NotFound(format!("no issuer named `{name}` is configured")))?;
    Ok(Json(view).into_response())
}

#[utoipa::path(post, path = "/v1/issuers/{name}/rotate", tag = "issuers",
    params(("name" = String, Path, description = "Issuer name")),
    request_body(content = Option<Object>, content_type = "application/json",
        description = "Optional: `overlap` (\"5m\"), `max_rate` (0: no limit), `abort`, `new_ca_cert` and `new_ca_key` (PEM)"),
    responses(
        (status = 202, description = "Started: `{\"created\": true, \"rotation\": {...}}`", body = Object),
        (status = 200, description = "A rotation was already running (answered), or it was aborted", body = Object),
        (status = 400, description = "A kubernetes-csr issuer, a bad new CA (the message names the field), or a bad body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No issuer of that name", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Abort: nothing running, or re-issuing has started", body = Problem, content_type = "application/problem+json")))]
pub async fn rotate_issuer(
    State(s): State<Shared>,
    req: Req,
    name: PathName,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let checked = check(&name, parse_body::<RotateIssuerRequest>(&headers, &body));
    let intent = Intent::new(Action::RotateIssuer, &format!("issuer/{}", name.shown()));
    let state = s.clone();
    s.mutating(req, intent, checked, move |call: Call<RotateIssuerInput>| async move {
        let f = follower(&state)?;
        let issuer = request::rotatable(f.issuers(), &call.input.issuer).map_err(refused)?;
        let who = Requester { actor: &call.caller.actor, trigger: "api", ticket: Some(&call.ticket) };
        let (r, created, status) = if call.input.abort {
            let r = request::abort(&state.api.store, issuer, who).await.map_err(refused)?;
            (r, false, StatusCode::OK)
        } else {
            let (r, created) = request::start(&state.api.store, issuer, &call.input.opts, who).await.map_err(refused)?;
            (r, created, if created { StatusCode::ACCEPTED } else { StatusCode::OK })
        };
        let details = serde_json::json!({ "rotation_id": r.id, "created": created, "abort": call.input.abort });
        let answer = RotateAnswer { created, rotation: RotationView::from(&r) };
        Ok(((status, Json(answer)).into_response(), details))
    })
    .await
}
