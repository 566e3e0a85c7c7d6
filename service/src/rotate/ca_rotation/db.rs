//! The `ca_rotations` table (this module owns it): one row per rotation of
//! a `ca` issuer's CA, its phase and progress. Every change is one
//! compare-and-set on the phase (two replicas never run a phase change
//! twice), audited in the same transaction, and announced on
//! [`CHANGED_CHANNEL`] so every replica follows at once.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

pub use super::plan::CaRotation;
use super::plan::Phase;
use crate::store::{
    Store, StoreError,
    audit::{NewEvent, Outcome, Ticket, record_many},
};

/// NOTIFY channel (payload: the issuer) on every change of a rotation.
pub const CHANGED_CHANNEL: &str = "rekey_ca_rotation";

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    issuer: String,
    phase: String,
    trigger: String,
    requested_by: String,
    overlap_secs: f64,
    max_rate: f64,
    old_ca_fingerprint: String,
    new_ca_fingerprint: Option<String>,
    trusted_at: Option<DateTime<Utc>>,
    consumers_moved_at: Option<DateTime<Utc>>,
    narrowed_at: Option<DateTime<Utc>>,
    reissued: i64,
    remaining: Option<i64>,
    waiting_for: Option<String>,
    started_at: DateTime<Utc>,
    phase_changed_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<Row> for CaRotation {
    type Error = StoreError;

    fn try_from(r: Row) -> Result<Self, StoreError> {
        let phase = Phase::parse(&r.phase).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "ca_rotations {}: unknown phase `{}`",
                r.id, r.phase
            ))
        })?;
        Ok(Self {
            id: r.id,
            issuer: r.issuer,
            phase,
            trigger: r.trigger,
            requested_by: r.requested_by,
            overlap_secs: r.overlap_secs,
            max_rate: r.max_rate,
            old_ca_fingerprint: r.old_ca_fingerprint,
            new_ca_fingerprint: r.new_ca_fingerprint,
            trusted_at: r.trusted_at,
            consumers_moved_at: r.consumers_moved_at,
            narrowed_at: r.narrowed_at,
            reissued: r.reissued,
            remaining: r.remaining,
            waiting_for: r.waiting_for,
            started_at: r.started_at,
            phase_changed_at: r.phase_changed_at,
            finished_at: r.finished_at,
        })
    }
}

const COLUMNS: &str = "id, issuer, phase, trigger, requested_by, overlap_secs, max_rate,
    old_ca_fingerprint, new_ca_fingerprint, trusted_at, consumers_moved_at, narrowed_at,
    reissued, remaining, waiting_for, started_at, phase_changed_at, finished_at";

/// A rotation to start.
#[derive(Debug, Clone)]
pub struct NewRotation<'a> {
    /// The issuer.
    pub issuer: &'a str,
    /// `cli`, `api` or `schedule`.
    pub trigger: &'a str,
    /// Who asks.
    pub requested_by: &'a str,
    /// Overlap (seconds).
    pub overlap_secs: f64,
    /// Re-issues per second (0: no limit).
    pub max_rate: f64,
    /// The issuer's current CA.
    pub old_ca_fingerprint: &'a str,
    /// The new CA, when the requester stored it.
    pub new_ca_fingerprint: Option<&'a str>,
}

/// What a request to abort found.
#[derive(Debug, Clone, PartialEq)]
pub enum AbortOutcome {
    /// Aborted (this rotation).
    Aborted(CaRotation),
    /// Nothing is running for the issuer.
    NotRunning,
    /// Past `trusting`: only forward.
    TooLate(CaRotation),
}

