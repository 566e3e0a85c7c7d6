//! Crash safety: the process is aborted (not stopped cleanly) at every named
//! crash point of the rotation state machine, bootstrap-token revocation and
//! backup upload in turn (`REKEY_CRASH_AT`, debug builds), restarted, and the
//! system must converge: one current published version per credential, sink
//! and database agreeing, nothing missing or invalid, no rotation lost, no
//! token revoked twice, no backup recorded that cannot be decrypted.
//!
//! The table of points covered is written to `target/crash-points.md` and
//! printed (`cargo test -p rekey-integration --test it -- crash_points --nocapture`).

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Child,
    sync::Mutex,
    time::{Duration, Instant},
};

use rekey_integration::{
    bin::{outcome, rekey, run},
    etcd::Etcd,
    kube::{KubeStandIn, fixtures},
    serve::{Scenario, Server, read_sink, verify_with_openssl, wait_for},
    wait::{Text, eventually},
};

static TABLE: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn covered(point: &str, how: &str) {
    let mut t = TABLE.lock().unwrap();
    t.push((point.to_string(), how.to_string()));
    t.sort();
    let mut md = String::from(
        "| crash point | what happens there | converged after restart |\n|---|---|---|\n",
    );
    for (name, what) in rekey::crash::POINTS {
        let done = t
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, h)| h.as_str())
            .unwrap_or("NOT COVERED");
        md.push_str(&format!("| `{name}` | {what} | {done} |\n"));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/crash-points.md");
    let _ = std::fs::write(&target, &md);
    println!("{md}");
}

