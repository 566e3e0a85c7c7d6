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
        context::Shared,
        extract::{PathParam, QueryParams, Req, parse_body},
        paging::{self, List},
        problem::{HttpError, Problem},
        views::{
            CredentialDetail, CredentialList, CredentialSummary, CredentialView, ListQuery,
            RotateQuery, RotateRequest, RotationView,
        },
    },
    store::rotations::RequestOutcome,
};

/// Longest accepted `reason`, in bytes.
const MAX_REASON: usize = 1024;

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

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
    s.authorize(&req, Action::ListCredentials, None, None)
        .await?;
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
        (status = 404, description = "No credential of that name", body = Problem, content_type = "application/problem+json")))]
pub async fn get_credential(
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
pub async fn rotate_credential(
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
        wait_finished(&s, rotation).await?
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