async fn notify(tx: &mut Transaction<'_, Postgres>, issuer: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGED_CHANNEL)
        .bind(issuer)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn commit(
    mut tx: Transaction<'static, Postgres>,
    issuer: &str,
    event: &NewEvent,
    ticket: Option<&Ticket>,
) -> Result<(), StoreError> {
    notify(&mut tx, issuer).await?;
    match ticket {
        Some(t) => t.commit_with(tx, event).await,
        None => {
            record_many(&mut *tx, std::slice::from_ref(event)).await?;
            tx.commit().await?;
            Ok(())
        }
    }
}

/// Runs `update` (a compare-and-set on one rotation row); if it changed the
/// row, commits it with `event` and a NOTIFY. `false`: someone else did.
async fn compare_and_set(
    store: &Store,
    issuer: &str,
    update: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    event: &NewEvent,
) -> Result<bool, StoreError> {
    let mut tx = store.pool().begin().await?;
    if update.execute(&mut *tx).await?.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    commit(tx, issuer, event, None).await?;
    Ok(true)
}

/// An audit event about rotation `r` (actor `rekey/<replica>`).
fn event(actor: &str, action: &str, r: &CaRotation, details: serde_json::Value) -> NewEvent {
    let mut e = NewEvent::new(
        actor,
        action,
        format!("issuer/{}", r.issuer),
        Outcome::Success,
    );
    e.details = details;
    e
}

/// The audit event of a phase change (actor `rekey/<replica>`).
pub fn phase_event(actor: &str, r: &CaRotation, to: Phase) -> NewEvent {
    let details = serde_json::json!({
        "rotation_id": r.id, "from": r.phase.as_str(), "to": to.as_str(),
        "old_ca_fingerprint": r.old_ca_fingerprint, "new_ca_fingerprint": r.new_ca_fingerprint,
        "reissued": r.reissued,
    });
    event(actor, "ca.rotation.phase", r, details)
}

/// Reads rows.
async fn fetch(
    store: &Store,
    sql: &str,
    issuer: Option<&str>,
) -> Result<Vec<CaRotation>, StoreError> {
    let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(issuer)
        .fetch_all(store.pool())
        .await?;
    rows.into_iter().map(CaRotation::try_from).collect()
}

/// Starts a rotation, or answers the one in flight for the issuer
/// (`(rotation, created)`). A new one is audited (`ca.rotate`) in its
/// transaction, through `ticket` when the API asked.
pub async fn request(
    store: &Store,
    new: &NewRotation<'_>,
    event: &NewEvent,
    ticket: Option<&Ticket>,
) -> Result<(CaRotation, bool), StoreError> {
    let mut tx = store.pool().begin().await?;
    let inserted = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO ca_rotations (id, issuer, phase, trigger, requested_by, overlap_secs, max_rate,
                                   old_ca_fingerprint, new_ca_fingerprint)
         VALUES ($1, $2, 'trusting', $3, $4, $5, $6, $7, $8)
         ON CONFLICT (issuer) WHERE finished_at IS NULL DO NOTHING
         RETURNING {COLUMNS}"
    )))
    .bind(Uuid::new_v4())
    .bind(new.issuer)
    .bind(new.trigger)
    .bind(new.requested_by)
    .bind(new.overlap_secs)
    .bind(new.max_rate)
    .bind(new.old_ca_fingerprint)
    .bind(new.new_ca_fingerprint)
    .fetch_optional(&mut *tx)
    .await?;
    match inserted {
        Some(row) => {
            let r = CaRotation::try_from(row)?;
            let mut event = event.clone();
            if let Some(map) = event.details.as_object_mut() {
                map.insert("rotation_id".into(), r.id.to_string().into());
            }
            commit(tx, new.issuer, &event, ticket).await?;
            Ok((r, true))
        }
        None => {
            tx.rollback().await?;
            let r = in_flight(store, new.issuer).await?.ok_or_else(|| {
                StoreError::Corrupt("a CA rotation conflicted and then vanished".into())
            })?;
            Ok((r, false))
        }
    }
}

/// The rotation in flight for `issuer`.
pub async fn in_flight(store: &Store, issuer: &str) -> Result<Option<CaRotation>, StoreError> {
    Ok(fetch(
        store,
        &format!("SELECT {COLUMNS} FROM ca_rotations WHERE issuer = $1 AND finished_at IS NULL"),
        Some(issuer),
    )
    .await?
    .pop())
}

/// The latest rotation of every issuer (finished or not).
pub async fn latest_all(store: &Store) -> Result<Vec<CaRotation>, StoreError> {
    fetch(
        store,
        &format!(
            "SELECT DISTINCT ON (issuer) {COLUMNS} FROM ca_rotations
             WHERE $1::text IS NULL OR issuer = $1
             ORDER BY issuer, started_at DESC"
        ),
        None,
    )
    .await
}

/// The latest rotation of `issuer`.
pub async fn latest(store: &Store, issuer: &str) -> Result<Option<CaRotation>, StoreError> {
    Ok(fetch(
        store,
        &format!(
            "SELECT {COLUMNS} FROM ca_rotations WHERE issuer = $1
             ORDER BY started_at DESC LIMIT 1"
        ),
        Some(issuer),
    )
    .await?
    .pop())
}

/// Records the new CA of rotation `id` (once).
pub async fn set_new_ca(
    store: &Store,
    r: &CaRotation,
    fingerprint: &str,
    actor: &str,
) -> Result<bool, StoreError> {
    let update = sqlx::query(
        "UPDATE ca_rotations SET new_ca_fingerprint = $2, updated_at = now()
         WHERE id = $1 AND new_ca_fingerprint IS NULL AND phase = 'trusting'",
    )
    .bind(r.id)
    .bind(fingerprint);
    let details = serde_json::json!({"rotation_id": r.id, "new_ca_fingerprint": fingerprint});
    compare_and_set(
        store,
        &r.issuer,
        update,
        &event(actor, "ca.rotation.new_ca", r, details),
    )
    .await
}

