//! Postgres LISTEN with reconnect: the one way rekey waits on a channel.
//!
//! [`listen`] spawns a task that holds a dedicated connection LISTENing on
//! one channel and relays each payload to a broadcast channel; when the
//! connection drops (Postgres restarted, network) it reconnects with
//! exponential backoff. Notifications sent while no connection was up are
//! lost, so every waiter also polls at its own pace: a notification only
//! shortens a wait, correctness never depends on one.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::pool::Store;

/// First delay before reconnecting; doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// Longest delay between reconnection attempts: a waiter polls meanwhile.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);
/// Payloads buffered per subscriber; a slow subscriber sees `Lagged`, which
/// for a wake-up means "something happened": re-read the table.
const BUFFER: usize = 1024;

/// Notifications on one channel. Subscribe before doing the work whose
/// notification you wait for, so that none is missed in between.
#[derive(Clone, Debug)]
pub struct Notifications {
    tx: broadcast::Sender<String>,
}

impl Notifications {
    /// A receiver of every payload sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }
}

/// LISTENs on `channel` until `shutdown`, reconnecting as needed.
pub fn listen(store: &Store, channel: &'static str, shutdown: CancellationToken) -> Notifications {
    let (tx, _) = broadcast::channel(BUFFER);
    let relay = tx.clone();
    let store = store.clone();
    tokio::spawn(async move { relay_until(store, channel, relay, shutdown).await });
    Notifications { tx }
}

async fn relay_until(
    store: Store,
    channel: &'static str,
    tx: broadcast::Sender<String>,
    shutdown: CancellationToken,
) {
    let mut delay = FIRST_RECONNECT_DELAY;
    let mut logged = false;
    loop {
        let connect = async {
            let mut l = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
            l.listen(channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            () = shutdown.cancelled() => return,
            l = connect => match l {
                Ok(l) => l,
                Err(e) => {
                    if !logged {
                        tracing::warn!(channel, error = %e, "cannot LISTEN; polling until Postgres is back");
                        logged = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                    continue;
                }
            },
        };
        if logged {
            tracing::info!(channel, "LISTENing again");
            logged = false;
        }
        delay = FIRST_RECONNECT_DELAY;
        loop {
            let n = tokio::select! {
                () = shutdown.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match n {
                Ok(Some(n)) => {
                    let _ = tx.send(n.payload().to_owned());
                }
                // The connection was lost and sqlx reconnected: notifications
                // in between are gone. Tell subscribers something may have
                // happened (an empty payload), as a lag would.
                Ok(None) => {
                    let _ = tx.send(String::new());
                }
                Err(e) => {
                    tracing::debug!(channel, error = %e, "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}
