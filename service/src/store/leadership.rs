//! `leadership` and the advisory locks behind leader election: one lock per
//! job name, held on a dedicated connection (Postgres releases it when the
//! connection goes), and an epoch bumped at each new leadership as a fencing
//! token. The election loop itself is `runtime::leader`.

use sqlx::{Connection, PgConnection};

use super::{error::StoreError, pool::Store};

/// A held leader lock: the dedicated connection it lives on and the epoch.
pub struct LeaderLock {
    conn: PgConnection,
    /// The leadership epoch (1 for the first leader of this name).
    pub epoch: i64,
}

impl std::fmt::Debug for LeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderLock")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Tries to take the lock of `name` for `replica`: `None` when another
    /// replica holds it. On success the epoch of `name` is bumped and
    /// `replica` recorded as its holder.
    pub async fn try_lead(
        &self,
        name: &str,
        replica: &str,
    ) -> Result<Option<LeaderLock>, StoreError> {
        let mut conn = self.pool().acquire().await?.detach();
        let got: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext('rekey:leader:' || $1)::bigint)",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
        if !got {
            let _ = conn.close().await;
            return Ok(None);
        }
        let epoch: i64 = sqlx::query_scalar(
            "INSERT INTO leadership (name, epoch, holder) VALUES ($1, 1, $2)
             ON CONFLICT (name) DO UPDATE SET epoch = leadership.epoch + 1, holder = EXCLUDED.holder, acquired_at = now()
             RETURNING epoch",
        )
        .bind(name)
        .bind(replica)
        .fetch_one(&mut conn)
        .await?;
        Ok(Some(LeaderLock { conn, epoch }))
    }
}

impl LeaderLock {
    /// Checks that the lock's connection (and so the lock) is still alive.
    pub async fn check(&mut self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut self.conn).await?;
        Ok(())
    }

    /// Releases the lock by closing its connection.
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}
