//! `audit_events`: the append-only record of every action taken.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Executor, Postgres};

use super::{error::StoreError, pool::Store};

/// Outcome of an audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It was done.
    Success,
    /// It was attempted and failed.
    Failure,
    /// The caller was not allowed.
    Denied,
}

impl Outcome {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
        }
    }
}

/// One event to record.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent {
    /// Who: certificate subject, ServiceAccount, or `rekey/<replica>`.
    pub actor: String,
    /// What, e.g. `credential.rotate`, `bootstrap_token.revoke`, `backup.run`.
    pub action: String,
    /// On what, e.g. the credential name.
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why (free text from the caller, or the trigger).
    pub reason: Option<String>,
    /// Request id, for API calls.
    pub request_id: Option<String>,
    /// Anything else worth keeping (never secret material).
    pub details: serde_json::Value,
}

impl NewEvent {
    /// An event with no reason, request id or details.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome,
            reason: None,
            request_id: None,
            details: serde_json::json!({}),
        }
    }
}

/// A stored event.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Event {
    /// Sequence number.
    pub id: i64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// How it ended.
    pub outcome: String,
    /// Why.
    pub reason: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Details.
    pub details: serde_json::Value,
}

/// Filters for listing events; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only events after this id (paging).
    pub after_id: Option<i64>,
    /// At most this many (capped at 1000).
    pub limit: i64,
}

/// Records events in one statement (within the caller's transaction, if any).
pub async fn record_many<'e, E>(exec: E, events: &[NewEvent]) -> Result<(), StoreError>
where
    E: Executor<'e, Database = Postgres>,
{
    if events.is_empty() {
        return Ok(());
    }
    let mut actors = Vec::with_capacity(events.len());
    let mut actions = Vec::with_capacity(events.len());
    let mut targets = Vec::with_capacity(events.len());
    let mut outcomes = Vec::with_capacity(events.len());
    let mut reasons = Vec::with_capacity(events.len());
    let mut request_ids = Vec::with_capacity(events.len());
    let mut details = Vec::with_capacity(events.len());
    for e in events {
        actors.push(e.actor.as_str());
        actions.push(e.action.as_str());
        targets.push(e.target.as_str());
        outcomes.push(e.outcome.as_str());
        reasons.push(e.reason.as_deref());
        request_ids.push(e.request_id.as_deref());
        details.push(e.details.clone());
    }
    sqlx::query(
        "INSERT INTO audit_events (actor, action, target, outcome, reason, request_id, details)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[])",
    )
    .bind(&actors)
    .bind(&actions)
    .bind(&targets)
    .bind(&outcomes)
    .bind(&reasons)
    .bind(&request_ids)
    .bind(&details)
    .execute(exec)
    .await?;
    Ok(())
}

impl Store {
    /// Records one event.
    pub async fn audit(&self, event: NewEvent) -> Result<(), StoreError> {
        record_many(self.pool(), std::slice::from_ref(&event)).await
    }

    /// Lists events, oldest first, after `filter.after_id`.
    pub async fn audit_events(&self, filter: &Filter) -> Result<Vec<Event>, StoreError> {
        let limit = filter.limit.clamp(1, 1000);
        Ok(sqlx::query_as::<_, Event>(
            "SELECT id, at, actor, action, target, outcome, reason, request_id, details
             FROM audit_events
             WHERE ($1::text IS NULL OR actor = $1)
               AND ($2::text IS NULL OR action = $2)
               AND ($3::text IS NULL OR target = $3)
               AND id > coalesce($4, 0)
             ORDER BY id
             LIMIT $5",
        )
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.target)
        .bind(filter.after_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
