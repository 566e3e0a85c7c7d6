//! `/v1/credentials`: the inventory (paged), one credential with its latest
//! rotations, and "rotate now" (queued for the engine; `?wait=true` answers
//! when it has finished).

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;

use super::rotations::wait_finished;
use crate::{
    api::{
        auth::Action,
        authz::{Call, Intent},
        context::Shared,
        extract::{PathName, QueryParams, Req, parse_body},
        input,
        paging::{self, List},
        problem::{HttpError, Problem},
        views::{
            CredentialDetail, CredentialList, CredentialSummary, CredentialView, ListQuery,
            RotateQuery, RotateRequest, RotationView,
        },
    },
    store::rotations::{Idempotency, ManualRequest, RequestOutcome},
};

/// Rotations shown with a credential.
const RECENT_ROTATIONS: i64 = 10;

/// About the JSON size of one credential summary (280 to 400 bytes).
const SUMMARY_BYTES: usize = 384;

#[utoipa::path(get, path = "/v1/credentials", tag = "credentials",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tracked credentials, by name; follow `continue` until it is null", body = CredentialList),
        (status = 400, description = "`limit` is not 1 to 1000, or `continue` is not a token of this list", body = Problem, content_type = "application/problem+json")))]
pub async fn list_credentials(
    State(s): State<Shared>,
    req: Req,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Response, HttpError> {
    s.authorize(&req, Action::ListCredentials, None).await?;
    let limit = paging::limit(q.limit.as_deref())?;
    let key = s.paging.get(&s.api.store).await?;
    let pager = key.pager(List::Credentials, serde_json::Value::Null);
    let after: Option<String> = pager.open(q.continue_token.as_deref())?;
    let rows = s
        .api
        .store
        .credential_summaries(after.as_deref(), limit + 1)
        .await?;
    let (rows, continue_token) = pager.page(rows, limit, |r| r.name.clone());
    let now = Utc::now();
    let count = rows.len();
    let list = CredentialList {
        credentials: rows
            .into_iter()
            .map(|r| CredentialSummary::from_stored(r, now))
            .collect(),
        continue_token,
    };
    // Sized for the page at once: grown from axum's 128 bytes, a page of
    // 100 summaries (~34 KiB) would be copied about ten times.
    let mut body = Vec::with_capacity(512 + count * SUMMARY_BYTES);
    serde_json::to_writer(&mut body, &list)
        .map_err(|e| HttpError::internal("the inventory could not be rendered", e))?;
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
        (status = 400, description = "The name is not 1 to 253 bytes of UTF-8 without control characters", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No credential of that name", body = Problem, content_type = "application/problem+json")))]
pub async fn get_credential(
    State(s): State<Shared>,
    req: Req,
    name: PathName,
) -> Result<Json<CredentialDetail>, HttpError> {
    let name = name.get()?;
    s.authorize(&req, Action::GetCredential, Some(name)).await?;
    let Some(c) = s.api.store.credential(name).await? else {
        return Err(HttpError::NotFound(format!("no credential named `{name}`")));
    };
    let recent_rotations = s
        .api
        .store
        .rotations_of(name, RECENT_ROTATIONS)
        .await?
        .into_iter()
        .map(RotationView::from)
        .collect();
    Ok(Json(CredentialDetail {
        credential: CredentialView::from_stored(c, Utc::now()),
        recent_rotations,
    }))
}

#[utoipa::path(post, path = "/v1/credentials/{name}/rotate", tag = "credentials",
    params(
        ("name" = String, Path, description = "Credential name, URL-encoded", min_length = 1, max_length = 253),
        RotateQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and body get the same rotation (keys belong to the caller and the credential, and are kept 24 hours)", max_length = 255)),
    request_body(content = Option<RotateRequest>, content_type = "application/json", description = "Optional reason for the audit record"),
    responses(
        (status = 200, description = "`?wait=true`: the rotation has finished", body = RotationView,
            headers(("Location" = String, description = "/v1/rotations/{id}"))),
        (status = 202, description = "Queued (or joined the rotation already in flight)", body = RotationView,
            headers(("Location" = String, description = "/v1/rotations/{id}"))),
        (status = 404, description = "No managed credential of that name", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "The name (1 to 253 bytes of UTF-8, no control characters), a query parameter, the reason (at most 1024 bytes, no control characters) or the Idempotency-Key is not acceptable", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This caller used the Idempotency-Key for this credential with a different body within the last 24 hours", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json")))]
pub async fn rotate_credential(
    State(s): State<Shared>,
    req: Req,
    name: PathName,
    query: Result<QueryParams<RotateQuery>, HttpError>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let parsed = parse_body::<RotateRequest>(&headers, &body);
    let asked_reason = parsed
        .as_ref()
        .ok()
        .and_then(|b| b.as_ref())
        .and_then(|b| b.reason.clone())
        .filter(|r| !r.trim().is_empty());
    let checked = check_rotate(&name, query, parsed, &headers);
    let intent = Intent::new(Action::RotateCredential, &name.shown())
        .reason(asked_reason.as_deref())
        .rbac_name(checked.as_ref().ok().map(|c| c.name.as_str()));
    let wait = checked.as_ref().is_ok_and(|c| c.wait);
    let store = s.api.store.clone();
    let rotation = s
        .mutating(
            req,
            intent,
            checked,
            move |call: Call<RotateInput>| async move {
                let input = &call.input;
                let idempotency = input.key.as_deref().map(|key| Idempotency {
                    key,
                    request_sha256: &input.digest,
                });
                let request = ManualRequest {
                    name: &input.name,
                    actor: &call.caller.actor,
                    reason: input.reason.as_deref(),
                    idempotency,
                };
                let outcome = store
                    .request_rotation_audited(&request, Some(&call.ticket))
                    .await?;
                let (rotation, joined) = match outcome {
                    RequestOutcome::Queued(r) => (r, false),
                    RequestOutcome::Existing(r) => (r, true),
                    RequestOutcome::NotFound => {
                        return Err(HttpError::NotFound(format!(
                            "no managed credential named `{}`",
                            input.name
                        )));
                    }
                    RequestOutcome::KeyConflict => {
                        return Err(HttpError::Conflict(format!(
                            "this Idempotency-Key was used with a different request body for this \
                         credential within the last {} hours: use a new key for a new request",
                            crate::store::rotations::IDEMPOTENCY_KEY_TTL.as_secs() / 3600
                        )));
                    }
                };
                let details = serde_json::json!({ "rotation_id": rotation.id, "joined": joined });
                Ok((rotation, details))
            },
        )
        .await?;
    let rotation = if wait {
        wait_finished(&s, rotation).await?
    } else {
        rotation
    };
    let status = if rotation.is_finished() && wait {
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

/// The checked input of "rotate now".
struct RotateInput {
    name: String,
    wait: bool,
    reason: Option<String>,
    key: Option<String>,
    /// What the idempotency key remembers of the request.
    digest: String,
}

/// Checks everything "rotate now" takes before anything touches the database.
fn check_rotate(
    name: &PathName,
    query: Result<QueryParams<RotateQuery>, HttpError>,
    body: Result<Option<RotateRequest>, HttpError>,
    headers: &HeaderMap,
) -> Result<RotateInput, HttpError> {
    let name = name.get()?.to_string();
    let QueryParams(query) = query?;
    let reason = body?
        .and_then(|b| b.reason)
        .filter(|r| !r.trim().is_empty());
    if let Some(r) = &reason {
        input::check_reason(r).map_err(HttpError::BadRequest)?;
    }
    let key = headers
        .get("idempotency-key")
        .map(|v| input::idempotency_key(v.as_bytes()).map(str::to_string))
        .transpose()
        .map_err(HttpError::BadRequest)?;
    let digest = input::request_digest(&RotateRequest {
        reason: reason.clone(),
    });
    Ok(RotateInput {
        name,
        wait: query.wait == Some(true),
        reason,
        key,
        digest,
    })
}
