//! The store against real Postgres: migrations and the append-only audit log.

use rekey::store::audit::{NewEvent, Outcome};
use rekey_integration::pg::{empty_db, fresh_db};

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
    let db = empty_db().await;
    let all = rekey::store::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .count();
    assert_eq!(db.store.migrate().await.unwrap(), all, "a new database");
    assert_eq!(db.store.migrate().await.unwrap(), 0, "nothing pending");
    assert!(db.store.ready().await);
}
