//! The engine's state machine driven step by step against real Postgres:
//! recovery of interrupted attempts, "rotate now" requests, lease fencing.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use rekey::{
    issue::{CertAuthority, CertificateSpec, KeyType, Usage},
    rotate::{Engine, EngineConfig, EngineDeps, EventOutcome},
    sink::{Material, Publication, SinkSpec, file::FileSink},
    store::{
        engine::Success,
        rotations::{Idempotency, ManualRequest, RequestOutcome},
        sync::Declared,
    },
};
use rekey_integration::pg::{TestDb, fresh_db};

struct Fixture {
    db: TestDb,
    ca: Arc<CertAuthority>,
    _dir: tempfile::TempDir,
    spec: CertificateSpec,
}

async fn fixture() -> Fixture {
    let db = fresh_db().await;
    let (ca, _) = CertAuthority::generate(
        "test CA",
        KeyType::EcdsaP256,
        TimeDelta::days(1),
        Utc::now(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = CertificateSpec {
        name: "cert/t/web".into(),
        issuer: None,
        common_name: None,
        organizations: vec![],
        dns_names: vec!["web.t.svc".into()],
        ip_addresses: vec![],
        key: KeyType::EcdsaP256,
        usages: vec![Usage::Server],
        lifetime: std::time::Duration::from_secs(3600).into(),
        renew_fraction: None,
        renew_before: None,
        schedule: None,
        sink: SinkSpec::File {
            dir: dir.path().join("web"),
        },
        adopt: false,
        reload: vec![],
        probe: None,
        probe_grace: None,
    };
    db.store
        .sync_declared(
            "config",
            &[Declared {
                name: spec.name.clone(),
                kind: "certificate",
                spec: serde_json::to_value(&spec).unwrap(),
                sink: serde_json::to_value(&spec.sink).unwrap(),
                schedule: None,
                material_hash: "h".into(),
            }],
            "test",
        )
        .await
        .unwrap();
    Fixture {
        db,
        ca: Arc::new(ca),
        _dir: dir,
        spec,
    }
}

fn engine(f: &Fixture, replica: &str) -> Arc<Engine> {
    Engine::new(EngineDeps {
        store: f.db.store.clone(),
        replica: replica.into(),
        config: EngineConfig::default(),
        issuers: Arc::new(rekey::issue::Issuers::default_ca(f.ca.clone())),
        sinks: Default::default(),
        tokens: None,
        reload: None,
        probes: None,
    })
}

async fn scalar_i64(f: &Fixture, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(f.db.pool())
        .await
        .unwrap()
}

async fn make_due(f: &Fixture) {
    sqlx::query("UPDATE credentials SET next_rotation_at = now() - interval '1 second', lease_expires_at = NULL")
        .execute(f.db.pool())
        .await
        .unwrap();
}

/// Leaves the state a crash right after publishing leaves: a version
/// recorded and in the sink, but not committed, claimed by a dead replica.
async fn crash_after_publish(f: &Fixture) -> i64 {
    make_due(f).await;
    let store = &f.db.store;
    let claimed = store.claim_due("ghost", 10, 10.0).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    let cert = f.ca.issue(&f.spec, Utc::now()).unwrap();
    let facts = rekey::store::engine::VersionFacts {
        version_id: c.reserved_version,
        credential_id: c.id,
        fingerprint: cert.fingerprint.clone(),
        serial: Some(cert.serial.clone()),
        not_before: cert.not_before,
        not_after: cert.not_after,
        details: serde_json::json!({}),
    };
    let opening = rekey::store::engine::Opening {
        lease_epoch: c.lease_epoch,
        due_at: c.next_rotation_at,
        trigger: "expiry",
        facts,
    };
    let attempts = store
        .open_attempts("ghost", 10.0, &[opening])
        .await
        .unwrap();
    assert_eq!(attempts.len(), 1);
    let a = attempts[0];
    assert_eq!(a.version_id, c.reserved_version);
    let m = Material::Certificate {
        chain_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem,
        ca_pem: cert.ca_pem,
    };
    let SinkSpec::File { dir } = &f.spec.sink else {
        unreachable!()
    };
    FileSink::new(dir.clone())
        .publish_blocking(&Publication {
            credential: &f.spec.name,
            version: a.version_id,
            number: a.number,
            not_after: cert.not_after,
            material: &m,
            adopt: false,
        })
        .unwrap();
    sqlx::query("UPDATE credentials SET lease_expires_at = now() - interval '1 second'")
        .execute(f.db.pool())
        .await
        .unwrap();
    a.version_id
}

#[tokio::test]
async fn a_version_published_before_a_crash_is_recovered_not_reissued() {
    let f = fixture().await;
    let e = engine(&f, "alive");
    let mut events = e.subscribe();
    assert_eq!(e.run_once().await.unwrap(), 1);
    assert_eq!(
        events.recv().await.unwrap().outcome,
        EventOutcome::Succeeded
    );
    let orphan = crash_after_publish(&f).await;

    assert_eq!(e.run_once().await.unwrap(), 1);
    let ev = events.recv().await.unwrap();
    assert_eq!(ev.outcome, EventOutcome::Recovered);
    assert_eq!(ev.version, Some(orphan));
    let current = scalar_i64(&f, "SELECT current_version FROM credentials").await;
    assert_eq!(current, orphan, "the version in the sink becomes current");
    assert_eq!(
        scalar_i64(&f, "SELECT count(*) FROM credential_versions").await,
        2,
        "nothing re-issued"
    );
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM credential_versions WHERE status = 'superseded'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM rotations WHERE status = 'succeeded'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM credential_versions WHERE status = 'pending'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_version_that_never_reached_the_sink_is_failed_and_replaced() {
    let f = fixture().await;
    let e = engine(&f, "alive");
    e.run_once().await.unwrap();
    let orphan = crash_after_publish(&f).await;
    // Roll the sink back to the previous version, as if the crash came before publishing.
    let SinkSpec::File { dir } = &f.spec.sink else {
        unreachable!()
    };
    std::fs::write(dir.join(".rekey-version"), format!("{}\n", orphan - 1)).unwrap();

    assert_eq!(e.run_once().await.unwrap(), 1);
    let status: String = sqlx::query_scalar("SELECT status FROM credential_versions WHERE id = $1")
        .bind(orphan)
        .fetch_one(f.db.pool())
        .await
        .unwrap();
    assert_eq!(status, "failed");
    let current = scalar_i64(&f, "SELECT current_version FROM credentials").await;
    assert!(current > orphan, "a fresh version replaces the lost one");
    let marker: i64 = std::fs::read_to_string(dir.join(".rekey-version"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(marker, current);
    assert_eq!(
        scalar_i64(
            &f,
            "SELECT count(*) FROM rotations WHERE status = 'abandoned'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn rotate_now_requests_join_the_one_in_flight() {
    let f = fixture().await;
    let e = engine(&f, "alive");
    e.run_once().await.unwrap();
    let store = &f.db.store;
    let first = match store
        .request_rotation("cert/t/web", "CN=ops", Some("key leaked"))
        .await
        .unwrap()
    {
        RequestOutcome::Queued(r) => r,
        other => panic!("{other:?}"),
    };
    let second = match store
        .request_rotation("cert/t/web", "CN=other", None)
        .await
        .unwrap()
    {
        RequestOutcome::Existing(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(first.id, second.id);
    // A request with an idempotency key that joins the rotation in flight...
    match store
        .request_rotation_audited(&keyed("CN=ops", "k-join", "d0"), None)
        .await
        .unwrap()
    {
        RequestOutcome::Existing(r) => assert_eq!(r.id, first.id),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store
            .request_rotation("cert/nope", "x", None)
            .await
            .unwrap(),
        RequestOutcome::NotFound
    ));
    assert_eq!(e.run_once().await.unwrap(), 1);
    let done = store.rotation(first.id).await.unwrap().unwrap();
    assert_eq!(done.status, "succeeded");
    assert_eq!(done.trigger, "manual");
    assert_eq!(done.requested_by, "CN=ops");
    assert_eq!(done.reason.as_deref(), Some("key leaked"));
    // ...gets that same rotation back when retried after it finished.
    match store
        .request_rotation_audited(&keyed("CN=ops", "k-join", "d0"), None)
        .await
        .unwrap()
    {
        RequestOutcome::Existing(r) => {
            assert_eq!((r.id, r.status.as_str()), (first.id, "succeeded"))
        }
        other => panic!("{other:?}"),
    }
    assert!(done.version_id.is_some());
    // With nothing in flight, a new request is a new rotation; an idempotency key replays.
    let third = match store
        .request_rotation_audited(&keyed("CN=ops", "k1", "d0"), None)
        .await
        .unwrap()
    {
        RequestOutcome::Queued(r) => r,
        other => panic!("{other:?}"),
    };
    assert_ne!(third.id, first.id);
    e.run_once().await.unwrap();
    match store
        .request_rotation_audited(&keyed("CN=ops", "k1", "d0"), None)
        .await
        .unwrap()
    {
        RequestOutcome::Existing(r) => assert_eq!(r.id, third.id),
        other => panic!("{other:?}"),
    }
    // The same key with another request body is a conflict, not a replay...
    assert!(matches!(
        store
            .request_rotation_audited(&keyed("CN=ops", "k1", "d1"), None)
            .await
            .unwrap(),
        RequestOutcome::KeyConflict
    ));
    // ...and another caller's key of the same name is its own: a new rotation.
    match store
        .request_rotation_audited(&keyed("CN=other", "k1", "d0"), None)
        .await
        .unwrap()
    {
        RequestOutcome::Queued(r) => assert_ne!(r.id, third.id),
        other => panic!("{other:?}"),
    }
    e.run_once().await.unwrap();
    // No scheduled work is due, so nothing else ran.
    assert_eq!(e.run_once().await.unwrap(), 0);
}

/// A "rotate now" of `cert/t/web` by `actor` with idempotency key `key`
/// and request digest `digest`.
fn keyed<'a>(actor: &'a str, key: &'a str, digest: &'a str) -> ManualRequest<'a> {
    ManualRequest {
        name: "cert/t/web",
        actor,
        reason: None,
        idempotency: Some(Idempotency {
            key,
            request_sha256: digest,
        }),
    }
}

#[tokio::test]
async fn a_replica_that_lost_its_lease_cannot_commit() {
    let f = fixture().await;
    let store = &f.db.store;
    let stale = store.claim_due("slow", 10, 30.0).await.unwrap().remove(0);
    // The lease lapses; another replica claims and rotates.
    sqlx::query("UPDATE credentials SET lease_expires_at = now() - interval '1 second'")
        .execute(f.db.pool())
        .await
        .unwrap();
    let e = engine(&f, "fast");
    assert_eq!(e.run_once().await.unwrap(), 1);
    let winner = scalar_i64(&f, "SELECT current_version FROM credentials").await;
    // The slow replica wakes up and tries to commit a version of its own.
    let committed = store
        .commit_successes(
            &[Success {
                credential_id: stale.id,
                lease_epoch: stale.lease_epoch,
                rotation_id: uuid::Uuid::new_v4(),
                version_id: winner,
                not_before: Utc::now(),
                not_after: Utc::now() + TimeDelta::hours(1),
                next_rotation_at: Utc::now(),
                next_reason: "renew_fraction",
                retire_previous_after: None,
            }],
            &[],
        )
        .await
        .unwrap();
    assert!(committed.is_empty(), "a stale epoch must not commit");
    let opening = rekey::store::engine::Opening {
        lease_epoch: stale.lease_epoch,
        due_at: None,
        trigger: "expiry",
        facts: rekey::store::engine::VersionFacts {
            version_id: stale.reserved_version,
            credential_id: stale.id,
            fingerprint: "f".into(),
            serial: None,
            not_before: Utc::now(),
            not_after: Utc::now() + TimeDelta::hours(1),
            details: serde_json::json!({}),
        },
    };
    let attempts = store.open_attempts("slow", 30.0, &[opening]).await.unwrap();
    assert!(attempts.is_empty(), "a stale epoch must not open attempts");
    assert_eq!(
        scalar_i64(&f, "SELECT current_version FROM credentials").await,
        winner
    );
}

#[tokio::test]
async fn a_due_credential_under_a_live_lease_is_waited_for_not_polled() {
    let f = fixture().await;
    let store = &f.db.store;
    make_due(&f).await;
    let due = store.next_due_at().await.unwrap().expect("a due time");
    assert!(due <= Utc::now(), "due now: {due}");
    // Claimed (a rotation in flight, e.g. a CSR waiting to be signed): an
    // idle engine sleeps until the lease ends, not 10 ms at a time.
    let claimed = store.claim_due("busy", 10, 30.0).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let lease_end: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT lease_expires_at FROM credentials")
            .fetch_one(f.db.pool())
            .await
            .unwrap();
    assert_eq!(store.next_due_at().await.unwrap(), Some(lease_end));
    assert!(lease_end > Utc::now() + TimeDelta::seconds(20));
    // The lease lapses (the replica died): due again at once.
    sqlx::query("UPDATE credentials SET lease_expires_at = now() - interval '1 second'")
        .execute(f.db.pool())
        .await
        .unwrap();
    assert!(store.next_due_at().await.unwrap().unwrap() <= Utc::now());
}