/// Which moment a rotation records.
#[derive(Debug, Clone, Copy)]
pub enum Stamp {
    /// Every sink holds old+new.
    Trusted,
    /// Every probed consumer serves a new-CA leaf.
    ConsumersMoved,
    /// The bundles hold the new CA only.
    Narrowed,
}

/// Records `stamp` now (once, in `phase`).
pub async fn stamp(
    store: &Store,
    r: &CaRotation,
    stamp: Stamp,
    actor: &str,
) -> Result<bool, StoreError> {
    let column = match stamp {
        Stamp::Trusted => "trusted_at",
        Stamp::ConsumersMoved => "consumers_moved_at",
        Stamp::Narrowed => "narrowed_at",
    };
    let update = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE ca_rotations SET {column} = now(), waiting_for = NULL, updated_at = now()
         WHERE id = $1 AND phase = $2 AND {column} IS NULL AND finished_at IS NULL"
    )))
    .bind(r.id)
    .bind(r.phase.as_str());
    let action = format!("ca.rotation.{}", column.trim_end_matches("_at"));
    let details = serde_json::json!({"rotation_id": r.id, "phase": r.phase.as_str()});
    compare_and_set(store, &r.issuer, update, &event(actor, &action, r, details)).await
}

/// Moves rotation `r` from its phase to `to` (compare-and-set: `false` when
/// someone else did), audited; `done` also finishes it.
pub async fn advance(
    store: &Store,
    r: &CaRotation,
    to: Phase,
    actor: &str,
) -> Result<bool, StoreError> {
    let update = sqlx::query(
        "UPDATE ca_rotations
         SET phase = $3, phase_changed_at = now(), waiting_for = NULL, updated_at = now(),
             finished_at = CASE WHEN $3 = 'done' THEN now() ELSE finished_at END
         WHERE id = $1 AND phase = $2 AND finished_at IS NULL",
    )
    .bind(r.id)
    .bind(r.phase.as_str())
    .bind(to.as_str());
    compare_and_set(store, &r.issuer, update, &phase_event(actor, r, to)).await
}

/// Records progress and why the rotation waits (no audit: it changes often).
pub async fn progress(
    store: &Store,
    id: Uuid,
    counts: Option<(i64, i64)>,
    waiting_for: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE ca_rotations
         SET reissued = coalesce($2, reissued), remaining = coalesce($3, remaining),
             waiting_for = $4, updated_at = now()
         WHERE id = $1 AND finished_at IS NULL",
    )
    .bind(id)
    .bind(counts.map(|c| c.0))
    .bind(counts.map(|c| c.1))
    .bind(waiting_for)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Finishes an aborted rotation once the old bundle is back everywhere.
pub async fn finish_aborted(
    store: &Store,
    r: &CaRotation,
    actor: &str,
) -> Result<bool, StoreError> {
    let update = sqlx::query(
        "UPDATE ca_rotations SET finished_at = now(), waiting_for = NULL, updated_at = now()
         WHERE id = $1 AND phase = 'aborted' AND finished_at IS NULL",
    )
    .bind(r.id);
    let details = serde_json::json!({"rotation_id": r.id, "phase": "aborted"});
    compare_and_set(
        store,
        &r.issuer,
        update,
        &event(actor, "ca.rotation.finished", r, details),
    )
    .await
}

/// Aborts the rotation in flight for `issuer`, only while it is `trusting`;
/// audited (`ca.rotate.abort`) through `ticket` when the API asked.
pub async fn abort(
    store: &Store,
    issuer: &str,
    event: &NewEvent,
    ticket: Option<&Ticket>,
) -> Result<AbortOutcome, StoreError> {
    let mut tx = store.pool().begin().await?;
    let row = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "UPDATE ca_rotations SET phase = 'aborted', phase_changed_at = now(), waiting_for = NULL,
                                 updated_at = now()
         WHERE issuer = $1 AND finished_at IS NULL AND phase = 'trusting'
         RETURNING {COLUMNS}"
    )))
    .bind(issuer)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(match in_flight(store, issuer).await? {
            Some(r) if r.phase == Phase::Aborted => AbortOutcome::Aborted(r),
            Some(r) => AbortOutcome::TooLate(r),
            None => AbortOutcome::NotRunning,
        });
    };
    let r = CaRotation::try_from(row)?;
    let mut event = event.clone();
    if let Some(map) = event.details.as_object_mut() {
        map.insert("rotation_id".into(), r.id.to_string().into());
    }
    commit(tx, issuer, &event, ticket).await?;
    Ok(AbortOutcome::Aborted(r))
}
