//! Recording checks in `etcd_checks` (CLI, library entry point, scheduled
//! job with gauges) and the key-age policy, against real etcd and Postgres.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rekey::etcd::{
    EtcdConfig,
    db::{self, Trigger},
    job,
    verify::{VerifyOptions, verify_and_record},
};
use rekey_integration::{
    bin::{outcome, rekey, run},
    etcd::Etcd,
    k8s_values::{encode, load, secret},
    pg::fresh_db,
    wait::{check, eventually},
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const GCM1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

fn config_text(annotation: Option<&str>) -> String {
    let note = annotation
        .map(|d| format!("            # rekey.io/created-at: {d}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n{note}            - name: k1\n              secret: {GCM1}\n      - identity: {{}}\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// etcd with three aesgcm Secrets and one plaintext Secret.
async fn seeded_etcd() -> Etcd {
    let etcd = Etcd::start();
    let reqs = vec![
        secret("a", "one", "aesgcm", "k1", GCM1),
        secret("a", "two", "aesgcm", "k1", GCM1),
        secret("b", "three", "aesgcm", "k1", GCM1),
        secret("b", "plain", "plaintext", "", ""),
    ];
    let kvs = reqs
        .iter()
        .zip(encode(&reqs))
        .map(|(r, v)| (r["etcd_key"].as_str().unwrap().to_string(), v))
        .collect();
    let client = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    load(&client, kvs).await;
    etcd
}

fn cli(etcd: &Etcd, config: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut cmd = rekey();
    cmd.args(["etcd", "verify", "--json", "--encryption-config"])
        .arg(config)
        .args(["--endpoints", &etcd.endpoint])
        .args(extra);
    let (code, out, err) = outcome(&run(&mut cmd));
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, v, err)
}

fn finding_ids(r: &Value) -> Vec<String> {
    r["config"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn cli_records_checks_and_key_age_comes_from_history() {
    let etcd = seeded_etcd().await;
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "enc.yaml", &config_text(None));

    let (code, r, err) = cli(&etcd, &config, &["--database-url", &db.url]);
    assert_eq!(code, 1, "one plaintext value: {err}");
    assert_eq!(r["scan"]["total"], 4);
    let rows = db::recent(&db.store, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.trigger, "cli");
    assert!(row.config_valid);
    assert_eq!(
        (
            row.total,
            row.plaintext,
            row.stale,
            row.undecryptable,
            row.verified
        ),
        (4, 1, 0, 0, 3)
    );
    assert_eq!(row.exit_code, 1);
    assert_eq!(row.write_key.as_deref(), Some("aesgcm:k1"));
    assert_eq!(row.report["scan"]["counts"]["plaintext"], 1);
    assert!(!row.report.to_string().contains(GCM1));

    // Young key: fine. Pretend the first check was 100 days ago: too old.
    let (_, r, _) = cli(
        &etcd,
        &config,
        &["--database-url", &db.url, "--max-key-age", "90d"],
    );
    assert!(
        !finding_ids(&r).iter().any(|f| f.starts_with("write-key")),
        "{r:#}"
    );
    sqlx::query(
        "UPDATE etcd_checks SET started_at = started_at - interval '100 days' WHERE id = $1",
    )
    .bind(row.id)
    .execute(db.pool())
    .await
    .unwrap();
    let (code, r, _) = cli(
        &etcd,
        &config,
        &["--database-url", &db.url, "--max-key-age", "90d"],
    );
    assert_eq!(code, 1);
    let f = r["config"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "write-key-too-old")
        .unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(f["severity"], "error");
    assert!(
        f["message"].as_str().unwrap().contains("first check"),
        "{f}"
    );
    assert_eq!(db::recent(&db.store, 10).await.unwrap().len(), 3);

    // A rotated key (another fingerprint) has no history yet.
    let other = config_text(None).replace(GCM1, "BQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU=");
    let other = write(dir.path(), "other.yaml", &other);
    let (_, r, _) = cli(
        &etcd,
        &other,
        &["--database-url", &db.url, "--max-key-age", "90d"],
    );
    assert!(!finding_ids(&r).contains(&"write-key-too-old".to_string()));

    // The text report ends saying where the check went (on stdout, not as
    // a log line; `--json` stays the report alone).
    let (code, out, err) = outcome(&run(rekey()
        .args(["etcd", "verify", "--encryption-config"])
        .arg(&config)
        .args(["--endpoints", &etcd.endpoint, "--database-url", &db.url])));
    assert_eq!(code, 1, "{err}");
    let id = db::recent(&db.store, 1).await.unwrap()[0].id;
    assert!(
        out.ends_with(&format!("\nrecorded in Postgres as etcd check {id}\n")),
        "{out}"
    );

    // Without a database: nothing recorded, the annotation gives the age.
    let annotated = write(
        dir.path(),
        "annotated.yaml",
        &config_text(Some("2020-01-01")),
    );
    let (code, r, _) = cli(&etcd, &annotated, &["--max-key-age", "90d"]);
    assert_eq!(code, 1);
    assert!(finding_ids(&r).contains(&"write-key-too-old".to_string()));
    let (_, r, _) = cli(&etcd, &config, &["--max-key-age", "90d"]);
    assert!(finding_ids(&r).contains(&"write-key-age-unknown".to_string()));
    assert_eq!(db::recent(&db.store, 10).await.unwrap().len(), 5);
}

#[tokio::test]
async fn config_file_gives_database_and_etcd() {
    let etcd = seeded_etcd().await;
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "enc.yaml", &config_text(None));
    let toml = format!(
        "[database]\nurl = \"{}\"\n\n[etcd]\nendpoints = [\"{}\"]\nencryption_config = \"enc.yaml\"\nmax_key_age = \"90d\"\n",
        db.url, etcd.endpoint
    );
    let rekey_toml = write(dir.path(), "rekey.toml", &toml);
    let mut cmd = rekey();
    cmd.args(["etcd", "verify", "--json", "--config"])
        .arg(&rekey_toml);
    let (code, out, err) = outcome(&run(&mut cmd));
    assert_eq!(code, 1, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["scan"]["total"], 4);
    assert!(
        finding_ids(&r).contains(&"write-key-age-unknown".to_string()),
        "{r:#}"
    );
    let rows = db::recent(&db.store, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].encryption_config.ends_with("/enc.yaml"));

    // A bad [etcd] field is bad input naming the field.
    let bad = write(
        dir.path(),
        "bad.toml",
        &toml.replace("max_key_age = \"90d\"", "check_schedule = \"61 * * * *\""),
    );
    let mut cmd = rekey();
    cmd.args(["etcd", "verify", "--config"]).arg(&bad);
    let (code, _, err) = outcome(&run(&mut cmd));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("etcd.check_schedule"), "{err}");
}

#[tokio::test]
async fn library_entry_point_and_scheduled_job_record_and_export_gauges() {
    // The process's one recorder: only this test drives the etcd job, so the
    // `rekey_etcd_*` series are its own.
    let metrics = rekey_integration::metrics::prometheus();
    let etcd = seeded_etcd().await;
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let enc = write(dir.path(), "enc.yaml", &config_text(None));
    let config = EtcdConfig {
        encryption_config: Some(enc.clone()),
        check_schedule: Some("* * * * * *".into()),
        ..etcd.config()
    };
    config.validate().unwrap();

    // What `POST /v1/etcd/verify` will call.
    let opts = VerifyOptions::from_config(&config).unwrap();
    let (report, id) = verify_and_record(&opts, Some(&db.store), Trigger::Api)
        .await
        .unwrap();
    assert!(id.is_some());
    assert_eq!(report.exit_code, 1);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["scan"]["counts"]["plaintext"], 1);

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(job::run_scheduled(
        db.store.clone(),
        config,
        shutdown.clone(),
    ));
    eventually(
        "two scheduled checks recorded",
        Duration::from_secs(20),
        async || {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM etcd_checks WHERE trigger = 'schedule'")
                    .fetch_one(db.pool())
                    .await
                    .unwrap();
            check(n, |&n| n >= 2)
        },
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the job stops on shutdown")
        .unwrap()
        .unwrap();

    let text = metrics.render();
    for want in [
        "rekey_etcd_plaintext_values 1",
        "rekey_etcd_stale_values 0",
        "rekey_etcd_undecryptable_values 0",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    let ts_line = text
        .lines()
        .find(|l| l.starts_with("rekey_etcd_last_check_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no timestamp gauge in:\n{text}"));
    let ts: f64 = ts_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp() as f64 - ts).abs() < 60.0,
        "{ts_line}"
    );

    // etcd gone: a failed run is counted, the job keeps going and stops on shutdown.
    drop(etcd);
    let shutdown = CancellationToken::new();
    let config = EtcdConfig {
        endpoints: vec!["http://127.0.0.1:1".into()],
        encryption_config: Some(enc),
        check_schedule: Some("* * * * * *".into()),
        ..Default::default()
    };
    let task = tokio::spawn(job::run_scheduled(
        db.store.clone(),
        config,
        shutdown.clone(),
    ));
    eventually(
        "a failed run counted",
        Duration::from_secs(30),
        async || {
            let failures: Vec<String> = metrics
                .render()
                .lines()
                .filter(|l| l.starts_with("rekey_etcd_check_failures_total"))
                .map(String::from)
                .collect();
            check(failures, |f| !f.is_empty())
        },
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the job stops on shutdown")
        .unwrap()
        .unwrap();
}
