//! `/v1/backups`: the recorded backups (paged, newest first), and taking one
//! now (an etcd snapshot streamed through encryption to `[backup]`'s
//! destination, recorded and audited).

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    api::{
        auth::Action,
        authz::{Call, Intent},
        context::Shared,
        extract::{QueryParams, Req},
        paging::{self, List},
        problem::{HttpError, Problem},
        views::{BackupList, BackupsQuery},
    },
    backup::{ListFilter, db},
};

#[utoipa::path(get, path = "/v1/backups", tag = "backups",
    params(BackupsQuery),
    responses(
        (status = 200, description = "A page of recorded backups, newest first; follow `continue` until it is null", body = BackupList),
        (status = 400, description = "`limit` is not 1 to 1000, or `continue` is not a token of this list with these filters", body = Problem, content_type = "application/problem+json")))]
pub async fn list_backups(
    State(s): State<Shared>,
    req: Req,
    QueryParams(q): QueryParams<BackupsQuery>,
) -> Result<Json<BackupList>, HttpError> {
    s.authorize(&req, Action::ListBackups, None).await?;
    let limit = paging::limit(q.limit.as_deref())?;
    let filter = ListFilter {
        include_pruned: q.include_pruned.unwrap_or(false),
        completed_only: q.completed_only.unwrap_or(false),
        limit: limit + 1,
    };
    let key = s.paging.get(&s.api.store).await?;
    let pager = key.pager(
        List::Backups,
        serde_json::json!({
            "include_pruned": filter.include_pruned,
            "completed_only": filter.completed_only,
        }),
    );
    let after: Option<(DateTime<Utc>, Uuid)> = pager.open(q.continue_token.as_deref())?;
    let rows = db::page(&s.api.store, filter, after).await?;
    let (backups, continue_token) = pager.page(rows, limit, |b| (b.started_at, b.id));
    Ok(Json(BackupList {
        backups,
        continue_token,
    }))
}

#[utoipa::path(post, path = "/v1/backups", tag = "backups",
    responses(
        (status = 201, description = "The completed backup's record", body = Object),
        (status = 501, description = "[backup] and [etcd] are not configured on this server", body = Problem, content_type = "application/problem+json")))]
pub async fn run_backup(State(s): State<Shared>, req: Req) -> Result<Response, HttpError> {
    let intent = Intent::new(Action::RunBackup, "etcd");
    let state = s.clone();
    s.mutating(req, intent, Ok(()), move |call: Call<()>| async move {
        let caps = &state.api.capabilities;
        let (Some(backup), Some(etcd)) = (caps.backup.clone(), caps.etcd.clone()) else {
            return Err(HttpError::NotImplemented(
                "backups are not configured on this server: set [backup] and [etcd]".into(),
            ));
        };
        let mut opts = crate::backup::RunOptions::quiet(call.caller.actor.clone());
        // The backup's own `backup.run` event (target: the object) is this
        // request's, committed with the backup's completed or failed row.
        opts.audit = Some(call.ticket.clone());
        let record = crate::backup::run_backup(&state.api.store, &backup, &etcd, &opts)
            .await
            .map_err(|e| match e {
                crate::backup::BackupError::Snapshot(_) => HttpError::unavailable(
                    "the etcd snapshot could not be taken; see the server log for this request id",
                    e,
                ),
                e => HttpError::internal("the backup failed", e),
            })?;
        let details = serde_json::json!({ "backup_id": record.id, "location": record.location });
        Ok(((StatusCode::CREATED, Json(record)).into_response(), details))
    })
    .await
}
