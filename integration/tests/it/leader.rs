//! Leader election on a Postgres advisory lock: one leader at a time, and a
//! takeover with a higher epoch when the leader's connection dies.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rekey::runtime::leader;
use rekey_integration::pg::fresh_db;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    active: AtomicUsize,
    max_active: AtomicUsize,
    epochs: Mutex<Vec<(String, i64)>>,
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
    let a = spawn(db.store.clone(), "a", seen.clone(), shutdown.clone());
    let b = spawn(db.store.clone(), "b", seen.clone(), shutdown.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(seen.active.load(Ordering::SeqCst), 1, "exactly one leader");
    let first = seen.epochs.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].1, 1);

    // The leader's lock connection dies (e.g. its node loses the network).
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(killed, vec![true]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let epochs = seen.epochs.lock().unwrap().clone();
        if epochs.len() >= 2 {
            assert_eq!(
                epochs[1].1, 2,
                "a new leadership has a higher epoch: {epochs:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no takeover: {epochs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
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
