//! The rotation engine's queries: claim due work, open attempts, record
//! issued material, commit or fail — each a batch in one round trip or one
//! transaction, so throughput does not hinge on per-credential queries.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{audit::NewEvent, error::StoreError, pool::Store, rotations::WAKE_CHANNEL};

/// The channel a finished rotation's id is announced on.
pub const DONE_CHANNEL: &str = "rekey_rotation_done";

/// A credential claimed by this replica.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Spec JSON.
    pub spec: serde_json::Value,
    /// Sink JSON.
    pub sink: serde_json::Value,
    /// Fencing token of this claim.
    pub lease_epoch: i64,
    /// The due time being served.
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Why it is due.
    pub next_rotation_reason: Option<String>,
    /// Current validity.
    pub not_before: Option<DateTime<Utc>>,
    /// Current expiry.
    pub not_after: Option<DateTime<Utc>>,
    /// Current version.
    pub current_version: Option<i64>,
    /// Consecutive failures so far.
    pub failures: i32,
    /// A `pending` version exists (an earlier attempt did not finish).
    pub has_pending: bool,
    /// A version id reserved for this attempt (from the versions' sequence),
    /// so material can be issued and labelled before anything is written.
    pub reserved_version: i64,
}

/// An attempt opened for a claimed credential.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The credential.
    pub credential_id: i64,
    /// The `rotations` row.
    pub rotation_id: Uuid,
    /// The `pending` version.
    pub version_id: i64,
    /// Its number among the credential's versions (1, 2, 3, ...).
    pub number: i64,
}

/// An issued version to open an attempt for.
#[derive(Debug, Clone)]
pub struct Opening {
    /// The claim's fencing token.
    pub lease_epoch: i64,
    /// The due time served.
    pub due_at: Option<DateTime<Utc>>,
    /// The trigger.
    pub trigger: &'static str,
    /// The version's facts (its id is the one reserved at claim time).
    pub facts: VersionFacts,
}

/// Material facts of an issued version (never the material itself).
#[derive(Debug, Clone)]
pub struct VersionFacts {
    /// The version.
    pub version_id: i64,
    /// Its credential.
    pub credential_id: i64,
    /// sha256 hex.
    pub fingerprint: String,
    /// Serial (certificates).
    pub serial: Option<String>,
    /// Validity start.
    pub not_before: DateTime<Utc>,
    /// Validity end.
    pub not_after: DateTime<Utc>,
    /// Kind-specific details.
    pub details: serde_json::Value,
}

/// A successful rotation to commit.
#[derive(Debug, Clone)]
pub struct Success {
    /// The credential.
    pub credential_id: i64,
    /// The claim's fencing token.
    pub lease_epoch: i64,
    /// The rotation.
    pub rotation_id: Uuid,
    /// The published version.
    pub version_id: i64,
    /// Its validity.
    pub not_before: DateTime<Utc>,
    /// Its expiry.
    pub not_after: DateTime<Utc>,
    /// When to rotate next.
    pub next_rotation_at: DateTime<Utc>,
    /// Why then.
    pub next_reason: &'static str,
    /// When the superseded version is retired (tokens), if ever.
    pub retire_previous_after: Option<DateTime<Utc>>,
}

