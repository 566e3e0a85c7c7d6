//! Throwaway Postgres: one cluster per test process, one database per test.

use std::sync::{
    OnceLock,
    atomic::{AtomicU32, Ordering},
};

use rekey::{devdb::LocalPostgres, store::Store};
use sqlx::{Connection, PgConnection};

struct Cluster {
    pg: LocalPostgres,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("rekey-test-pg-")
            .tempdir_in("/tmp")
            .expect("creating a temp dir under /tmp")
            .keep();
        let pg = LocalPostgres::start(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot start a throwaway Postgres for the tests: {e}\n\
                 install the server: `apt-get install -y postgresql` (Debian/Ubuntu)"
            )
        });
        pg.stop_when_process_exits(std::process::id(), Some(&dir))
            .expect("starting the Postgres watchdog");
        Cluster { pg }
    })
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    /// URL for the database (superuser, trust auth, loopback).
    pub url: String,
    /// Its name.
    pub name: String,
    /// A store on it.
    pub store: Store,
}

impl TestDb {
    /// A pool on the database.
    pub fn pool(&self) -> &sqlx::PgPool {
        self.store.pool()
    }
}

/// Creates a new database with all migrations applied.
pub async fn fresh_db() -> TestDb {
    let db = empty_db().await;
    db.store
        .migrate()
        .await
        .expect("applying migrations to the test database");
    db
}

/// Creates a new database with nothing in it (for migration tests).
pub async fn empty_db() -> TestDb {
    let c = cluster();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = PgConnection::connect(&c.pg.url("postgres"))
        .await
        .expect("connecting to the test cluster");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    let url = c.pg.url(&name);
    let store = Store::connect(&url, 16)
        .await
        .expect("connecting to the test database");
    TestDb { url, name, store }
}

/// The port of the shared cluster (for tests that stop and start it, use
/// [`own_cluster`] instead).
pub fn cluster_port() -> u16 {
    cluster().pg.port()
}

/// A cluster of the test's own, for tests that stop and restart Postgres.
pub fn own_cluster() -> (LocalPostgres, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("rekey-test-pg-own-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let pg = LocalPostgres::start(dir.path()).unwrap_or_else(|e| {
        panic!("cannot start Postgres: {e}\ninstall it: `apt-get install -y postgresql`")
    });
    pg.stop_when_process_exits(std::process::id(), None)
        .expect("watchdog");
    (pg, dir)
}
