//! Outages: Postgres stopped for 30 s mid-run, etcd unreachable, and the
//! Kubernetes API down close to a credential's expiry (the retry policy must
//! never wait more than a quarter of the time left).

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use rekey_integration::{
    bin::{outcome, rekey, run},
    kube::KubeStandIn,
    pg::own_cluster,
    serve::{Scenario, read_sink, verify_with_openssl, wait_for},
    wait::{Text, eventually},
};
use sqlx::Connection;

/// `GET path` on a plain-HTTP listener: the status code, or None if unreachable.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

fn wait_status(port: u16, path: &str, want: u16, patience: Duration) -> bool {
    wait_for(patience, || {
        (http_status(port, path) == Some(want)).then_some(())
    })
    .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_for_30_seconds_is_survived() {
    let (mut pg, _pgdir) = own_cluster();
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE rekey")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let url = pg.url("rekey");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = outcome(&run(rekey()
        .args(["ca", "init", "--out"])
        .arg(dir.path().join("ca"))));
    assert_eq!(code, 0, "{err}");
    let port = rekey::devdb::free_port().unwrap();
    let mut config = format!(
        "[database]\nurl = \"{url}\"\n\n[issuer]\nca_cert = \"{0}/ca/ca.crt\"\nca_key = \"{0}/ca/ca.key\"\n\n\
         [engine]\nlease = \"5s\"\nmax_jitter = \"0s\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n",
        dir.path().display()
    );
    let mut sinks = Vec::new();
    for i in 0..5 {
        let sink = dir.path().join(format!("sinks/c{i}"));
        config.push_str(&format!(
            "[[certificate]]\nname = \"cert/outage/c{i}\"\ndns_names = [\"c{i}.svc\"]\nlifetime = \"50s\"\nrenew_fraction = 0.5\n\
             sink = {{ kind = \"file\", dir = \"{}\" }}\n\n",
            sink.display()
        ));
        sinks.push(sink);
    }
    std::fs::write(dir.path().join("rekey.toml"), &config).unwrap();
    let log = dir.path().join("serve.log");
    let mut server = rekey()
        .args(["serve", "--config"])
        .arg(dir.path().join("rekey.toml"))
        .env("REKEY_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let show = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_status(port, "/readyz", 200, Duration::from_secs(30)),
        "never ready:\n{}",
        show()
    );
    for s in &sinks {
        wait_for(Duration::from_secs(20), || read_sink(s))
            .unwrap_or_else(|| panic!("not issued:\n{}", show()));
    }

    // Postgres goes away for 30 s.
    pg.stop().unwrap();
    let stopped = Instant::now();
    assert!(
        wait_status(port, "/readyz", 503, Duration::from_secs(15)),
        "/readyz still ready without Postgres:\n{}",
        show()
    );
    assert_eq!(
        http_status(port, "/healthz"),
        Some(200),
        "the process must stay alive"
    );
    // The outage's length is the scenario.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
    assert!(
        server.try_wait().unwrap().is_none(),
        "rekey exited during the outage:\n{}",
        show()
    );
    pg.start_again().unwrap();
    let back = chrono::Utc::now();
    assert!(
        wait_status(port, "/readyz", 200, Duration::from_secs(30)),
        "/readyz never recovered:\n{}",
        show()
    );

    // Rotation catches up: every credential rotated after Postgres came back,
    // nothing lost or duplicated, sinks and database agree.
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    eventually(
        "every credential rotated after the outage and nothing left pending",
        Duration::from_secs(60),
        async || {
            let (waiting, pending): (i64, i64) = sqlx::query_as(
                "SELECT
                   (SELECT count(*) FROM credentials c WHERE c.managed AND NOT EXISTS
                      (SELECT 1 FROM rotations r WHERE r.credential_id = c.id
                         AND r.status = 'succeeded' AND r.finished_at > $1)),
                   (SELECT count(*) FROM credential_versions WHERE status = 'pending' AND created_at < $1)",
            )
            .bind(back)
            .fetch_one(&db)
            .await
            .unwrap();
            if (waiting, pending) == (0, 0) {
                Ok(())
            } else {
                Err(Text(format!(
                    "{waiting} credentials not rotated since, {pending} versions pending from before; log:\n{}",
                    show()
                )))
            }
        },
    )
    .await;
    let doubles: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT credential_id FROM credential_versions WHERE status = 'published'
           GROUP BY credential_id HAVING count(*) > 1) x",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(doubles, 0);
    let dup_due: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM rotations WHERE status = 'succeeded' AND trigger IN ('schedule', 'expiry')
           GROUP BY credential_id, due_at HAVING count(*) > 1) x",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(dup_due, 0);
    for (i, s) in sinks.iter().enumerate() {
        let name = format!("cert/outage/c{i}");
        let (current, after): (Option<i64>, i64) = sqlx::query_as(
            "SELECT c.current_version, (SELECT count(*) FROM rotations r WHERE r.credential_id = c.id
                 AND r.status = 'succeeded' AND r.finished_at > $2)
             FROM credentials c WHERE c.name = $1",
        )
        .bind(&name)
        .bind(back)
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(
            after > 0,
            "{name} did not rotate after the outage:\n{}",
            show()
        );
        let snap = wait_for(Duration::from_secs(5), || read_sink(s)).unwrap();
        assert!(snap.version >= current.unwrap());
        let (_, na) = verify_with_openssl(&snap, &dir.path().join(format!("check{i}"))).unwrap();
        assert!(na > chrono::Utc::now().timestamp(), "{name} expired");
    }
    let stuck: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credential_versions WHERE status = 'pending' AND created_at < $1",
    )
    .bind(back)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        stuck, 0,
        "versions left pending by the outage were never reconciled"
    );
    let pid = nix::unistd::Pid::from_raw(server.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = server.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", show());
}