/// A failed attempt to record.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The credential.
    pub credential_id: i64,
    /// The claim's fencing token.
    pub lease_epoch: i64,
    /// The rotation, if one was opened.
    pub rotation_id: Option<Uuid>,
    /// The version, if one was created, and whether it may have been published
    /// (left `pending` for reconciliation) or certainly was not (`failed`).
    pub version: Option<(i64, bool)>,
    /// When to try again.
    pub retry_at: DateTime<Utc>,
    /// What went wrong (no secret material).
    pub error: String,
    /// The trigger (for a rotation row when none was opened).
    pub trigger: &'static str,
    /// The due time served.
    pub due_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Claims up to `limit` due credentials for `replica`, leasing them for `lease_secs`.
    pub async fn claim_due(
        &self,
        replica: &str,
        limit: i64,
        lease_secs: f64,
    ) -> Result<Vec<Claimed>, StoreError> {
        Ok(sqlx::query_as::<_, Claimed>(
            "WITH due AS (
                SELECT id FROM credentials
                WHERE managed AND removed_at IS NULL AND next_rotation_at <= now()
                  AND (lease_expires_at IS NULL OR lease_expires_at <= now())
                ORDER BY next_rotation_at
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE credentials c
            SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3), lease_epoch = c.lease_epoch + 1
            FROM due WHERE c.id = due.id
            RETURNING c.id, c.name, c.kind, c.spec, c.sink, c.lease_epoch, c.next_rotation_at, c.next_rotation_reason,
                      c.not_before, c.not_after, c.current_version, c.failures,
                      EXISTS (SELECT 1 FROM credential_versions v WHERE v.credential_id = c.id AND v.status = 'pending') AS has_pending,
                      nextval('credential_versions_id_seq') AS reserved_version",
        )
        .bind(limit)
        .bind(replica)
        .bind(lease_secs)
        .fetch_all(self.pool())
        .await?)
    }

    /// Opens one attempt per issued credential, in one transaction: fencing
    /// and lease extension (only credentials still leased to `replica` at the
    /// claimed epoch go on), attempts a lost replica left `running` abandoned,
    /// a queued manual request turned into the running attempt (or a new one
    /// opened), and the `pending` versions inserted with the facts of their
    /// material — recorded before publishing so recovery can commit a version
    /// it finds in the sink. Returns the attempts opened.
    pub async fn open_attempts(
        &self,
        replica: &str,
        lease_secs: f64,
        items: &[Opening],
    ) -> Result<Vec<Attempt>, StoreError> {
        let all_ids: Vec<i64> = items.iter().map(|c| c.facts.credential_id).collect();
        let epochs: Vec<i64> = items.iter().map(|c| c.lease_epoch).collect();
        let actor = format!("rekey/{replica}");
        let mut tx = self.pool().begin().await?;
        // Fencing: only rows still leased to us at the claimed epoch go on, and
        // their leases are extended to cover publishing. The row locks also
        // hold back "rotate now" requests for these credentials until the
        // attempts are open, so such a request joins the attempt.
        let owned: Vec<i64> = sqlx::query_scalar(
            "UPDATE credentials c SET lease_expires_at = now() + make_interval(secs => $4)
             FROM unnest($1::bigint[], $2::bigint[]) AS u(id, epoch)
             WHERE c.id = u.id AND c.lease_epoch = u.epoch AND c.lease_owner = $3 AND c.lease_expires_at > now()
             RETURNING c.id",
        )
        .bind(&all_ids)
        .bind(&epochs)
        .bind(replica)
        .bind(lease_secs)
        .fetch_all(&mut *tx)
        .await?;
        let items: Vec<&Opening> = items
            .iter()
            .filter(|c| owned.contains(&c.facts.credential_id))
            .collect();
        if items.is_empty() {
            tx.commit().await?;
            return Ok(vec![]);
        }
        let ids: Vec<i64> = items.iter().map(|c| c.facts.credential_id).collect();
        sqlx::query(
            "UPDATE rotations SET status = 'abandoned', finished_at = now(),
                 error = coalesce(error, 'the replica running it lost its lease')
             WHERE credential_id = ANY($1) AND status = 'running'",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        // A queued manual request becomes the attempt; otherwise a new one is opened.
        let queued: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT id, credential_id FROM rotations WHERE credential_id = ANY($1) AND status = 'queued'",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let rotation_of = |cid: i64| queued.iter().find(|q| q.1 == cid).map(|q| q.0);
        let rids: Vec<Uuid> = ids
            .iter()
            .map(|cid| rotation_of(*cid).unwrap_or_else(Uuid::new_v4))
            .collect();
        let vids: Vec<i64> = items.iter().map(|f| f.facts.version_id).collect();
        let fps: Vec<&str> = items.iter().map(|f| f.facts.fingerprint.as_str()).collect();
        let serials: Vec<Option<&str>> = items.iter().map(|f| f.facts.serial.as_deref()).collect();
        let nbs: Vec<DateTime<Utc>> = items.iter().map(|f| f.facts.not_before).collect();
        let nas: Vec<DateTime<Utc>> = items.iter().map(|f| f.facts.not_after).collect();
        let details: Vec<serde_json::Value> =
            items.iter().map(|f| f.facts.details.clone()).collect();
        // Each version's number: one more than the credential's last one that
        // did not fail (what an interrupted attempt left is reconciled first).
        let numbers: Vec<(i64, i64)> = sqlx::query_as(
            "INSERT INTO credential_versions
                 (id, credential_id, status, rotation_id, fingerprint, serial, not_before, not_after, details, number)
             SELECT u.*, (SELECT coalesce(max(v.number), 0) + 1 FROM credential_versions v
                          WHERE v.credential_id = u.cid AND v.status <> 'failed')
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::uuid[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::timestamptz[], $9::jsonb[])
                  AS u(id, cid, status, rid, fp, serial, nb, na, details)
             RETURNING id, number",
        )
        .bind(&vids)
        .bind(&ids)
        .bind(vec!["pending"; ids.len()])
        .bind(&rids)
        .bind(&fps)
        .bind(&serials)
        .bind(&nbs)
        .bind(&nas)
        .bind(&details)
        .fetch_all(&mut *tx)
        .await?;
        let number_of = |vid: i64| numbers.iter().find(|n| n.0 == vid).map_or(0, |n| n.1);
        let fresh: Vec<usize> = (0..ids.len())
            .filter(|i| rotation_of(ids[*i]).is_none())
            .collect();
        if !fresh.is_empty() {
            let f_rids: Vec<Uuid> = fresh.iter().map(|i| rids[*i]).collect();
            let f_ids: Vec<i64> = fresh.iter().map(|i| ids[*i]).collect();
            let f_triggers: Vec<&str> = fresh.iter().map(|i| items[*i].trigger).collect();
            let f_dues: Vec<Option<DateTime<Utc>>> =
                fresh.iter().map(|i| items[*i].due_at).collect();
            let f_vids: Vec<i64> = fresh.iter().map(|i| vids[*i]).collect();
            sqlx::query(
                "INSERT INTO rotations (id, credential_id, trigger, requested_by, due_at, status, replica, started_at, version_id)
                 SELECT u.rid, u.cid, u.trig, $4, u.due, 'running', $5, now(), u.vid
                 FROM unnest($1::uuid[], $2::bigint[], $3::text[], $6::timestamptz[], $7::bigint[])
                      AS u(rid, cid, trig, due, vid)",
            )
            .bind(&f_rids)
            .bind(&f_ids)
            .bind(&f_triggers)
            .bind(&actor)
            .bind(replica)
            .bind(&f_dues)
            .bind(&f_vids)
            .execute(&mut *tx)
            .await?;
        }
        if !queued.is_empty() {
            sqlx::query(
                "UPDATE rotations r SET status = 'running', started_at = now(), replica = $2,
                     due_at = c.next_rotation_at, version_id = u.vid
                 FROM credentials c, unnest($1::bigint[], $3::bigint[]) AS u(cid, vid)
                 WHERE r.credential_id = u.cid AND r.status = 'queued' AND c.id = r.credential_id",
            )
            .bind(&ids)
            .bind(replica)
            .bind(&vids)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((0..ids.len())
            .map(|i| Attempt {
                credential_id: ids[i],
                rotation_id: rids[i],
                version_id: vids[i],
                number: number_of(vids[i]),
            })
            .collect())
    }

    /// Commits published versions in one transaction: fencing first (only
    /// credentials still leased at the same epoch are committed), then the
    /// old version superseded, the new one published, the credential pointed
    /// at it with its next due time, the rotation finished, audit events
    /// written, and waiters notified. Returns the committed credential ids.
    /// `audit[i]` is the event for `items[i]`; only committed items' events are written.
    pub async fn commit_successes(
        &self,
        items: &[Success],
        audit: &[NewEvent],
    ) -> Result<Vec<i64>, StoreError> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        let cids: Vec<i64> = items.iter().map(|s| s.credential_id).collect();
        let epochs: Vec<i64> = items.iter().map(|s| s.lease_epoch).collect();
        let vids: Vec<i64> = items.iter().map(|s| s.version_id).collect();
        let nbs: Vec<DateTime<Utc>> = items.iter().map(|s| s.not_before).collect();
        let nas: Vec<DateTime<Utc>> = items.iter().map(|s| s.not_after).collect();
        let nexts: Vec<DateTime<Utc>> = items.iter().map(|s| s.next_rotation_at).collect();
        let reasons: Vec<&str> = items.iter().map(|s| s.next_reason).collect();
        let retire: Vec<Option<DateTime<Utc>>> =
            items.iter().map(|s| s.retire_previous_after).collect();
        let mut tx = self.pool().begin().await?;
        let committed: Vec<i64> = sqlx::query_scalar(
            "UPDATE credentials c
             SET current_version = u.vid, not_before = u.nb, not_after = u.na, next_rotation_at = u.next,
                 next_rotation_reason = u.reason, lease_owner = NULL, lease_expires_at = NULL,
                 failures = 0, last_error = NULL, updated_at = now()
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::timestamptz[], $5::timestamptz[],
                         $6::timestamptz[], $7::text[]) AS u(id, epoch, vid, nb, na, next, reason)
             WHERE c.id = u.id AND c.lease_epoch = u.epoch
             RETURNING c.id",
        )
        .bind(&cids)
        .bind(&epochs)
        .bind(&vids)
        .bind(&nbs)
        .bind(&nas)
        .bind(&nexts)
        .bind(&reasons)
        .fetch_all(&mut *tx)
        .await?;
        if committed.is_empty() {
            tx.rollback().await?;
            return Ok(committed);
        }
        let keep = |i: usize| committed.contains(&cids[i]);
        let ok_vids: Vec<i64> = (0..items.len())
            .filter(|i| keep(*i))
            .map(|i| vids[i])
            .collect();
        let ok_cids: Vec<i64> = (0..items.len())
            .filter(|i| keep(*i))
            .map(|i| cids[i])
            .collect();
        let ok_retire: Vec<Option<DateTime<Utc>>> = (0..items.len())
            .filter(|i| keep(*i))
            .map(|i| retire[i])
            .collect();
        let ok_rotations: Vec<Uuid> = (0..items.len())
            .filter(|i| keep(*i))
            .map(|i| items[i].rotation_id)
            .collect();
        sqlx::query(
            "UPDATE credential_versions v SET status = 'superseded', superseded_at = now(), retire_after = u.retire
             FROM unnest($1::bigint[], $2::timestamptz[]) AS u(cid, retire)
             WHERE v.credential_id = u.cid AND v.status = 'published'",
        )
        .bind(&ok_cids)
        .bind(&ok_retire)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE credential_versions SET status = 'published', published_at = now() WHERE id = ANY($1)")
            .bind(&ok_vids)
            .execute(&mut *tx)
            .await?;
        // The bundle the sink now holds: the one the version was issued with.
        sqlx::query(
            "UPDATE credentials c SET bundle_fingerprint = v.details->>'bundle_fingerprint',
                 bundle_published_at = now()
             FROM credential_versions v WHERE v.id = c.current_version AND c.id = ANY($1)",
        )
        .bind(&ok_cids)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE rotations SET status = 'succeeded', finished_at = now() WHERE id = ANY($1)",
        )
        .bind(&ok_rotations)
        .execute(&mut *tx)
        .await?;
        let audit: Vec<NewEvent> = (0..items.len())
            .filter(|i| keep(*i))
            .filter_map(|i| audit.get(i).cloned())
            .collect();
        super::audit::record_many(&mut *tx, &audit).await?;
        // Only "rotate now" callers wait on a rotation.
        sqlx::query("SELECT pg_notify($1, id::text) FROM rotations WHERE id = ANY($2) AND trigger = 'manual'")
            .bind(DONE_CHANNEL)
            .bind(&ok_rotations)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(committed)
    }

    /// Records failed attempts (only where the lease is still held at the same epoch).
    pub async fn record_failures(
        &self,
        replica: &str,
        items: &[Failure],
        audit: &[NewEvent],
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let cids: Vec<i64> = items.iter().map(|f| f.credential_id).collect();
        let epochs: Vec<i64> = items.iter().map(|f| f.lease_epoch).collect();
        let retry: Vec<DateTime<Utc>> = items.iter().map(|f| f.retry_at).collect();
        let errors: Vec<&str> = items.iter().map(|f| f.error.as_str()).collect();
        let rids: Vec<Option<Uuid>> = items.iter().map(|f| f.rotation_id).collect();
        let failed_versions: Vec<i64> = items
            .iter()
            .filter_map(|f| f.version.filter(|v| !v.1).map(|v| v.0))
            .collect();
        let mut tx = self.pool().begin().await?;
        let owned: Vec<i64> = sqlx::query_scalar(
            "UPDATE credentials c
             SET lease_owner = NULL, lease_expires_at = NULL, failures = c.failures + 1, last_error = u.err,
                 next_rotation_at = u.retry, updated_at = now()
             FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::text[]) AS u(id, epoch, retry, err)
             WHERE c.id = u.id AND c.lease_epoch = u.epoch
             RETURNING c.id",
        )
        .bind(&cids)
        .bind(&epochs)
        .bind(&retry)
        .bind(&errors)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE credential_versions SET status = 'failed' WHERE id = ANY($1) AND status = 'pending'
               AND credential_id = ANY($2)",
        )
        .bind(&failed_versions)
        .bind(&owned)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE rotations r SET status = 'failed', finished_at = now(), error = u.err
             FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS u(rid, err, cid)
             WHERE r.id = u.rid AND r.status = 'running' AND u.cid = ANY($4)",
        )
        .bind(&rids)
        .bind(&errors)
        .bind(&cids)
        .bind(&owned)
        .execute(&mut *tx)
        .await?;
        // Attempts that failed before a rotation row was opened (issuing failed):
        // a queued request fails with them, else a failed row records the attempt.
        let unopened: Vec<usize> = (0..items.len())
            .filter(|i| items[*i].rotation_id.is_none() && owned.contains(&cids[*i]))
            .collect();
        if !unopened.is_empty() {
            let u_cids: Vec<i64> = unopened.iter().map(|i| cids[*i]).collect();
            let u_errors: Vec<&str> = unopened.iter().map(|i| errors[*i]).collect();
            let u_triggers: Vec<&str> = unopened.iter().map(|i| items[*i].trigger).collect();
            let u_dues: Vec<Option<DateTime<Utc>>> =
                unopened.iter().map(|i| items[*i].due_at).collect();
            let u_ids: Vec<Uuid> = unopened.iter().map(|_| Uuid::new_v4()).collect();
            sqlx::query(
                "WITH queued AS (
                    UPDATE rotations r SET status = 'failed', started_at = now(), finished_at = now(), error = u.err
                    FROM unnest($1::bigint[], $2::text[]) AS u(cid, err)
                    WHERE r.credential_id = u.cid AND r.status IN ('queued', 'running')
                    RETURNING r.credential_id
                 )
                 INSERT INTO rotations (id, credential_id, trigger, requested_by, due_at, status, replica,
                                        started_at, finished_at, error)
                 SELECT u.rid, u.cid, u.trig, $6, u.due, 'failed', $7, now(), now(), u.err
                 FROM unnest($3::uuid[], $1::bigint[], $4::text[], $5::timestamptz[], $2::text[])
                      AS u(rid, cid, trig, due, err)
                 WHERE u.cid NOT IN (SELECT credential_id FROM queued)",
            )
            .bind(&u_cids)
            .bind(&u_errors)
            .bind(&u_ids)
            .bind(&u_triggers)
            .bind(&u_dues)
            .bind(format!("rekey/{replica}"))
            .bind(replica)
            .execute(&mut *tx)
            .await?;
        }
        super::audit::record_many(&mut *tx, audit).await?;
        let ids: Vec<String> = rids.iter().flatten().map(Uuid::to_string).collect();
        sqlx::query("SELECT pg_notify($1, x) FROM unnest($2::text[]) AS x")
            .bind(DONE_CHANNEL)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Releases leases without recording anything (shutdown before work started).
    pub async fn release_leases(&self, items: &[(i64, i64)]) -> Result<(), StoreError> {
        let cids: Vec<i64> = items.iter().map(|i| i.0).collect();
        let epochs: Vec<i64> = items.iter().map(|i| i.1).collect();
        sqlx::query(
            "UPDATE credentials c SET lease_owner = NULL, lease_expires_at = NULL
             FROM unnest($1::bigint[], $2::bigint[]) AS u(id, epoch)
             WHERE c.id = u.id AND c.lease_epoch = u.epoch",
        )
        .bind(&cids)
        .bind(&epochs)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The pending versions of a credential, newest first, with their facts.
    pub async fn pending_versions(
        &self,
        credential_id: i64,
    ) -> Result<Vec<PendingVersion>, StoreError> {
        Ok(sqlx::query_as::<_, PendingVersion>(
            "SELECT id, rotation_id, fingerprint, not_before, not_after, coalesce(number, 0) AS number
             FROM credential_versions
             WHERE credential_id = $1 AND status = 'pending' ORDER BY id DESC",
        )
        .bind(credential_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Marks versions that never reached the sink as failed, and their rotations abandoned.
    pub async fn abandon_versions(
        &self,
        credential_id: i64,
        epoch: i64,
        versions: &[i64],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let owned: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM credentials WHERE id = $1 AND lease_epoch = $2 FOR UPDATE",
        )
        .bind(credential_id)
        .bind(epoch)
        .fetch_optional(&mut *tx)
        .await?;
        if owned.is_some() {
            sqlx::query("UPDATE credential_versions SET status = 'failed' WHERE id = ANY($1) AND status = 'pending'")
                .bind(versions)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE rotations SET status = 'abandoned', finished_at = now(),
                     error = coalesce(error, 'interrupted before publishing; the version never reached the sink')
                 WHERE version_id = ANY($1) AND status IN ('running', 'failed')",
            )
            .bind(versions)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Wakes every engine (after config sync or a manual request).
    pub async fn wake_engines(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, 'wake')")
            .bind(WAKE_CHANNEL)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The earliest time a credential may be claimed, to sleep until: its
    /// due time, or for one under a live lease (a rotation in flight, e.g.
    /// a CSR waiting for its certificate) the end of that lease. Without
    /// the lease, a due credential being rotated would make every idle
    /// engine poll without pause for as long as the rotation takes.
    pub async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT min(CASE WHEN lease_expires_at > now()
                             THEN greatest(next_rotation_at, lease_expires_at)
                             ELSE next_rotation_at END)
             FROM credentials WHERE managed AND removed_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?)
    }
}

/// A version left `pending` by an interrupted attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingVersion {
    /// Version id.
    pub id: i64,
    /// Its rotation.
    pub rotation_id: Option<Uuid>,
    /// Recorded before publishing, if the attempt got that far.
    pub fingerprint: Option<String>,
    /// Validity start, if recorded.
    pub not_before: Option<DateTime<Utc>>,
    /// Validity end, if recorded.
    pub not_after: Option<DateTime<Utc>>,
    /// Its number among the credential's versions.
    pub number: i64,
}
