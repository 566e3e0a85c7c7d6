//! `gs://` end to end, against fake-gcs-server on loopback (installed into
//! `target/pyenv` by `integration/test.sh`; see `rekey_integration::gcs` for
//! the two XML calls its front translates): `backup run` (a simple upload),
//! `list`, `verify` (`--latest` and `--from`), `encrypt`/`decrypt` of a backup
//! larger than one upload part (a multipart upload), `rewrap` in place, and
//! `prune`. Objects are read back through fake-gcs-server's JSON API, not
//! through rekey. The endpoint comes from `gcs_endpoint` in the config, or
//! from `GOOGLE_*` variables alone; credentials from a service-account key
//! with `disable_oauth`.

use std::path::Path;

use super::util::{
    etcdctl_snapshot_status, fill_etcd, kek_file, pattern, rekey_json, rekey_ok, rekey_run,
    write_config,
};
use rekey_integration::{etcd::Etcd, gcs::Gcs, pg::fresh_db};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn ids(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

/// The object name of a `gs://BUCKET/NAME` location.
fn object_name<'a>(gcs: &Gcs, location: &'a str) -> &'a str {
    location
        .strip_prefix(&format!("gs://{}/", gcs.bucket))
        .unwrap_or_else(|| panic!("{location} is not in gs://{}/", gcs.bucket))
}

