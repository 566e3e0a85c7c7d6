//! Engine benchmarks (issue: the rotation engine).
//!
//! 1. The claim query with 100k and 1M rows in `credentials`: its plan (it
//!    must walk the `credentials_due` index) and its median time for a batch
//!    of 100 due credentials.
//! 2. End-to-end rotations per second (ecdsa-p256, file sink on tmpfs,
//!    Postgres tracking, the full state machine), printed beside the raw
//!    rcgen key-generation + signing rate measured in the same run.
//!
//! `cargo bench -p rekey-integration --bench engine [-- claim|rotate]`

use std::{sync::Arc, time::Instant};

use chrono::{TimeDelta, Utc};
use rekey::{
    issue::{CertAuthority, CertificateSpec, KeyType, Usage},
    rotate::{Engine, EngineConfig, EngineDeps},
    sink::{SinkContext, SinkSpec},
    store::sync::Declared,
};
use rekey_integration::pg::fresh_db;

fn spec(name: &str, dir: &std::path::Path) -> CertificateSpec {
    CertificateSpec {
        name: name.into(),
        issuer: None,
        common_name: None,
        organizations: vec![],
        dns_names: vec![format!("{}.bench.svc", name.replace('/', "-"))],
        ip_addresses: vec![],
        key: KeyType::EcdsaP256,
        usages: vec![Usage::Server, Usage::Client],
        lifetime: std::time::Duration::from_secs(86_400).into(),
        renew_fraction: None,
        renew_before: None,
        schedule: None,
        sink: SinkSpec::File {
            dir: dir.to_path_buf(),
        },
        adopt: false,
        reload: vec![],
        probe: None,
        probe_grace: None,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn bench_claim(rows: i64) {
    let db = fresh_db().await;
    let pool = db.pool();
    // `rows` credentials; 1% due (in the past), the rest due over the next 30 days.
    sqlx::query(
        "INSERT INTO credentials (name, kind, spec, sink, next_rotation_at, next_rotation_reason)
         SELECT 'cert/bench/' || g, 'certificate', '{}', '{}',
                CASE WHEN g % 100 = 0 THEN now() - (g || ' seconds')::interval
                     ELSE now() + ((g % 2592000) || ' seconds')::interval END,
                'renew_fraction'
         FROM generate_series(1, $1) g",
    )
    .bind(rows)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE credentials")
        .execute(pool)
        .await
        .unwrap();
    let claim = "WITH due AS (
                SELECT id FROM credentials
                WHERE managed AND removed_at IS NULL AND next_rotation_at <= now()
                  AND (lease_expires_at IS NULL OR lease_expires_at <= now())
                ORDER BY next_rotation_at LIMIT 100 FOR UPDATE SKIP LOCKED)
            UPDATE credentials c SET lease_owner = 'bench', lease_expires_at = now() + interval '30 seconds',
                   lease_epoch = c.lease_epoch + 1
            FROM due WHERE c.id = due.id RETURNING c.id";
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {claim}")))
        .fetch_all(pool)
        .await
        .unwrap();
    let uses_index = plan.iter().any(|l| l.contains("credentials_due"));
    let mut times = Vec::new();
    for _ in 0..50 {
        let mut tx = pool.begin().await.unwrap();
        let t = Instant::now();
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(claim))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(ids.len(), 100);
        tx.rollback().await.unwrap();
    }
    println!(
        "claim query, {rows:>9} rows, batch 100: median {:.2} ms (target < 10 ms at 1M); plan uses credentials_due index: {uses_index}",
        median(times)
    );
    for l in plan
        .iter()
        .filter(|l| l.contains("Index") || l.contains("Scan"))
    {
        println!("    plan: {}", l.trim());
    }
}

fn raw_rate(ca: &CertAuthority, threads: usize, per_thread: usize) -> f64 {
    let s = spec("cert/raw", std::path::Path::new("/dev/null"));
    let t = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..per_thread {
                    std::hint::black_box(ca.issue(&s, Utc::now()).unwrap());
                }
            });
        }
    });
    (threads * per_thread) as f64 / t.elapsed().as_secs_f64()
}

async fn bench_rotate(n: usize) {
    let now = Utc::now();
    let (ca, _) =
        CertAuthority::generate("bench CA", KeyType::EcdsaP256, TimeDelta::days(1), now).unwrap();
    let ca = Arc::new(ca);
    let raw1 = raw_rate(&ca, 1, 4000);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let raw_all = raw_rate(&ca, cores, 4000);

    let db = fresh_db().await;
    let base = std::path::Path::new("/dev/shm").join(format!("rekey-bench-{}", std::process::id()));
    let declared: Vec<Declared> = (0..n)
        .map(|i| {
            let name = format!("cert/bench/c{i:06}");
            let s = spec(&name, &base.join(format!("c{i:06}")));
            Declared {
                name,
                kind: "certificate",
                spec: serde_json::to_value(&s).unwrap(),
                sink: serde_json::to_value(&s.sink).unwrap(),
                schedule: None,
                material_hash: "x".into(),
            }
        })
        .collect();
    db.store
        .sync_declared("api", &declared, "bench")
        .await
        .unwrap();
    let engine = Engine::new(EngineDeps {
        store: db.store.clone(),
        replica: "bench".into(),
        config: EngineConfig {
            concurrency: 512,
            batch_size: 128,
            ..EngineConfig::default()
        },
        issuers: std::sync::Arc::new(rekey::issue::Issuers::default_ca(ca)),
        sinks: SinkContext::default(),
        tokens: None,
        reload: None,
        probes: None,
    });
    let mut events = engine.subscribe();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let t = Instant::now();
    let handle = tokio::spawn(engine.clone().run(shutdown.clone()));
    let mut done = 0;
    while done < n {
        match events.recv().await {
            Ok(e) => {
                assert!(e.error.is_none(), "{:?}", e.error);
                done += 1;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => done += k as usize,
            Err(e) => panic!("{e}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    shutdown.cancel();
    handle.await.unwrap().unwrap();
    let committed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credential_versions WHERE status = 'published'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(committed as usize, n);
    let _ = std::fs::remove_dir_all(&base);
    let rate = n as f64 / secs;
    println!(
        "raw rcgen ecdsa-p256 keygen+sign: {raw1:.0}/s on 1 core, {raw_all:.0}/s on {cores} cores"
    );
    println!(
        "end-to-end rotations ({n}, file sink on tmpfs, Postgres, full state machine): {rate:.0}/s  \
         = {:.0}% of the raw rate on {cores} cores, {:.0}% of 1 core (targets: >= 5000/s, >= 50%)",
        100.0 * rate / raw_all,
        100.0 * rate / raw1
    );
}

#[tokio::main]
async fn main() {
    rekey::install_crypto_provider();
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |w: &str| which.is_empty() || which.iter().any(|x| x == w);
    if want("claim") {
        bench_claim(100_000).await;
        bench_claim(1_000_000).await;
    }
    if want("rotate") {
        bench_rotate(20_000).await;
    }
}
