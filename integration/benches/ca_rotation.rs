//! Mass re-issue, the day a CA key leaks (issue 12): `rekey ca rotate
//! --overlap 0 --max-rate 0` over N file-sink leaves on tmpfs, carried out by
//! the release `rekey serve`; the figure is the time from `reissuing` to
//! `retiring` (every leaf re-issued by the new CA, published and committed),
//! from the rotation's audited phase changes. Printed beside the bare
//! baseline measured in the same run: `integration/scripts/bench_reissue.py`
//! (Python `cryptography`, the same certificates generated, signed and
//! written, no database, no fsync), in one process and in one per core.
//!
//! `cargo build --release -p rekey --bins && cargo bench -p rekey-integration --bench ca_rotation [-- N]`
//! (N default 100000; the credentials are declared straight into Postgres
//! as the API would, the serving binary issues them first.)

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rekey::{
    issue::{CertificateSpec, KeyType, Usage},
    sink::SinkSpec,
    store::sync::Declared,
};
use rekey_integration::{
    bin::{outcome, rekey, run},
    pg::fresh_db,
};

fn spec(name: &str, dir: &Path) -> CertificateSpec {
    CertificateSpec {
        name: name.into(),
        issuer: None,
        common_name: None,
        organizations: vec![],
        dns_names: vec![format!(
            "{}.bench.svc",
            name.rsplit('/').next().unwrap_or(name)
        )],
        ip_addresses: vec![],
        key: KeyType::EcdsaP256,
        usages: vec![Usage::Server, Usage::Client],
        lifetime: Duration::from_secs(86_400).into(),
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

fn python() -> PathBuf {
    std::env::var_os("REKEY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python"))
}

/// The bare script's rate with `procs` processes.
fn baseline(base: &Path, n: usize, procs: usize) -> f64 {
    let out = base.join(format!("py{procs}"));
    std::fs::create_dir_all(&out).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_reissue.py");
    let o = Command::new(python())
        .arg(&script)
        .arg(&out)
        .arg(n.to_string())
        .arg(procs.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (integration/test.sh installs the venv with `cryptography`)",
                python().display()
            )
        });
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let secs: f64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("`<n> <seconds>`");
    let _ = std::fs::remove_dir_all(&out);
    n as f64 / secs
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let db = fresh_db().await;
    let base = Path::new("/dev/shm").join(format!("rekey-bench-ca-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let (code, _, err) = outcome(&run(rekey()
        .args(["ca", "init", "--common-name", "bench CA", "--out"])
        .arg(base.join("ca"))));
    assert_eq!(code, 0, "{err}");
    let declared: Vec<Declared> = (0..n)
        .map(|i| {
            let name = format!("cert/bench/c{i:06}");
            let s = spec(&name, &base.join(format!("leaves/c{i:06}")));
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
    drop(declared);
    let config = base.join("rekey.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\nmax_connections = 32\n\n[issuer]\nca_cert = \"{ca}/ca.crt\"\nca_key = \"{ca}/ca.key\"\n\n\
             [engine]\nconcurrency = 512\nbatch_size = 128\nmax_jitter = \"0s\"\n",
            db.url,
            ca = base.join("ca").display()
        ),
    )
    .unwrap();
    let log = base.join("serve.log");
    let mut serve = rekey()
        .args(["serve", "--config"])
        .arg(&config)
        .env("REKEY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("rekey serve");
    let pool = db.pool().clone();
    let t = Instant::now();
    while (count(&pool, "SELECT count(*) FROM credentials WHERE name LIKE 'cert/bench/%' AND current_version IS NOT NULL").await as usize) < n {
        assert!(serve.try_wait().unwrap().is_none(), "rekey serve exited:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = t.elapsed().as_secs_f64();

    let py1 = baseline(&base, n, 1);
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let py_all = baseline(&base, n, cores);

    let (code, _, err) = outcome(&run(rekey()
        .args([
            "ca",
            "rotate",
            "default",
            "--overlap",
            "0s",
            "--max-rate",
            "0",
            "--config",
        ])
        .arg(&config)));
    assert_eq!(code, 0, "{err}");
    let t = Instant::now();
    loop {
        let phase: Option<String> =
            sqlx::query_scalar("SELECT phase FROM ca_rotations ORDER BY started_at DESC LIMIT 1")
                .fetch_optional(&pool)
                .await
                .unwrap();
        if phase.as_deref() == Some("done") {
            break;
        }
        assert!(
            serve.try_wait().unwrap().is_none(),
            "rekey serve exited:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "the rotation did not finish in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = t.elapsed().as_secs_f64();
    let at = |to: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT at FROM audit_events WHERE action = 'ca.rotation.phase' AND details->>'to' = $1 ORDER BY id DESC LIMIT 1",
            )
            .bind(to)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (reissuing, retiring) = (at("reissuing").await, at("retiring").await);
    let secs = (retiring - reissuing).as_seconds_f64();
    let settle = rekey::rotate::ca_rotation::plan::SETTLE.as_secs_f64();
    let on_new: i64 = count(
        &pool,
        "SELECT reissued FROM ca_rotations ORDER BY started_at DESC LIMIT 1",
    )
    .await;
    assert_eq!(on_new as usize, n, "every leaf re-issued");
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = std::fs::remove_dir_all(&base);
    let rate = n as f64 / secs;
    let rate_work = n as f64 / (secs - settle);
    println!(
        "first issuance of {n} leaves by `rekey serve`: {first:.1} s ({:.0}/s)",
        n as f64 / first
    );
    println!(
        "bare script (Python cryptography, no database, no fsync): {py1:.0}/s in 1 process, {py_all:.0}/s in {cores}"
    );
    println!(
        "CA rotation of {n} leaves, reissuing → retiring: {secs:.1} s = {rate:.0}/s ({:.2}x the bare script, {:.2}x it on {cores} processes); \
         without the {settle:.0} s settle before the first re-issue: {rate_work:.0}/s; whole rotation {total:.1} s (targets: < 30 s, >= 1.5x)",
        rate / py1,
        rate / py_all
    );
}
