//! Load (issue: reliability): 10,000 credentials on one-minute lifetimes
//! rotating for ten minutes under two replicas (`rekey serve` release
//! binaries on one Postgres, file sinks on tmpfs). Reports missed deadlines
//! (a credential past `not_after`), rotations per second, and each replica's
//! memory over the run (flat means no growth with the number of rotations).
//!
//! `cargo build --release -p rekey && cargo bench -p rekey-integration --bench load [-- MINUTES CREDENTIALS]`

use std::time::{Duration, Instant};

use rekey_integration::serve::Scenario;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    rekey::install_crypto_provider();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let minutes: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let s = Scenario::new().await;
    let base = std::path::Path::new("/dev/shm").join(format!("rekey-load-{}", std::process::id()));
    let mut config = s.config_head("concurrency = 256\nbatch_size = 128\nmax_jitter = \"10s\"");
    for i in 0..n {
        config.push_str(&format!(
            "[[certificate]]\nname = \"cert/load/c{i:05}\"\ndns_names = [\"c{i}.load.svc\"]\nlifetime = \"60s\"\n\
             sink = {{ kind = \"file\", dir = \"{}/c{i:05}\" }}\n",
            base.display()
        ));
    }
    let config = s.write_config("rekey.toml", &config);
    let mut a = s.serve(
        &config,
        &[("REKEY_ENGINE_REPLICA_ID", "load-a"), ("REKEY_LOG", "warn")],
    );
    let mut b = s.serve(
        &config,
        &[("REKEY_ENGINE_REPLICA_ID", "load-b"), ("REKEY_LOG", "warn")],
    );
    let pool = s.db.pool().clone();
    // Wait for the initial issuance of everything.
    let t0 = Instant::now();
    loop {
        let issued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM credentials WHERE current_version IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if issued as usize == n {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "initial issuance stalled at {issued}:\n{}\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "initial issuance of {n} certificates: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let rotations_at_start: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rotations WHERE status = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut samples = Vec::new();
    let mut worst_expired = 0i64;
    let mut worst_lag = 0f64;
    while start.elapsed() < Duration::from_secs(minutes * 60) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (expired, lag): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE not_after <= now()),
                    max(extract(epoch FROM now() - next_rotation_at))::float8
             FROM credentials WHERE managed AND removed_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        worst_expired = worst_expired.max(expired);
        worst_lag = worst_lag.max(lag.unwrap_or(0.0));
        let (ra, rb) = (rss_kib(a.child.id()), rss_kib(b.child.id()));
        samples.push((start.elapsed().as_secs(), ra, rb, expired));
        println!(
            "t={:>4}s  past not_after: {expired:>5}  most overdue: {:>6.1} s  RSS a={} MiB b={} MiB",
            start.elapsed().as_secs(),
            lag.unwrap_or(0.0),
            ra / 1024,
            rb / 1024
        );
    }
    let rotations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rotations WHERE status = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rotations WHERE status <> 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    // Not succeeded: still running when counted (in flight), or failed/abandoned (with why).
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM rotations WHERE status <> 'succeeded' GROUP BY status ORDER BY status",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let errors: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(error, '(none)'), count(*) FROM rotations WHERE status IN ('failed', 'abandoned')
         GROUP BY 1 ORDER BY 2 DESC LIMIT 5",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let first = samples.first().copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    println!(
        "\n{n} credentials, 60 s lifetimes, 2 replicas, {minutes} min: {} rotations ({:.0}/s; needed ~{:.0}/s), {failed} not succeeded",
        rotations - rotations_at_start,
        (rotations - rotations_at_start) as f64 / secs,
        n as f64 / 40.0
    );
    println!("not succeeded, by status: {by_status:?}; errors: {errors:?}");
    println!(
        "missed deadlines (credentials past not_after, worst sample): {worst_expired}; most overdue rotation: {worst_lag:.1} s"
    );
    println!(
        "memory: replica a {} -> {} MiB, replica b {} -> {} MiB (first vs last sample)",
        first.1 / 1024,
        last.1 / 1024,
        first.2 / 1024,
        last.2 / 1024
    );
    a.terminate(Duration::from_secs(30));
    b.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&base);
}
