//! The rotation engine through the real binary: scheduled rotation, crash
//! safety under kill -9, two engines on one database.

use std::{collections::HashMap, time::Duration};

use rekey_integration::{
    serve::{Scenario, read_sink, verify_with_openssl, wait_for},
    wait::{Text, check, eventually},
};

fn cert_block(name: &str, dir: &std::path::Path, lifetime: &str, fraction: f64) -> String {
    format!(
        "[[certificate]]\nname = \"{name}\"\ndns_names = [\"{host}.test.svc\"]\nip_addresses = [\"127.0.0.1\"]\n\
         lifetime = \"{lifetime}\"\nrenew_fraction = {fraction}\nsink = {{ kind = \"file\", dir = \"{}\" }}\n\n",
        dir.display(),
        host = name.replace('/', "-"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_rotates_a_short_lived_certificate_at_least_twice() {
    let s = Scenario::new().await;
    let sink = s.path("sinks/web");
    let config = format!(
        "{}{}",
        s.config_head("max_jitter = \"0s\""),
        cert_block("cert/default/web", &sink, "60s", 0.5)
    );
    let config = s.write_config("rekey.toml", &config);
    let mut server = s.serve(&config, &[]);

    // Watch the sink for up to 100 s and keep every version published.
    let started = std::time::Instant::now();
    let mut seen: Vec<rekey_integration::serve::SinkSnapshot> = Vec::new();
    while started.elapsed() < Duration::from_secs(100) && seen.len() < 3 {
        if let Some(snap) = read_sink(&sink)
            && seen.last().is_none_or(|l| l.version != snap.version)
        {
            seen.push(snap);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.log();
    assert!(
        seen.len() >= 3,
        "expected the first issuance and two rotations within 100 s, saw {}:\n{log}",
        seen.len()
    );
    for (i, snap) in seen.iter().enumerate() {
        let (nb, na) = verify_with_openssl(snap, &s.path(&format!("check/{i}")))
            .unwrap_or_else(|e| panic!("version {}: {e}", snap.version));
        assert_eq!(
            na - nb,
            60,
            "validity of version {} must equal the 60 s lifetime",
            snap.version
        );
        let now = chrono::Utc::now().timestamp();
        assert!(
            now - nb <= 60 + 100,
            "not_before back-dated by more than a minute"
        );
        assert_eq!(snap.key_mode, 0o600, "tls.key must be mode 0600");
    }
    // The database agrees with the sink.
    let current: i64 = sqlx::query_scalar(
        "SELECT current_version FROM credentials WHERE name = 'cert/default/web'",
    )
    .fetch_one(s.db.pool())
    .await
    .unwrap();
    let last = read_sink(&sink).expect("sink readable");
    assert!(
        last.version >= current,
        "sink holds {} but the database says {current}",
        last.version
    );
    assert_eq!(
        server.terminate(Duration::from_secs(20)),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        server.log()
    );
}

/// Invariants after any number of crashes: one published version per
/// credential, the sink holds it, it verifies, and it is not expired.
async fn assert_converged(s: &Scenario, names: &[(String, std::path::PathBuf)]) {
    let pool = s.db.pool();
    let two_current: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT credential_id FROM credential_versions WHERE status = 'published'
           GROUP BY credential_id HAVING count(*) > 1) x",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(two_current, 0, "a credential has two current versions");
    for (i, (name, dir)) in names.iter().enumerate() {
        let (current, status): (Option<i64>, Option<String>) = sqlx::query_as(
            "SELECT c.current_version, v.status FROM credentials c
             LEFT JOIN credential_versions v ON v.id = c.current_version WHERE c.name = $1",
        )
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap();
        let current = current.unwrap_or_else(|| panic!("{name} has no published version"));
        assert_eq!(
            status.as_deref(),
            Some("published"),
            "{name}: current version {current} is not published"
        );
        let snap = wait_for(Duration::from_secs(5), || read_sink(dir))
            .unwrap_or_else(|| panic!("{name}: sink unreadable"));
        assert!(
            snap.version >= current,
            "{name}: sink holds {} behind the database's {current}",
            snap.version
        );
        let (_, na) = verify_with_openssl(&snap, &s.path(&format!("converged/{i}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            na > chrono::Utc::now().timestamp(),
            "{name}: published certificate has expired"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_mid_run_then_restart_converges() {
    let s = Scenario::new().await;
    let mut config =
        s.config_head("lease = \"5s\"\nmax_jitter = \"0s\"\nconcurrency = 4\nbatch_size = 3");
    let mut names = Vec::new();
    for i in 0..24 {
        let name = format!("cert/crash/c{i:02}");
        let dir = s.path(&format!("sinks/c{i:02}"));
        config.push_str(&cert_block(&name, &dir, "24s", 0.5));
        names.push((name, dir));
    }
    let config = s.write_config("rekey.toml", &config);
    let mut server = s.serve(&config, &[]);
    // Kill at varied points of the run, restarting at once each time (the
    // pauses are the scenario: where in the run each kill lands).
    for pause_ms in [700u64, 1900, 350, 2600, 1200, 90, 3100, 500] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        server.kill9();
        server = s.serve(&config, &[]);
    }
    let restarted_at = chrono::Utc::now();
    // Leases of the killed processes expire after 5 s; the interrupted work is
    // then settled and rotation goes on.
    eventually(
        "the killed processes' work settled and a rotation published since the last restart",
        Duration::from_secs(90),
        async || {
            let (running, pending, unpublished, published_since): (i64, i64, i64, i64) =
                sqlx::query_as(
                    "SELECT
                       (SELECT count(*) FROM rotations WHERE status = 'running' AND started_at < $1),
                       (SELECT count(*) FROM credential_versions WHERE status = 'pending' AND created_at < $1),
                       (SELECT count(*) FROM credentials WHERE current_version IS NULL AND managed),
                       (SELECT count(*) FROM credential_versions
                          WHERE status IN ('published', 'superseded') AND published_at > $1)",
                )
                .bind(restarted_at)
                .fetch_one(s.db.pool())
                .await
                .unwrap();
            let counts = (running, pending, unpublished, published_since);
            if counts.0 + counts.1 + counts.2 == 0 && counts.3 > 0 {
                Ok(())
            } else {
                Err(Text(format!(
                    "(attempts of killed processes running, their versions pending, credentials never published, versions published since) = {counts:?}; log:\n{}",
                    server.log()
                )))
            }
        },
    )
    .await;
    assert_converged(&s, &names).await;
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM credential_versions WHERE status IN ('published', 'superseded') AND published_at > $1")
        .bind(restarted_at)
        .fetch_one(s.db.pool())
        .await
        .unwrap();
    assert!(
        after > 0,
        "rotation did not continue after the last restart:\n{}",
        server.log()
    );
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credentials WHERE next_rotation_at IS NULL AND removed_at IS NULL AND managed",
    )
    .fetch_one(s.db.pool())
    .await
    .unwrap();
    assert_eq!(lost, 0, "a credential lost its schedule");
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(0));
    assert_converged(&s, &names).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_engines_never_rotate_twice_for_one_due_time() {
    let s = Scenario::new().await;
    let mut config = s.config_head("max_jitter = \"0s\"\nconcurrency = 8\nbatch_size = 5");
    let mut names = Vec::new();
    for i in 0..30 {
        let name = format!("cert/ha/c{i:02}");
        let dir = s.path(&format!("sinks/c{i:02}"));
        config.push_str(&cert_block(&name, &dir, "10s", 0.5));
        names.push((name, dir));
    }
    let config = s.write_config("rekey.toml", &config);
    let mut a = s.serve(&config, &[("REKEY_ENGINE_REPLICA_ID", "replica-a")]);
    let mut b = s.serve(&config, &[("REKEY_ENGINE_REPLICA_ID", "replica-b")]);
    // ~30 credentials renewed every ~5 s: within a minute both engines have
    // done over 200 rotations between them.
    eventually(
        "over 200 rotations by both engines",
        Duration::from_secs(60),
        async || {
            let row: (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(DISTINCT replica) FROM rotations",
            )
            .fetch_one(s.db.pool())
            .await
            .unwrap();
            check(row, |&(succeeded, replicas)| succeeded > 200 && replicas == 2)
        },
    )
    .await;
    assert_eq!(a.terminate(Duration::from_secs(20)), Some(0), "{}", a.log());
    assert_eq!(b.terminate(Duration::from_secs(20)), Some(0), "{}", b.log());
    let pool = s.db.pool();

    let dup: Vec<(i64, Option<chrono::DateTime<chrono::Utc>>, i64)> = sqlx::query_as(
        "SELECT credential_id, due_at, count(*) FROM rotations
         WHERE status = 'succeeded' GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(dup.is_empty(), "rotated twice for one due time: {dup:?}");
    let by_status: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM rotations GROUP BY status",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let succeeded = by_status.get("succeeded").copied().unwrap_or(0);
    assert_eq!(
        by_status.len(),
        1,
        "every attempt should have succeeded: {by_status:?}\n{}\n{}",
        a.log(),
        b.log()
    );
    // ~30 credentials renewed every ~5 s for a minute.
    assert!(succeeded > 200, "too few rotations: {succeeded}");
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM credential_versions")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        versions, succeeded,
        "every version corresponds to exactly one successful rotation"
    );
    let replicas: i64 = sqlx::query_scalar("SELECT count(DISTINCT replica) FROM rotations")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(replicas, 2, "both engines should have done work");
    assert_converged(&s, &names).await;
}
