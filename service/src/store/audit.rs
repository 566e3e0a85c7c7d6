//! `audit_events`: the append-only record of every action taken.
//!
//! Every field is bounded and sanitised before it is written ([`NewEvent::bounded`],
//! applied by [`record_many`] to every writer): control characters are
//! escaped (`\0`, `\u{1b}`; Postgres refuses NUL in text and in JSON) and
//! each field is cut to its limit ([`MAX_ACTOR`], ...) with a note of how
//! much was cut, so what a caller asks can never fail the insert (the
//! target's index takes at most ~2.7 KB) or write large text into a log
//! nobody may delete from.
//!
//! A call whose action commits in a transaction records its event in that
//! same transaction ([`Ticket::commit_with`]); the ticket remembers that it
//! was written, so whoever ran the call writes it otherwise (a failure, or an
//! action that is not one transaction), exactly once.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Executor, Postgres, Transaction};

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

/// Longest stored `actor` (bytes; a certificate subject or a Kubernetes user).
pub const MAX_ACTOR: usize = 1024;
/// Longest stored `action`.
pub const MAX_ACTION: usize = 128;
/// Longest stored `target` (credential names are at most 253 bytes).
pub const MAX_TARGET: usize = 512;
/// Longest stored `reason` (the API refuses longer reasons with 400).
pub const MAX_REASON: usize = 1024;
/// Longest stored `request_id` (the API keeps callers' ids up to 128 bytes).
pub const MAX_REQUEST_ID: usize = 128;
/// Longest string inside `details`.
pub const MAX_DETAIL_TEXT: usize = 1024;
/// Largest `details` document (serialised); a larger one is replaced by a note.
pub const MAX_DETAILS: usize = 16 * 1024;

/// Room kept for the note that says how much was cut.
const CUT_NOTE: usize = 32;

/// `text` safe to store and show: control characters escaped (`\0`, `\n`,
/// `\u{1b}`), then cut to at most `max` bytes (at a character boundary) with
/// a note of how many bytes were dropped. Pure; `max` is at least 64.
pub fn bounded(text: &str, max: usize) -> String {
    let max = max.max(2 * CUT_NOTE);
    let escaped: std::borrow::Cow<'_, str> = if text.chars().any(char::is_control) {
        let mut out = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            if c.is_control() {
                out.extend(c.escape_debug());
            } else {
                out.push(c);
            }
        }
        out.into()
    } else {
        text.into()
    };
    if escaped.len() <= max {
        return escaped.into_owned();
    }
    let mut keep = max - CUT_NOTE;
    while !escaped.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}…(+{} bytes)", &escaped[..keep], escaped.len() - keep)
}

/// `details` with every string (keys included) bounded, and the whole
/// replaced by a note when its JSON is larger than [`MAX_DETAILS`].
pub fn bounded_details(details: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn walk(v: &Value, depth: usize) -> Value {
        match v {
            Value::String(s) => Value::String(bounded(s, MAX_DETAIL_TEXT)),
            Value::Array(a) if depth < 16 => {
                Value::Array(a.iter().map(|x| walk(x, depth + 1)).collect())
            }
            Value::Object(o) if depth < 16 => Value::Object(
                o.iter()
                    .map(|(k, x)| (bounded(k, MAX_DETAIL_TEXT), walk(x, depth + 1)))
                    .collect(),
            ),
            Value::Array(_) | Value::Object(_) => Value::String("(nested too deep)".into()),
            other => other.clone(),
        }
    }
    let v = walk(details, 0);
    let size = serde_json::to_vec(&v)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DETAILS {
        return serde_json::json!({ "truncated": true, "bytes": size });
    }
    v
}

impl NewEvent {
    /// Every field bounded and sanitised (see [`bounded`]); what [`record_many`] writes.
    pub fn bounded(&self) -> Self {
        Self {
            actor: bounded(&self.actor, MAX_ACTOR),
            action: bounded(&self.action, MAX_ACTION),
            target: bounded(&self.target, MAX_TARGET),
            outcome: self.outcome,
            reason: self.reason.as_deref().map(|r| bounded(r, MAX_REASON)),
            request_id: self
                .request_id
                .as_deref()
                .map(|r| bounded(r, MAX_REQUEST_ID)),
            details: bounded_details(&self.details),
        }
    }
}

