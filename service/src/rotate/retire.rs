//! Retiring superseded versions after their grace period: a bound
//! service-account token is revoked by deleting its per-version Secret once
//! consumers have had `grace` to reload the new one. (Unbound TokenRequest
//! tokens cannot be revoked one by one: they are left to expire.)
//!
//! Runs on every replica: versions are claimed with `FOR UPDATE SKIP
//! LOCKED` (`store::versions`), so each version is retired once.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::tokens::{TokenIssuer, TokenSpec};
use crate::{
    schedule::jobs::every,
    store::{
        Store, StoreError,
        audit::{NewEvent, Outcome},
    },
};

/// How often superseded versions are looked at.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Versions retired per round.
const BATCH: i64 = 50;

/// Retires what is due now; returns how many versions were revoked.
pub async fn retire_due(
    store: &Store,
    tokens: &dyn TokenIssuer,
    actor: &str,
) -> Result<usize, StoreError> {
    let claimed = store.claim_retirements(BATCH).await?;
    let mut revoked = Vec::new();
    let mut events = Vec::new();
    for v in &claimed.due {
        let Ok(spec) = serde_json::from_value::<TokenSpec>(v.spec.clone()) else {
            continue;
        };
        match tokens.retire(&spec, &v.details).await {
            Ok(()) => {
                crate::crash::point("retire-after-revoke");
                revoked.push(v.id);
                let mut e = NewEvent::new(
                    actor,
                    "credential.retire_version",
                    &v.credential,
                    Outcome::Success,
                );
                e.reason = Some("grace period over".into());
                e.details = serde_json::json!({ "version": v.id, "bound": v.details });
                events.push(e);
            }
            Err(e) => {
                tracing::warn!(credential = %v.credential, version = v.id, error = %e, "retiring a superseded token failed; will retry")
            }
        }
    }
    claimed.finish(&revoked, &events).await?;
    Ok(revoked.len())
}

/// Retires due versions every [`INTERVAL`] until `shutdown`.
pub async fn run(
    store: Store,
    tokens: Arc<dyn TokenIssuer>,
    actor: String,
    shutdown: CancellationToken,
) {
    every(INTERVAL, &shutdown, |_| {
        let (store, tokens, actor) = (&store, &tokens, &actor);
        async move {
            match retire_due(store, tokens.as_ref(), actor).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(versions = n, "retired superseded token versions"),
                Err(e) => tracing::warn!(error = %e, "retiring superseded versions failed"),
            }
        }
    })
    .await;
}