#[tokio::test]
async fn etcd_unreachable_is_a_clear_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("enc.yaml");
    std::fs::write(
        &enc,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - identity: {}\n",
    )
    .unwrap();
    let port = rekey::devdb::free_port().unwrap();
    let started = Instant::now();
    let out = run(rekey()
        .args(["etcd", "verify", "--encryption-config"])
        .arg(&enc)
        .args(["--endpoints", &format!("http://127.0.0.1:{port}")]));
    let (code, _, err) = outcome(&out);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")),
        "the endpoint is named: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "gave up only after {:?}",
        started.elapsed()
    );
}

/// The Kubernetes API goes down as a certificate approaches its expiry:
/// retries back off, but never wait more than a quarter of the time left,
/// and the rotation completes once the API is back, before expiry.
#[tokio::test(flavor = "multi_thread")]
async fn retries_near_expiry_never_wait_more_than_a_quarter_of_the_time_left() {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    k.add_namespace("web");
    let config = format!(
        "{}[kubernetes]\nkubeconfig = \"{}\"\n\n[[certificate]]\nname = \"cert/web/tls\"\ndns_names = [\"web.svc\"]\n\
         lifetime = \"60s\"\nrenew_fraction = 0.3\nsink = {{ kind = \"kubernetes-secret\", namespace = \"web\", name = \"tls\" }}\n",
        s.config_head("lease = \"5s\"\nmax_jitter = \"0s\""),
        k.kubeconfig().display()
    );
    let config = s.write_config("rekey.toml", &config);
    let server = s.serve(&config, &[]);
    let pool = s.db.pool().clone();
    // First version published.
    let first_na: chrono::DateTime<chrono::Utc> = eventually(
        "the first version to be issued (its not_after)",
        Duration::from_secs(60),
        async || {
            // No row until serve has declared the credential; NULL until issued.
            let na: Option<chrono::DateTime<chrono::Utc>> =
                sqlx::query_scalar("SELECT not_after FROM credentials WHERE managed")
                    .fetch_optional(&pool)
                    .await
                    .unwrap()
                    .flatten();
            na.ok_or_else(|| Text(server.log()))
        },
    )
    .await;
    // Down from before the renewal point (~18 s in) until 15 s before expiry.
    k.down_for(Duration::from_secs(40));
    // The API is back: the credential is renewed before its old version
    // expired. Every attempt before it (all of them during the outage) has
    // finished by then: one credential's attempts follow each other.
    let until_expiry = (first_na - chrono::Utc::now()).to_std().unwrap_or_default();
    let renewed: i64 = eventually(
        "the renewal once the API is back, before the old version expires",
        until_expiry,
        async || {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM rotations WHERE status = 'succeeded'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            if n >= 2 {
                Ok(n)
            } else {
                Err(Text(format!("{n} succeeded; log:\n{}", server.log())))
            }
        },
    )
    .await;
    let failures: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT r.finished_at, c.next_rotation_at FROM rotations r JOIN credentials c ON c.id = r.credential_id
         WHERE r.status = 'failed' ORDER BY r.finished_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        failures.len() >= 3,
        "expected several failed attempts while the API was down:\n{}",
        server.log()
    );
    let attempts: Vec<chrono::DateTime<chrono::Utc>> = failures.iter().map(|f| f.0).collect();
    for w in attempts.windows(2) {
        let gap = w[1] - w[0];
        let left = first_na - w[0];
        // A quarter of the time left, plus the attempt's own duration (timeouts).
        assert!(
            gap <= left / 4 + chrono::TimeDelta::seconds(5),
            "waited {gap} with {left} left before expiry: {attempts:?}"
        );
    }
    assert!(renewed >= 2, "not renewed before expiry:\n{}", server.log());
    let na: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT not_after FROM credentials WHERE managed")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(na > first_na);
}
