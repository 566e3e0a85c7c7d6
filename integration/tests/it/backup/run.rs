//! `rekey backup run` against a real etcd (TLS, client certificates), a real
//! Postgres, and both a real S3 endpoint (moto) and `file://`; then `list`,
//! `decrypt`, `etcdctl snapshot status` on the result, and `verify`.

use std::path::Path;

use super::util::{
    etcdctl_snapshot_status, fill_etcd, kek_file, ls, rekey_json, rekey_ok, rekey_run, sha256_file,
    write_config,
};
use object_store::{ObjectStoreExt, path::Path as ObjectPath};
use rekey_integration::{etcd::Etcd, pg::fresh_db, s3::S3};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Checks a run's record against the object and the snapshot inside it.
fn check_backup(
    record: &serde_json::Value,
    object_file: &Path,
    kek: &Path,
    dir: &Path,
    revision: i64,
) {
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["source"], "etcd");
    assert_eq!(record["etcd_revision"], revision, "{record}");
    assert_eq!(
        record["size_bytes"].as_u64().expect("size"),
        std::fs::metadata(object_file).expect("object").len()
    );
    assert_eq!(record["sha256"], sha256_file(object_file), "{record}");
    let kek_id = record["kek_id"].as_str().expect("kek id");
    assert_eq!(kek_id.len(), 16);

    // Decrypt with the binary, then let etcd's own tool read the snapshot.
    let restored = dir.join(format!(
        "restored-{}.db",
        record["id"].as_str().expect("id")
    ));
    let dec = rekey_json(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(kek),
            "--from",
            s(object_file),
            "--out",
            s(&restored),
            "--backup-id",
            record["id"].as_str().expect("id"),
        ],
        &[],
    );
    assert_eq!(dec["kek_id"], kek_id);
    assert_eq!(dec["plaintext_bytes"], record["plaintext_bytes"]);
    let status = etcdctl_snapshot_status(&restored);
    assert_eq!(status["revision"], revision, "etcdctl: {status}");
    assert!(status["totalKey"].as_u64().expect("keys") > 20, "{status}");

    // The restore drill reports what etcdctl reports.
    let verify = rekey_json(
        &[
            "backup",
            "verify",
            "--kek-file",
            s(kek),
            "--from",
            s(object_file),
        ],
        &[],
    );
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["snapshot"]["revision"], status["revision"]);
    assert_eq!(verify["snapshot"]["hash"], status["hash"]);
    assert_eq!(verify["snapshot"]["total_keys"], status["totalKey"]);
    assert_eq!(verify["snapshot"]["total_size"], status["totalSize"]);
    assert_eq!(verify["snapshot"]["integrity_hash"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_to_s3_and_file_then_decrypt_and_check_with_etcdctl() {
    let etcd = Etcd::start_tls();
    let revision = fill_etcd(&etcd, 40, "run");
    let db = fresh_db().await;
    let s3 = S3::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_file(dir.path(), "kek");

    // --- S3 -------------------------------------------------------------
    let config = write_config(
        dir.path(),
        &db.url,
        &etcd,
        &s3.url("etcd/"),
        &kek,
        &s3.config_lines(),
    );
    let metrics = dir.path().join("backup.prom");
    let record = rekey_json(
        &[
            "backup",
            "run",
            "--config",
            s(&config),
            "--metrics-file",
            s(&metrics),
        ],
        &[],
    );
    let location = record["location"].as_str().expect("location");
    assert!(location.starts_with(&s3.url("etcd/etcd-")), "{location}");
    assert!(location.ends_with(".rkb"));
    // The object is really in the bucket: fetch it with an independent client.
    let key = location.trim_start_matches(&format!("s3://{}/", s3.bucket));
    let bytes = s3
        .store()
        .get(&ObjectPath::from(key))
        .await
        .expect("object in S3")
        .bytes()
        .await
        .expect("object bytes");
    let fetched = dir.path().join("fetched.rkb");
    std::fs::write(&fetched, &bytes).expect("write");
    check_backup(&record, &fetched, &kek, dir.path(), revision);

    // decrypt straight from the s3:// URL (S3 settings from the config).
    let from_s3 = dir.path().join("from-s3.db");
    rekey_ok(
        &[
            "backup",
            "decrypt",
            "--config",
            s(&config),
            "--from",
            location,
            "--out",
            s(&from_s3),
        ],
        &[],
    );
    assert_eq!(
        etcdctl_snapshot_status(&from_s3)["revision"],
        revision,
        "decrypted from s3://"
    );
    // ... and with the endpoint from AWS_* variables instead of a config.
    let from_env = dir.path().join("from-env.db");
    rekey_ok(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&kek),
            "--from",
            location,
            "--out",
            s(&from_env),
        ],
        &s3.env(),
    );
    assert_eq!(sha256_file(&from_env), sha256_file(&from_s3));

    // Metrics of the run, in Prometheus text format.
    let prom = std::fs::read_to_string(&metrics).expect("metrics file");
    for name in [
        "rekey_backup_last_success_timestamp_seconds",
        "rekey_backup_bytes",
        "rekey_backup_duration_seconds",
    ] {
        assert!(prom.contains(name), "{name} missing:\n{prom}");
    }
    assert!(
        prom.contains(&format!("rekey_backup_bytes {}", record["size_bytes"])),
        "{prom}"
    );

    // --- file:// ----------------------------------------------------------
    let local = dir.path().join("backups");
    let dest = format!("file://{}/", local.display());
    let revision2 = fill_etcd(&etcd, 5, "more");
    let config2 = write_config(
        dir.path(),
        &db.url,
        &etcd,
        &dest,
        &kek,
        "chunk_size = \"64KiB\"\n",
    );
    let record2 = rekey_json(&["backup", "run", "--config", s(&config2)], &[]);
    let files = ls(&local);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].starts_with("etcd-") && files[0].ends_with(".rkb"));
    assert_eq!(record2["chunk_size"], 64 * 1024);
    assert_eq!(
        record2["location"],
        format!("file://{}/{}", local.display(), files[0])
    );
    check_backup(
        &record2,
        &local.join(&files[0]),
        &kek,
        dir.path(),
        revision2,
    );

    // --- list and verify --latest ------------------------------------------
    let list = rekey_json(&["backup", "list", "--database-url", &db.url], &[]);
    let backups = list["backups"].as_array().expect("backups");
    assert_eq!(backups.len(), 2);
    assert_eq!(backups[0]["id"], record2["id"], "newest first");
    assert_eq!(backups[1]["id"], record["id"]);
    let human = rekey_ok(&["backup", "list", "--database-url", &db.url], &[]);
    assert!(
        human.contains(record["id"].as_str().expect("id")),
        "{human}"
    );
    let latest = rekey_json(
        &["backup", "verify", "--config", s(&config2), "--latest"],
        &[],
    );
    assert_eq!(latest["ok"], true, "{latest}");
    assert_eq!(latest["backup_id"], record2["id"]);
    assert_eq!(latest["sha256"], record2["sha256"]);

    // Every run is audited.
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'backup.run' AND outcome = 'success'",
    )
    .fetch_one(db.pool())
    .await
    .expect("audit query");
    assert_eq!(audited, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_is_recorded_and_leaves_no_object() {
    let etcd = Etcd::start();
    let db = fresh_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_file(dir.path(), "kek");
    let local = dir.path().join("backups");
    let dest = format!("file://{}/", local.display());
    let config = write_config(dir.path(), &db.url, &etcd, &dest, &kek, "");
    drop(etcd); // etcd is gone: the snapshot cannot be taken.
    let (code, _, err) = rekey_run(&["backup", "run", "--config", s(&config)], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("etcd"), "{err}");
    assert!(!local.exists() || ls(&local).is_empty(), "{:?}", ls(&local));
    let list = rekey_json(&["backup", "list", "--database-url", &db.url], &[]);
    let failed = &list["backups"][0];
    assert_eq!(failed["status"], "failed", "{list}");
    assert!(
        failed["error"].as_str().expect("error").contains("etcd"),
        "{list}"
    );
    assert!(failed["size_bytes"].is_null() && failed["sha256"].is_null());
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'backup.run' AND outcome = 'failure'",
    )
    .fetch_one(db.pool())
    .await
    .expect("audit query");
    assert_eq!(audited, 1);

    // Bad configuration is bad input.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[database]\nurl = \"{}\"\n[backup]\ndestination = \"ftp://x/y\"\nkek_file = \"{}\"\n",
            db.url,
            kek.display()
        ),
    )
    .expect("write");
    let (code, _, err) = rekey_run(&["backup", "run", "--config", s(&bad)], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("backup.destination"), "{err}");
    let (code, _, err) = rekey_run(&["backup", "verify", "--from", "x.rkb"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("key-encryption key"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_fails_on_a_backup_that_is_not_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_file(dir.path(), "kek");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, super::util::pattern(100_000, 5)).expect("write");
    let enc = dir.path().join("enc.rkb");
    rekey_ok(
        &[
            "backup",
            "encrypt",
            "--kek-file",
            s(&kek),
            "--in",
            s(&plain),
            "--out",
            s(&enc),
        ],
        &[],
    );
    let (code, out, err) = rekey_run(
        &[
            "backup",
            "verify",
            "--kek-file",
            s(&kek),
            "--from",
            s(&enc),
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["ok"], false);
    assert!(
        report["error"]
            .as_str()
            .expect("error")
            .contains("not a valid etcd snapshot"),
        "{report}"
    );
    // A tampered object fails verification too, saying why.
    let mut bytes = std::fs::read(&enc).expect("read");
    bytes[500] ^= 1;
    std::fs::write(&enc, &bytes).expect("write");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    let (code, _, err) = rekey_run(
        &[
            "backup",
            "verify",
            "--kek-file",
            s(&kek),
            "--from",
            s(&enc),
            "--temp-dir",
            s(&tmp),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("tampered"), "{err}");
    // No plaintext is left in the temporary directory.
    assert!(ls(&tmp).is_empty(), "{:?}", ls(&tmp));
}
