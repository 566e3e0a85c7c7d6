//! The store against real Postgres: migrations and the append-only audit log.

use rekey::store::audit::{NewEvent, Outcome};
use rekey_integration::pg::fresh_db;

#[tokio::test]
async fn audit_events_are_append_only() {
    let db = fresh_db().await;
    db.store
        .audit(NewEvent::new(
            "tester",
            "credential.rotate",
            "cert/x",
            Outcome::Success,
        ))
        .await
        .unwrap();
    let upd = sqlx::query("UPDATE audit_events SET actor = 'someone else'")
        .execute(db.pool())
        .await;
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    let del = sqlx::query("DELETE FROM audit_events")
        .execute(db.pool())
        .await;
    assert!(del.unwrap_err().to_string().contains("append-only"));
    let trunc = sqlx::query("TRUNCATE audit_events")
        .execute(db.pool())
        .await;
    assert!(trunc.unwrap_err().to_string().contains("append-only"));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn migrations_apply_twice_without_change() {
    let db = fresh_db().await;
    db.store.migrate().await.unwrap();
    assert!(db.store.ready().await);
}