/// Waits for a process started with `REKEY_CRASH_AT` to abort.
fn wait_abort(child: &mut Child, what: &str, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(
                status.signal(),
                Some(6),
                "{what}: expected an abort (SIGABRT), got {status:?}:\n{}",
                log()
            );
            assert!(
                log().contains("crash point"),
                "{what}: aborted elsewhere:\n{}",
                log()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the crash point was never reached:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cert_block(name: &str, dir: &Path) -> String {
    format!(
        "[[certificate]]\nname = \"{name}\"\ndns_names = [\"{}.crash.svc\"]\nlifetime = \"14s\"\nrenew_fraction = 0.5\n\
         sink = {{ kind = \"file\", dir = \"{}\" }}\n\n",
        name.replace('/', "-"),
        dir.display()
    )
}

/// The rotation crash points: abort mid-rotation, restart, converge.
async fn engine_point(point: &str, nth: usize) {
    let s = Scenario::new().await;
    let mut config =
        s.config_head("lease = \"5s\"\nmax_jitter = \"0s\"\nbatch_size = 2\nconcurrency = 2");
    let mut sinks = Vec::new();
    for i in 0..4 {
        let name = format!("cert/crash/c{i}");
        let dir = s.path(&format!("sinks/c{i}"));
        config.push_str(&cert_block(&name, &dir));
        sinks.push((name, dir));
    }
    let config = s.write_config("rekey.toml", &config);
    let spec = format!("{point}@{nth}");
    let mut crashing = s.serve(&config, &[("REKEY_CRASH_AT", &spec)]);
    let log = crashing.log.clone();
    wait_abort(&mut crashing.child, point, &|| {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    let crashed_at = chrono::Utc::now();
    let mut server = s.serve(&config, &[]);
    // The lease (5 s) lapses, the interrupted work is reconciled, rotation goes on.
    settled(&s, &sinks, crashed_at, &server).await;
    converged(&s, &sinks, crashed_at, &server).await;
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(0));
    covered(
        point,
        &format!("yes (aborted at hit {nth}, {} credentials)", sinks.len()),
    );
}

/// Waits until the restarted server has done what convergence needs: every
/// credential rotated successfully after the crash, and no attempt of the
/// crashed process is still running.
async fn settled(
    s: &Scenario,
    sinks: &[(String, PathBuf)],
    crashed_at: chrono::DateTime<chrono::Utc>,
    server: &Server,
) {
    let names: Vec<&str> = sinks.iter().map(|(n, _)| n.as_str()).collect();
    eventually(
        "every credential rotated after the crash and no attempt left running",
        Duration::from_secs(90),
        async || {
            let (waiting, stuck): (i64, i64) = sqlx::query_as(
                "SELECT
                   (SELECT count(*) FROM credentials c WHERE c.name = ANY($1) AND NOT EXISTS
                      (SELECT 1 FROM rotations r WHERE r.credential_id = c.id
                         AND r.status = 'succeeded' AND r.finished_at > $2)),
                   (SELECT count(*) FROM rotations WHERE status = 'running' AND started_at < $2)",
            )
            .bind(&names)
            .bind(crashed_at)
            .fetch_one(s.db.pool())
            .await
            .unwrap();
            if (waiting, stuck) == (0, 0) {
                Ok(())
            } else {
                Err(Text(format!(
                    "{waiting} credentials not rotated since the crash, {stuck} attempts of the crashed process running; log:\n{}",
                    server.log()
                )))
            }
        },
    )
    .await;
}

async fn converged(
    s: &Scenario,
    sinks: &[(String, PathBuf)],
    crashed_at: chrono::DateTime<chrono::Utc>,
    server: &Server,
) {
    let pool = s.db.pool();
    let doubles: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT credential_id FROM credential_versions WHERE status = 'published'
           GROUP BY credential_id HAVING count(*) > 1) x",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(doubles, 0, "two current versions");
    let dup_due: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM rotations WHERE status = 'succeeded' AND trigger IN ('schedule', 'expiry')
           GROUP BY credential_id, due_at HAVING count(*) > 1) x",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(dup_due, 0, "a due time served twice");
    for (i, (name, dir)) in sinks.iter().enumerate() {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT current_version FROM credentials WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await
                .unwrap();
        let current =
            current.unwrap_or_else(|| panic!("{name}: no published version:\n{}", server.log()));
        let snap = wait_for(Duration::from_secs(5), || read_sink(dir))
            .unwrap_or_else(|| panic!("{name}: sink unreadable"));
        assert!(
            snap.version >= current,
            "{name}: sink {} behind database {current}",
            snap.version
        );
        let (_, na) = verify_with_openssl(&snap, &s.path(&format!("check/{i}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(na > chrono::Utc::now().timestamp(), "{name}: expired");
        // No rotation lost: every credential rotated successfully after the crash.
        let after: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE c.name = $1 AND r.status = 'succeeded' AND r.finished_at > $2",
        )
        .bind(name)
        .bind(crashed_at)
        .fetch_one(pool)
        .await
        .unwrap();
        assert!(
            after > 0,
            "{name}: no rotation after the crash:\n{}",
            server.log()
        );
    }
    // Interrupted attempts were settled: nothing still running for a dead replica.
    let stuck: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rotations WHERE status = 'running' AND started_at < $1",
    )
    .bind(crashed_at)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        stuck, 0,
        "an attempt of the crashed process was never settled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_claim() {
    engine_point("engine-after-claim", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_issue() {
    engine_point("engine-after-issue", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_open() {
    engine_point("engine-after-open", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_mid_publish() {
    // Four credentials issued first (hits 1-4); the sixth hit is mid-rotation.
    engine_point("sink-mid-publish", 6).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_publish() {
    engine_point("engine-after-publish", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_commit() {
    engine_point("engine-after-commit", 2).await;
}

/// A bound token's superseded version: abort after its Secret was deleted.
#[tokio::test(flavor = "multi_thread")]
async fn crash_during_retire() {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    k.add_namespace("ci");
    k.put(fixtures::service_account("ci", "builder")).unwrap();
    let config = format!(
        "{}[kubernetes]\nkubeconfig = \"{}\"\n\n[[token]]\nname = \"sa-token/ci/builder\"\nnamespace = \"ci\"\n\
         service_account = \"builder\"\nlifetime = \"10m\"\nrenew_fraction = 0.01\nbound = true\ngrace = \"1s\"\n\
         sink = {{ kind = \"kubernetes-secret\", namespace = \"ci\", name = \"builder-token\" }}\n",
        s.config_head("lease = \"5s\"\nmax_jitter = \"0s\""),
        k.kubeconfig().display()
    );
    let config = s.write_config("rekey.toml", &config);
    let mut crashing = s.serve(&config, &[("REKEY_CRASH_AT", "retire-after-revoke")]);
    let log = crashing.log.clone();
    wait_abort(&mut crashing.child, "retire-after-revoke", &|| {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    let retired: Vec<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT id, details FROM credential_versions WHERE status = 'superseded' ORDER BY id",
    )
    .fetch_all(s.db.pool())
    .await
    .unwrap();
    assert_eq!(
        retired.len(),
        1,
        "one superseded version, its Secret deleted but not yet marked"
    );
    let server = s.serve(&config, &[]);
    let pool = s.db.pool().clone();
    let vid = retired[0].0;
    eventually(
        "the superseded version to be marked revoked",
        Duration::from_secs(15),
        async || {
            let status: String =
                sqlx::query_scalar("SELECT status FROM credential_versions WHERE id = $1")
                    .bind(vid)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if status == "revoked" {
                Ok(())
            } else {
                Err(Text(format!("{status}; log:\n{}", server.log())))
            }
        },
    )
    .await;
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'credential.retire_version' AND (details->>'version')::bigint = $1",
    )
    .bind(vid)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(events, 1, "retired once");
    let current: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credential_versions WHERE status = 'published'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(current, 1);
    assert!(k.denied().is_empty(), "{:?}", k.denied());
    covered(
        "retire-after-revoke",
        "yes (revoked exactly once after restart)",
    );
}

async fn bootstrap_point(point: &str) {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    let config = format!(
        "{}[kubernetes]\nkubeconfig = \"{}\"\n\n[bootstrap_tokens]\nrevoke_after_join = true\n",
        s.config_head(""),
        k.kubeconfig().display()
    );
    let config = s.write_config("rekey.toml", &config);
    let out = run(rekey().args(["token", "create", "--config"]).arg(&config));
    let (code, token, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let id = token.split('.').next().unwrap().to_string();
    let mut crashing = s.serve(&config, &[("REKEY_CRASH_AT", point)]);
    k.join_node(&token, "worker-1").await;
    let log = crashing.log.clone();
    wait_abort(&mut crashing.child, point, &|| {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    let server = s.serve(&config, &[]);
    let secret = format!("bootstrap-token-{id}");
    wait_for(Duration::from_secs(30), || {
        k.get("Secret", "kube-system", &secret)
            .is_none()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{point}: token never revoked:\n{}", server.log()));
    let pool = s.db.pool();
    eventually(
        &format!("{point}: the token's row to say revoked"),
        Duration::from_secs(10),
        async || {
            let state: String =
                sqlx::query_scalar("SELECT state FROM bootstrap_tokens WHERE id = $1")
                    .bind(&id)
                    .fetch_one(pool)
                    .await
                    .unwrap();
            if state == "revoked" {
                Ok(())
            } else {
                Err(Text(format!("{state}; log:\n{}", server.log())))
            }
        },
    )
    .await;
    let revocations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'bootstrap_token.revoke' AND target = $1",
    )
    .bind(format!("bootstrap-token/{id}"))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(revocations, 1, "{point}: revoked {revocations} times");
    let deletes = k
        .requests()
        .iter()
        .filter(|r| r.verb == "delete" && r.name == secret && (200..300).contains(&r.code))
        .count();
    assert_eq!(
        deletes, 1,
        "{point}: the Secret was deleted {deletes} times"
    );
    let joins: i64 =
        sqlx::query_scalar("SELECT count(*) FROM bootstrap_token_joins WHERE token_id = $1")
            .bind(&id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(joins, 1, "the join is recorded once");
    covered(point, "yes (revoked once, one DELETE, one audit event)");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_join_recorded() {
    bootstrap_point("bootstrap-after-join").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_revocation_claimed() {
    bootstrap_point("bootstrap-after-claim").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_secret_deleted() {
    bootstrap_point("bootstrap-after-delete").await;
}

async fn backup_point(point: &str) {
    let db = rekey_integration::pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    crate::backup::util::fill_etcd(&etcd, 300, "crash");
    let kek = crate::backup::util::kek_file(dir.path(), "kek");
    let local = dir.path().join("backups");
    let dest = format!("file://{}/", local.display());
    let config = crate::backup::util::write_config(
        dir.path(),
        &db.url,
        &etcd,
        &dest,
        &kek,
        "chunk_size = \"4KiB\"\n",
    );
    let config = config.to_str().unwrap().to_string();
    let mut crashing = rekey()
        .args(["backup", "run", "--config", &config])
        .env("REKEY_CRASH_AT", point)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("crash.log")).unwrap())
        .spawn()
        .unwrap();
    let log = dir.path().join("crash.log");
    wait_abort(&mut crashing, point, &|| {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    // The next run succeeds; nothing recorded as completed fails to decrypt.
    let (code, _, err) =
        crate::backup::util::rekey_run(&["backup", "run", "--config", &config], &[]);
    assert_eq!(code, 0, "{err}");
    let completed: Vec<String> =
        sqlx::query_scalar("SELECT location FROM backups WHERE status = 'completed'")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        completed.len(),
        1,
        "only the finished run is recorded as completed"
    );
    for location in &completed {
        let out = dir.path().join("restored.db");
        let (code, _, err) = crate::backup::util::rekey_run(
            &[
                "backup",
                "decrypt",
                "--kek-file",
                kek.to_str().unwrap(),
                "--from",
                location,
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 0, "a recorded backup must decrypt: {err}");
    }
    covered(
        point,
        "yes (no completed record of the aborted run; the next run decrypts)",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_mid_backup_stream() {
    backup_point("backup-mid-stream").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_backup_recorded() {
    backup_point("backup-before-record").await;
}

/// A migration aborted after half of a page's objects were rewritten: the
/// next run continues the same `etcd_migrations` row, rewrites only what is
/// still stale (nothing done before the crash is written again), and the
/// re-scan counts zero.
#[tokio::test(flavor = "multi_thread")]
async fn crash_mid_migration_batch() {
    use crate::etcd::migrate as m;
    let point = "etcd-migrate-mid-batch";
    let db = rekey_integration::pg::fresh_db().await;
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let old = m::config(dir.path(), "old.yaml", &m::cbc_old());
    let both = m::config(dir.path(), "both.yaml", &m::gcm_new_then_cbc_old());
    let k = m::stand_in(&etcd, &old);
    m::create(&k, 60, 0).await;
    k.set_encryption_config(&both);
    let log = dir.path().join("crash.log");
    let mut crashing = rekey()
        .args(["etcd", "migrate", "--max-rate", "0", "--encryption-config"])
        .arg(&both)
        .args(["--endpoints", &etcd.endpoint, "--database-url", &db.url])
        .arg("--kubeconfig")
        .arg(k.admin_kubeconfig())
        .env("REKEY_CRASH_AT", point)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_abort(&mut crashing, point, &|| {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    let after_crash = m::stored(&etcd).await;
    let done: Vec<_> = after_crash
        .iter()
        .filter(|(_, v, _)| v.starts_with("k8s:enc:aesgcm:v1:new:"))
        .cloned()
        .collect();
    assert!(
        done.len() >= 30 && done.len() < 60,
        "half a page rewritten before the crash: {}",
        done.len()
    );
    let (code, report, err) = m::migrate(
        &etcd,
        &k.admin_kubeconfig(),
        &both,
        Some(&db.url),
        &["--max-rate", "0"],
    );
    assert_eq!(code, 0, "{err}\n{report:#}");
    assert_eq!(report["resumed"], true, "{report:#}");
    assert_eq!(
        report["rewritten"].as_u64(),
        Some((60 - done.len()) as u64),
        "{report:#}"
    );
    assert_eq!(report["stale_after"], 0);
    let now = m::stored(&etcd).await;
    for (key, _, rev) in &done {
        let (_, v, rev_now) = now.iter().find(|(k, _, _)| k == key).unwrap();
        assert_eq!(rev_now, rev, "{key} was rewritten again");
        assert!(v.starts_with("k8s:enc:aesgcm:v1:new:"));
    }
    assert!(
        now.iter()
            .all(|(_, v, _)| v.starts_with("k8s:enc:aesgcm:v1:new:"))
    );
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, status FROM etcd_migrations")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "the stopped migration was continued, not restarted: {rows:?}"
    );
    assert_eq!(rows[0].1, "completed");
    covered(
        point,
        "yes (same etcd_migrations row continued; what was rewritten is not written again; re-scan at zero)",
    );
}

#[test]
fn every_crash_point_has_a_test() {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/crash_points.rs"
    ))
    .unwrap();
    for (name, _) in rekey::crash::POINTS {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "crash point {name} is not exercised"
        );
    }
    let product = Path::new(env!("CARGO_MANIFEST_DIR")).join("../service/src");
    let mut text = String::new();
    let mut stack = vec![product];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else if e.path().extension().is_some_and(|x| x == "rs") {
                text.push_str(&std::fs::read_to_string(e.path()).unwrap());
            }
        }
    }
    for (name, _) in rekey::crash::POINTS {
        assert!(
            text.contains(&format!("crash::point(\"{name}\")")),
            "crash point {name} is not placed in the code"
        );
    }
}

/// A CA rotation aborted in each of its phases in turn (one process per
/// crash point, each resuming the last one's work), then finished by a
/// clean process: the rotation converges to `done`, both leaves chain only
/// to the new CA, and the two consumers handshaking all along never fail.
#[tokio::test(flavor = "multi_thread")]
async fn ca_rotation_converges_across_a_crash_in_every_phase() {
    use crate::issuers::rotation::Rotating;
    let mut t = Rotating::new(Scenario::new().await);
    let mut first = t.s.serve(&t.config, &[]);
    t.wait_handshaking().await;
    first.kill9();
    let old_ca = std::fs::read_to_string(t.s.path("cluster-ca/ca.crt")).unwrap();
    let (code, _, err) = t.ca(&["rotate", "cluster", "--overlap", "7s", "--max-rate", "0"]);
    assert_eq!(code, 0, "rekey ca rotate: {err}");
    let points = [
        ("ca-after-trust", "trusting"),
        ("ca-mid-reissue", "reissuing"),
        ("ca-after-narrow", "retiring"),
        ("ca-mid-promote", "retiring"),
    ];
    for (point, phase) in points {
        let mut crashing = t.s.serve(&t.config, &[("REKEY_CRASH_AT", point)]);
        let log = crashing.log.clone();
        wait_abort(&mut crashing.child, point, &|| {
            std::fs::read_to_string(&log).unwrap_or_default()
        });
        let status = t.status();
        assert_eq!(
            status["rotation"]["phase"], phase,
            "after {point}: {status:#}"
        );
    }
    // Mid-promotion the key file is already the new CA's, the certificate
    // not yet: what the issuer's store reads is still one consistent CA.
    assert!(
        t.s.path("cluster-ca/ca.crt.next").exists() && !t.s.path("cluster-ca/ca.key.next").exists()
    );
    let server = t.s.serve(&t.config, &[]);
    let log = || server.log();
    t.wait_phase("done", Duration::from_secs(90), &log).await;
    t.assert_rotated(&old_ca).await;
    for (point, _) in points {
        covered(
            point,
            "yes (the same ca_rotations row resumed; done, leaves on the new CA only, zero failed handshakes throughout)",
        );
    }
}