/// Checks that each record's hash and size are those of its object in the bucket.
async fn records_match_objects(gcs: &Gcs, records: &serde_json::Value) {
    for rec in records["backups"].as_array().expect("backups") {
        let location = rec["location"].as_str().expect("location");
        let bytes = gcs
            .object(object_name(gcs, location))
            .await
            .unwrap_or_else(|| panic!("{location} is not in the bucket"));
        use sha2::Digest;
        assert_eq!(
            rec["sha256"],
            hex::encode(sha2::Sha256::digest(&bytes)),
            "{location}: record hash"
        );
        assert_eq!(rec["size_bytes"], bytes.len(), "{location}: record size");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_list_verify_rewrap_and_prune_in_gcs() {
    let etcd = Etcd::start();
    let revision = fill_etcd(&etcd, 30, "gcs");
    let db = fresh_db().await;
    let gcs = Gcs::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let old = kek_file(dir.path(), "old");
    let new = kek_file(dir.path(), "new");
    let config = write_config(
        dir.path(),
        &db.url,
        &etcd,
        &gcs.url("etcd/"),
        &old,
        &format!("chunk_size = \"4KiB\"\n{}", gcs.config_lines()),
    );
    let cfg = s(&config);
    // Credentials only: the endpoint comes from `gcs_endpoint`.
    let creds = gcs.credentials_env();

    // --- run ----------------------------------------------------------------
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(rekey_json(&["backup", "run", "--config", cfg], &creds));
    }
    for r in &runs {
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["etcd_revision"], revision, "{r}");
        let location = r["location"].as_str().expect("location");
        assert!(location.starts_with(&gcs.url("etcd/etcd-")), "{location}");
        assert!(location.ends_with(".rkb"), "{location}");
    }
    assert!(
        gcs.calls().iter().filter(|c| *c == "put").count() >= 3,
        "backups of a few KiB are simple uploads: {:?}",
        gcs.calls()
    );
    let mut expected: Vec<String> = runs
        .iter()
        .map(|r| object_name(&gcs, r["location"].as_str().expect("loc")).to_string())
        .collect();
    expected.sort();
    assert_eq!(gcs.names("etcd/").await, expected, "what the bucket holds");

    // --- list ---------------------------------------------------------------
    let list = rekey_json(&["backup", "list", "--config", cfg], &creds);
    let newest_first: Vec<String> = runs
        .iter()
        .rev()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids(&list, "backups"), newest_first);
    records_match_objects(&gcs, &list).await;

    // --- verify, and what etcd's own tool says about the same backup -------
    let latest = rekey_json(&["backup", "verify", "--config", cfg, "--latest"], &creds);
    assert_eq!(latest["ok"], true, "{latest}");
    assert_eq!(latest["backup_id"], runs[2]["id"]);
    assert_eq!(latest["sha256"], runs[2]["sha256"]);
    let first = runs[0]["location"].as_str().expect("location");
    let by_url = rekey_json(
        &["backup", "verify", "--config", cfg, "--from", first],
        &creds,
    );
    assert_eq!(by_url["ok"], true, "{by_url}");
    assert_eq!(by_url["backup_id"], runs[0]["id"]);
    let restored = dir.path().join("restored.db");
    rekey_ok(
        &[
            "backup",
            "decrypt",
            "--config",
            cfg,
            "--from",
            first,
            "--out",
            s(&restored),
        ],
        &creds,
    );
    let status = etcdctl_snapshot_status(&restored);
    assert_eq!(status["revision"], revision, "etcdctl: {status}");
    assert_eq!(by_url["snapshot"]["hash"], status["hash"]);
    assert_eq!(by_url["snapshot"]["total_keys"], status["totalKey"]);

    // --- larger than one upload part (8 MiB): a multipart upload ------------
    // With the endpoint from GOOGLE_* variables alone, no config file.
    let plain = dir.path().join("big");
    let data = pattern(20 * 1024 * 1024 + 5, 16);
    std::fs::write(&plain, &data).expect("write");
    let big_url = gcs.url("etcd/big.rkb");
    let env = gcs.env();
    rekey_ok(
        &[
            "backup",
            "encrypt",
            "--kek-file",
            s(&old),
            "--in",
            s(&plain),
            "--out",
            &big_url,
        ],
        &env,
    );
    let calls = gcs.calls();
    assert!(
        calls.iter().any(|c| c == "initiate") && calls.iter().any(|c| c == "complete 3 parts"),
        "a 20 MiB backup is a multipart upload of three parts: {calls:?}"
    );
    let big = gcs.object("etcd/big.rkb").await.expect("big.rkb stored");
    assert!(
        big.len() > data.len(),
        "ciphertext is larger than plaintext"
    );
    let out = dir.path().join("big.out");
    rekey_ok(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&old),
            "--from",
            &big_url,
            "--out",
            s(&out),
        ],
        &env,
    );
    assert!(std::fs::read(&out).expect("read") == data, "round trip");

    // --- rewrap every backup under the destination --------------------------
    let report = rekey_json(
        &[
            "backup",
            "rewrap",
            "--config",
            cfg,
            "--old-kek",
            s(&old),
            "--new-kek",
            s(&new),
        ],
        &creds,
    );
    assert_eq!(
        report["rewrapped"].as_array().expect("list").len(),
        4,
        "three runs and big.rkb: {report}"
    );
    assert!(
        report["failed"].as_array().expect("list").is_empty(),
        "{report}"
    );
    let after = gcs.object("etcd/big.rkb").await.expect("big.rkb");
    assert_eq!(after.len(), big.len());
    assert_eq!(after[107..], big[107..], "the body is copied unchanged");
    assert_ne!(after[39..107], big[39..107], "the key envelope changed");
    let list = rekey_json(&["backup", "list", "--config", cfg], &creds);
    records_match_objects(&gcs, &list).await;
    // Only the new KEK opens them now.
    let (code, out_json, err) = rekey_run(
        &[
            "backup",
            "verify",
            "--config",
            cfg,
            "--latest",
            "--kek-file",
            s(&old),
            "--json",
        ],
        &creds,
    );
    assert_eq!(
        code, 1,
        "the old KEK still opens the latest backup: {out_json} {err}"
    );
    let latest = rekey_json(
        &[
            "backup",
            "verify",
            "--config",
            cfg,
            "--latest",
            "--kek-file",
            s(&new),
        ],
        &creds,
    );
    assert_eq!(latest["ok"], true, "{latest}");
    std::fs::remove_file(&out).expect("rm");
    rekey_ok(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&new),
            "--from",
            &big_url,
            "--out",
            s(&out),
        ],
        &env,
    );
    assert!(std::fs::read(&out).expect("read") == data, "after rewrap");

    // --- prune ----------------------------------------------------------------
    let pruned = rekey_json(&["backup", "prune", "--config", cfg, "--keep", "1"], &creds);
    assert_eq!(
        ids(&pruned, "pruned"),
        newest_first[1..].to_vec(),
        "{pruned}"
    );
    assert_eq!(
        gcs.names("etcd/").await,
        {
            let mut left = vec![
                "etcd/big.rkb".to_string(),
                object_name(&gcs, runs[2]["location"].as_str().expect("loc")).to_string(),
            ];
            left.sort();
            left
        },
        "pruned objects are deleted from the bucket, the newest and big.rkb stay"
    );
    let all = rekey_json(&["backup", "list", "--config", cfg, "--all"], &creds);
    let statuses: Vec<_> = all["backups"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["status"].as_str().expect("status").to_string())
        .collect();
    assert_eq!(statuses, ["completed", "pruned", "pruned"], "{all}");

    // --- a missing object is named, exit 2 --------------------------------------
    let (code, _, err) = rekey_run(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&new),
            "--from",
            &gcs.url("etcd/none.rkb"),
            "--out",
            s(&dir.path().join("none")),
        ],
        &env,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn gcs_endpoint_must_be_a_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_file(dir.path(), "kek");
    let config = dir.path().join("rekey.toml");
    std::fs::write(
        &config,
        format!(
            "[backup]\ndestination = \"gs://bucket/etcd/\"\nkek_file = \"{}\"\ngcs_endpoint = \"storage.example:443\"\n",
            kek.display()
        ),
    )
    .expect("write");
    let (code, _, err) = rekey_run(&["backup", "list", "--config", s(&config)], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("gcs_endpoint"), "{err}");
}
