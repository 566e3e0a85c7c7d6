//! `GET /v1/audit`: the append-only audit log, oldest first, filtered by
//! actor, action and target, and paged.
//!
//! Two ways to page, one position: `continue` (the sealed token every list
//! has; null on the last page) and the older `after` / `next_after` (the
//! last event's id in clear, kept for existing clients; `next_after` is set
//! whenever a page is full, so the page after a full last page is empty).
//! Both resume after the same event id, the table's unique sort key; a
//! request may use one or the other, not both.

use axum::{Json, extract::State};

use crate::{
    api::{
        auth::Action,
        context::Shared,
        extract::{QueryParams, Req},
        paging::{self, List, MAX_LIMIT},
        problem::{HttpError, Problem},
        views::{AuditEventView, AuditPage, AuditQuery},
    },
    store::audit::{self, Filter},
};

#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit events, oldest first; follow `continue` until it is null", body = AuditPage),
        (status = 400, description = "`limit` is not 1 to 1000, `after` is negative or given with `continue`, `continue` is not a token of this list with these filters, or a query value is not UTF-8, holds a control character or is longer than the audit log stores", body = Problem, content_type = "application/problem+json")))]
pub async fn list_audit(
    State(s): State<Shared>,
    req: Req,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<AuditPage>, HttpError> {
    s.authorize(&req, Action::ReadAudit, None).await?;
    let limit = paging::limit(q.limit.as_deref())?;
    if q.after.is_some_and(|a| a < 0) {
        return Err(HttpError::BadRequest("after must not be negative".into()));
    }
    if q.after.is_some() && q.continue_token.is_some() {
        return Err(HttpError::BadRequest(
            "continue and after are two ways to say where the page starts: give one".into(),
        ));
    }
    // No stored event has a longer field (the audit log bounds them), so a
    // longer filter is a mistake, not a question.
    for (field, value, max) in [
        ("actor", &q.actor, audit::MAX_ACTOR),
        ("action", &q.action, audit::MAX_ACTION),
        ("target", &q.target, audit::MAX_TARGET),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > max) {
            return Err(HttpError::BadRequest(format!(
                "{field} is longer than {max} bytes, the longest an audit event stores"
            )));
        }
    }
    let key = s.paging.get(&s.api.store).await?;
    let pager = key.pager(
        List::Audit,
        serde_json::json!({ "actor": q.actor, "action": q.action, "target": q.target }),
    );
    let after: Option<i64> = pager.open(q.continue_token.as_deref())?;
    let mut filter = Filter {
        actor: q.actor,
        action: q.action,
        target: q.target,
        after_id: after.or(q.after),
        // One more than the page, to know whether another follows.
        limit: (limit + 1).min(MAX_LIMIT),
    };
    let mut events = s.api.store.audit_events(&filter).await?;
    if limit == MAX_LIMIT && events.len() as i64 == MAX_LIMIT {
        // The store returns at most 1,000 events: look one further.
        filter.after_id = events.last().map(|e| e.id);
        filter.limit = 1;
        events.extend(s.api.store.audit_events(&filter).await?);
    }
    let (events, continue_token) = pager.page(events, limit, |e| e.id);
    let next_after = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        events: events.into_iter().map(AuditEventView::from).collect(),
        next_after,
        continue_token,
    }))
}