/// The audit event of one call (an API request), written exactly once:
/// in the transaction that commits the call's action
/// ([`Ticket::commit_with`]), or, when the action wrote none (it failed
/// before committing, or it is not one transaction), by whoever ran the call
/// once it has ended ([`Ticket::is_written`] says which).
#[derive(Debug)]
pub struct Ticket {
    template: NewEvent,
    written: AtomicBool,
}

impl Ticket {
    /// A ticket for events like `template` (its outcome and details are replaced).
    pub fn new(template: NewEvent) -> Self {
        Self {
            template,
            written: AtomicBool::new(false),
        }
    }

    /// The event with this outcome and these details.
    pub fn event(&self, outcome: Outcome, details: serde_json::Value) -> NewEvent {
        NewEvent {
            outcome,
            details,
            ..self.template.clone()
        }
    }

    /// Records `event` in `tx`, commits `tx`, and remembers that the event is written.
    pub async fn commit_with(
        &self,
        mut tx: Transaction<'_, Postgres>,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        record_many(&mut *tx, std::slice::from_ref(event)).await?;
        tx.commit().await?;
        self.written.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the event has been written (and committed).
    pub fn is_written(&self) -> bool {
        self.written.load(Ordering::SeqCst)
    }

    /// Records the event outside any action's transaction, once.
    pub async fn write(
        &self,
        store: &Store,
        outcome: Outcome,
        details: serde_json::Value,
    ) -> Result<(), StoreError> {
        if self.is_written() {
            return Ok(());
        }
        store.audit(self.event(outcome, details)).await?;
        self.written.store(true, Ordering::SeqCst);
        Ok(())
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
    let events: Vec<NewEvent> = events.iter().map(NewEvent::bounded).collect();
    for e in &events {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_escaped_and_cut_with_a_note() {
        assert_eq!(bounded("cert/a/b", MAX_TARGET), "cert/a/b");
        assert_eq!(bounded("a\0b\u{1b}c\n", 100), "a\\0b\\u{1b}c\\n");
        let long = "é".repeat(40_000);
        let b = bounded(&long, MAX_REASON);
        assert!(b.len() <= MAX_REASON, "{}", b.len());
        assert!(b.ends_with(" bytes)"), "{b}");
        assert!(b.contains("…(+"), "{b}");
        // Escaping cannot push a field past its limit either.
        let nuls = "\0".repeat(10_000);
        assert!(bounded(&nuls, MAX_TARGET).len() <= MAX_TARGET);
        assert!(!bounded(&nuls, MAX_TARGET).contains('\0'));
    }

    #[test]
    fn events_are_bounded_whoever_writes_them() {
        let mut e = NewEvent::new("x".repeat(5000), "a", "\0".repeat(3000), Outcome::Denied);
        e.reason = Some("r".repeat(60_000));
        e.request_id = Some("q".repeat(1000));
        e.details = serde_json::json!({ "error": "\0 bad", "list": ["y".repeat(5000)] });
        let b = e.bounded();
        assert!(b.actor.len() <= MAX_ACTOR);
        assert!(b.target.len() <= MAX_TARGET && !b.target.contains('\0'));
        assert!(b.reason.unwrap().len() <= MAX_REASON);
        assert!(b.request_id.unwrap().len() <= MAX_REQUEST_ID);
        assert_eq!(b.details["error"], "\\0 bad");
        assert!(b.details["list"][0].as_str().unwrap().len() <= MAX_DETAIL_TEXT);
        let huge = serde_json::json!({ "list": vec!["z".repeat(900); 100] });
        assert_eq!(bounded_details(&huge)["truncated"], true);
    }

    #[test]
    fn a_ticket_is_written_once() {
        let t = Ticket::new(NewEvent::new(
            "CN=ops",
            "credential.rotate",
            "c",
            Outcome::Success,
        ));
        assert!(!t.is_written());
        let e = t.event(Outcome::Failure, serde_json::json!({"status": 404}));
        assert_eq!((e.outcome, e.actor.as_str()), (Outcome::Failure, "CN=ops"));
    }
}
