//! `/v1/bootstrap-tokens`: the tracked tokens with their joins (paged, by
//! id), and revoking one now (its Secret deleted, the row marked, audited).

use std::collections::HashMap;

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};

use crate::{
    api::{
        auth::Action,
        authz::{Call, Intent},
        context::Shared,
        extract::{PathName, QueryParams, Req, parse_body},
        input,
        paging::{self, List},
        problem::{HttpError, Problem},
        views::{BootstrapTokenList, BootstrapTokenView, ListQuery, RotateRequest},
    },
    k8s::bootstrap::{
        self, RevokeOutcome,
        db::{self, JoinRow},
    },
};

#[utoipa::path(get, path = "/v1/bootstrap-tokens", tag = "bootstrap-tokens",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tracked bootstrap tokens, by id, with the nodes that joined with them (as `rekey token list --json`); follow `continue` until it is null", body = BootstrapTokenList),
        (status = 400, description = "`limit` is not 1 to 1000, or `continue` is not a token of this list", body = Problem, content_type = "application/problem+json")))]
pub async fn list_bootstrap_tokens(
    State(s): State<Shared>,
    req: Req,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<BootstrapTokenList>, HttpError> {
    s.authorize(&req, Action::ListBootstrapTokens, None).await?;
    let limit = paging::limit(q.limit.as_deref())?;
    let key = s.paging.get(&s.api.store).await?;
    let pager = key.pager(List::BootstrapTokens, serde_json::Value::Null);
    let after: Option<String> = pager.open(q.continue_token.as_deref())?;
    let rows = db::tokens_page(&s.api.store, after.as_deref(), limit + 1).await?;
    let (rows, continue_token) = pager.page(rows, limit, |t| t.id.clone());
    let ids: Vec<String> = rows.iter().map(|t| t.id.clone()).collect();
    let mut joins: HashMap<String, Vec<JoinRow>> = HashMap::new();
    for j in db::joins_of(&s.api.store, &ids).await? {
        joins.entry(j.token_id.clone()).or_default().push(j);
    }
    let tokens = rows
        .into_iter()
        .map(|token| BootstrapTokenView {
            joins: joins.remove(&token.id).unwrap_or_default(),
            token,
        })
        .collect();
    Ok(Json(BootstrapTokenList {
        tokens,
        continue_token,
    }))
}

#[utoipa::path(post, path = "/v1/bootstrap-tokens/{id}/revoke", tag = "bootstrap-tokens",
    params(("id" = String, Path, description = "Token id (the 6 characters before the dot)", min_length = 6, max_length = 6)),
    request_body(content = Option<RotateRequest>, content_type = "application/json", description = "Optional reason for the audit record"),
    responses(
        (status = 200, description = "`{\"id\", \"outcome\": \"revoked\" | \"not-live\", \"state\"}`", body = Object),
        (status = 404, description = "No such token in Postgres or the cluster", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "No Kubernetes client is configured on this server", body = Problem, content_type = "application/problem+json")))]
pub async fn revoke_bootstrap_token(
    State(s): State<Shared>,
    req: Req,
    id: PathName,
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
    let checked = check_revoke(&id, parsed);
    let intent = Intent::new(
        Action::RevokeBootstrapToken,
        &format!("bootstrap-token/{}", id.shown()),
    )
    .reason(asked_reason.as_deref())
    .rbac_name(checked.as_ref().ok().map(String::as_str));
    let state = s.clone();
    s.mutating(req, intent, checked, move |call: Call<String>| async move {
        let id = call.input;
        let client = state.api.kube.clone().ok_or_else(|| {
            HttpError::NotImplemented(
                "bootstrap tokens cannot be revoked here: no Kubernetes client is configured ([kubernetes] or in-cluster)".into(),
            )
        })?;
        let config = state.api.capabilities.bootstrap_tokens.clone().unwrap_or_default();
        // A revocation is three steps (claim, delete the Secret, mark
        // revoked); this task owns them, and the request's event commits
        // with the `revoked` row.
        let outcome = bootstrap::revoke_audited(
            &state.api.store,
            &client,
            &config,
            &id,
            "manual",
            None,
            &call.caller.actor,
            Some(&call.ticket),
        )
        .await
        .map_err(|e| {
            HttpError::unavailable(
                "the Kubernetes API could not complete the revocation; see the server log for this request id",
                e,
            )
        })?;
        let body = match outcome {
            RevokeOutcome::Revoked => {
                serde_json::json!({ "id": id, "outcome": "revoked", "state": "revoked" })
            }
            RevokeOutcome::NotLive(state) => {
                serde_json::json!({ "id": id, "outcome": "not-live", "state": state })
            }
            RevokeOutcome::Unknown => {
                return Err(HttpError::NotFound(format!(
                    "no bootstrap token `{id}`: not tracked and no secret kube-system/bootstrap-token-{id}"
                )));
            }
        };
        Ok((Json(body.clone()).into_response(), body))
    })
    .await
}

/// Checks the token id and the optional body before anything touches the database.
fn check_revoke(
    id: &PathName,
    body: Result<Option<RotateRequest>, HttpError>,
) -> Result<String, HttpError> {
    let id = id.get()?;
    if id.len() != 6
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(HttpError::BadRequest(format!(
            "`{id}` is not a bootstrap token id ([a-z0-9]{{6}})"
        )));
    }
    if let Some(reason) = body?.and_then(|b| b.reason) {
        input::check_reason(&reason).map_err(HttpError::BadRequest)?;
    }
    Ok(id.to_string())
}
