//! Leader election on a Postgres advisory lock: one leader at a time, and a
//! takeover with a higher epoch when the leader's connection dies.
//!
//! Each replica gets a pool of its own that counts the connections it
//! opens: `leader::lead` takes a fresh connection for every attempt at the
//! lock (it detaches it from the pool), so the count is the attempts begun,
//! and "the follower tried again and is still not leading" is observable
//! instead of slept for.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rekey::{runtime::leader, store::Store};
use rekey_integration::{
    pg::fresh_db,
    wait::{check, eventually},
};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    active: AtomicUsize,
    max_active: AtomicUsize,
    epochs: Mutex<Vec<(String, i64)>>,
}

/// A store on `url` whose pool counts in `attempts` the connections it opens.
fn counting_store(url: &str, attempts: Arc<AtomicUsize>) -> Store {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .after_connect(move |_, _| {
            let attempts = attempts.clone();
            Box::pin(async move {
                attempts.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        })
        .connect_lazy(url)
        .expect("a lazy pool");
    Store::from_pool(pool)
}

/// Waits until `replica` has begun `n` more attempts at the lock than
/// `since`: each of the attempts before the last has finished (and failed,
/// or the replica would be leading instead of trying again).
async fn wait_attempts(replica: &str, attempts: &AtomicUsize, since: usize, n: usize) {
    eventually(
        &format!("{n} more attempts at the lock by {replica}"),
        leader::RETRY * (n as u32 + 5),
        async || check(attempts.load(Ordering::SeqCst), |&a| a >= since + n),
    )
    .await;
}

fn spawn(
    store: rekey::store::Store,
    replica: &str,
    seen: Arc<Seen>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let replica = replica.to_string();
    tokio::spawn(async move {
        let name = replica.clone();
        leader::lead(store, "test-job", replica, shutdown, move |led, epoch| {
            let (seen, name) = (seen.clone(), name.clone());
            async move {
                let now = seen.active.fetch_add(1, Ordering::SeqCst) + 1;
                seen.max_active.fetch_max(now, Ordering::SeqCst);
                seen.epochs.lock().unwrap().push((name, epoch));
                led.cancelled().await;
                seen.active.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await;
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_at_a_time_and_takeover_when_it_dies() {
    let db = fresh_db().await;
    let seen = Arc::new(Seen::default());
    let shutdown = CancellationToken::new();
    let attempts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let a = spawn(
        counting_store(&db.url, attempts[0].clone()),
        "a",
        seen.clone(),
        shutdown.clone(),
    );
    let b = spawn(
        counting_store(&db.url, attempts[1].clone()),
        "b",
        seen.clone(),
        shutdown.clone(),
    );
    let of = |r: &str| &attempts[usize::from(r == "b")];
    let first_leader = eventually("a first leader", Duration::from_secs(15), async || {
        let epochs = seen.epochs.lock().unwrap().clone();
        epochs.first().map(|(name, _)| name.clone()).ok_or(epochs)
    })
    .await;
    // The other replica tries twice more (every RETRY) and leads neither time.
    let follower = if first_leader == "a" { "b" } else { "a" };
    wait_attempts(follower, of(follower), 0, 3).await;
    assert_eq!(seen.active.load(Ordering::SeqCst), 1, "exactly one leader");
    let first = seen.epochs.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].1, 1);

    // The leader's lock connection dies (e.g. its node loses the network).
    // The cluster is shared by every test of the process: only this
    // database's advisory locks are this test's.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(killed, vec![true]);
    let epochs = eventually("a takeover", Duration::from_secs(15), async || {
        check(seen.epochs.lock().unwrap().clone(), |e| e.len() >= 2)
    })
    .await;
    assert_eq!(
        epochs[1].1, 2,
        "a new leadership has a higher epoch: {epochs:?}"
    );
    // The replica not leading now tries twice more and leads neither time,
    // and the deposed leader's job never runs beside the new one.
    let loser = if epochs[1].0 == "a" { "b" } else { "a" };
    let since = of(loser).load(Ordering::SeqCst);
    wait_attempts(loser, of(loser), since, 2).await;
    assert_eq!(
        seen.max_active.load(Ordering::SeqCst),
        1,
        "two leaders ran at once"
    );
    assert_eq!(seen.active.load(Ordering::SeqCst), 1);
    let (holder, epoch): (String, i64) =
        sqlx::query_as("SELECT holder, epoch FROM leadership WHERE name = 'test-job'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(epoch, 2);
    let epochs = seen.epochs.lock().unwrap().clone();
    assert_eq!(epochs.last().unwrap().0, holder);
    shutdown.cancel();
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(seen.active.load(Ordering::SeqCst), 0);
}
