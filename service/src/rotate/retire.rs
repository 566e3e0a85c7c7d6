//! Retiring superseded versions after their grace period: a bound
//! service-account token is revoked by deleting its per-version Secret once
//! consumers have had `grace` to reload the new one. (Unbound TokenRequest
//! tokens cannot be revoked one by one: they are left to expire.)
//!
//! Runs on every replica: rows are claimed with `FOR UPDATE SKIP LOCKED`, so
//! each version is retired once.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::TokenIssuer;
use crate::{
    config::TokenSpec,
    store::{
        Store, StoreError,
        audit::{NewEvent, Outcome},
    },
};

/// How often superseded versions are looked at.
const INTERVAL: Duration = Duration::from_secs(5);

/// Versions retired per round.
const BATCH: i64 = 50;

/// Retires what is due now; returns how many versions were revoked.
pub async fn retire_due(
    store: &Store,
    tokens: &dyn TokenIssuer,
    actor: &str,
) -> Result<usize, StoreError> {
    let mut tx = store.pool().begin().await?;
    let due: Vec<(i64, String, serde_json::Value, serde_json::Value)> = sqlx::query_as(
        "SELECT v.id, c.name, c.spec, v.details
         FROM credential_versions v JOIN credentials c ON c.id = v.credential_id
         WHERE v.status = 'superseded' AND v.retire_after <= now() AND c.kind = 'service_account_token'
         ORDER BY v.retire_after
         LIMIT $1
         FOR UPDATE OF v SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let mut revoked = Vec::new();
    let mut events = Vec::new();
    for (id, name, spec, details) in due {
        let Ok(spec) = serde_json::from_value::<TokenSpec>(spec) else {
            continue;
        };
        match tokens.retire(&spec, &details).await {
            Ok(()) => {
                crate::crash::point("retire-after-revoke");
                revoked.push(id);
                let mut e =
                    NewEvent::new(actor, "credential.retire_version", &name, Outcome::Success);
                e.reason = Some("grace period over".into());
                e.details = serde_json::json!({ "version": id, "bound": details });
                events.push(e);
            }
            Err(e) => {
                tracing::warn!(credential = %name, version = id, error = %e, "retiring a superseded token failed; will retry")
            }
        }
    }
    sqlx::query(
        "UPDATE credential_versions SET status = 'revoked', revoked_at = now() WHERE id = ANY($1)",
    )
    .bind(&revoked)
    .execute(&mut *tx)
    .await?;
    crate::store::audit::record_many(&mut *tx, &events).await?;
    tx.commit().await?;
    Ok(revoked.len())
}

/// Retires due versions every few seconds until `shutdown`.
pub async fn run(
    store: Store,
    tokens: Arc<dyn TokenIssuer>,
    actor: String,
    shutdown: CancellationToken,
) {
    loop {
        match retire_due(&store, tokens.as_ref(), &actor).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(versions = n, "retired superseded token versions"),
            Err(e) => tracing::warn!(error = %e, "retiring superseded versions failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
