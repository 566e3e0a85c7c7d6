//! `rekey backup rewrap`: data keys re-wrapped under a new KEK in the stored
//! objects (S3 and local), bodies untouched; afterwards only the new KEK opens
//! them, and the records carry the new KEK id and hash.

use std::path::Path;

use super::util::{
    fill_etcd, kek_file, pattern, rekey_json, rekey_ok, rekey_run, sha256_file, write_config,
};
use object_store::{ObjectStoreExt, path::Path as ObjectPath};
use rekey_integration::{etcd::Etcd, pg::fresh_db, s3::S3};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

async fn fetch(s3: &S3, url: &str) -> Vec<u8> {
    let key = url.trim_start_matches(&format!("s3://{}/", s3.bucket));
    s3.store()
        .get(&ObjectPath::from(key))
        .await
        .expect("object")
        .bytes()
        .await
        .expect("bytes")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrap_in_s3_then_only_the_new_kek_opens() {
    let etcd = Etcd::start();
    fill_etcd(&etcd, 10, "rw");
    let db = fresh_db().await;
    let s3 = S3::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let old = kek_file(dir.path(), "old");
    let new = kek_file(dir.path(), "new");
    let config = write_config(
        dir.path(),
        &db.url,
        &etcd,
        &s3.url("etcd/"),
        &old,
        &format!("chunk_size = \"4KiB\"\n{}", s3.config_lines()),
    );
    let a = rekey_json(&["backup", "run", "--config", s(&config)], &[]);
    let b = rekey_json(&["backup", "run", "--config", s(&config)], &[]);
    // An object under the destination that no record knows (made by `encrypt`).
    let plain = dir.path().join("manual");
    std::fs::write(&plain, pattern(50_000, 3)).expect("write");
    let manual_url = s3.url("etcd/manual.rkb");
    rekey_ok(
        &[
            "backup",
            "encrypt",
            "--config",
            s(&config),
            "--in",
            s(&plain),
            "--out",
            &manual_url,
        ],
        &[],
    );
    let before_a = fetch(&s3, a["location"].as_str().expect("loc")).await;

    let report = rekey_json(
        &[
            "backup",
            "rewrap",
            "--config",
            s(&config),
            "--old-kek",
            s(&old),
            "--new-kek",
            s(&new),
        ],
        &[],
    );
    assert_eq!(
        report["rewrapped"].as_array().expect("list").len(),
        3,
        "{report}"
    );
    assert!(report["failed"].as_array().expect("list").is_empty());

    // Bodies are byte-for-byte the same; only the key envelope changed.
    let after_a = fetch(&s3, a["location"].as_str().expect("loc")).await;
    assert_eq!(after_a.len(), before_a.len());
    assert_eq!(after_a[..39], before_a[..39], "stream header changed");
    assert_ne!(after_a[39..107], before_a[39..107], "envelope unchanged");
    assert_eq!(after_a[107..], before_a[107..], "body changed");

    let list = rekey_json(&["backup", "list", "--database-url", &db.url], &[]);
    let new_id = report["rewrapped"][0]["new_kek_id"].clone();
    for (rec, orig) in list["backups"]
        .as_array()
        .expect("list")
        .iter()
        .zip([&b, &a])
    {
        assert_eq!(rec["id"], orig["id"]);
        assert_eq!(rec["kek_id"], new_id, "{rec}");
        assert_ne!(rec["kek_id"], orig["kek_id"]);
        let obj = fetch(&s3, rec["location"].as_str().expect("loc")).await;
        let f = dir.path().join("obj");
        std::fs::write(&f, &obj).expect("write");
        assert_eq!(
            rec["sha256"],
            sha256_file(&f),
            "record hash follows the object"
        );
        assert_eq!(rec["size_bytes"], obj.len());
    }

    for url in [
        a["location"].as_str().expect("loc"),
        b["location"].as_str().expect("loc"),
        manual_url.as_str(),
    ] {
        let out = dir.path().join("restored");
        let _ = std::fs::remove_file(&out);
        let (code, _, err) = rekey_run(
            &[
                "backup",
                "decrypt",
                "--config",
                s(&config),
                "--kek-file",
                s(&old),
                "--from",
                url,
                "--out",
                s(&out),
            ],
            &[],
        );
        assert_eq!(code, 2, "the old KEK still opens {url}: {err}");
        assert!(err.contains("wrong key"), "{err}");
        assert!(!out.exists());
        rekey_ok(
            &[
                "backup",
                "decrypt",
                "--config",
                s(&config),
                "--kek-file",
                s(&new),
                "--from",
                url,
                "--out",
                s(&out),
            ],
            &[],
        );
    }
    assert_eq!(
        std::fs::read(dir.path().join("restored")).expect("read"),
        pattern(50_000, 3)
    );

    // A second rewrap finds nothing to do.
    let again = rekey_json(
        &[
            "backup",
            "rewrap",
            "--config",
            s(&config),
            "--old-kek",
            s(&old),
            "--new-kek",
            s(&new),
        ],
        &[],
    );
    assert!(
        again["rewrapped"].as_array().expect("list").is_empty(),
        "{again}"
    );
    assert_eq!(
        again["skipped"].as_array().expect("list").len(),
        3,
        "{again}"
    );
}

#[test]
fn rewrap_a_local_object_without_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = kek_file(dir.path(), "old");
    let new = kek_file(dir.path(), "new");
    let third = kek_file(dir.path(), "third");
    let plain = dir.path().join("plain");
    let data = pattern(3 * 1024 * 1024 + 11, 8);
    std::fs::write(&plain, &data).expect("write");
    let enc = dir.path().join("x.rkb");
    rekey_ok(
        &[
            "backup",
            "encrypt",
            "--kek-file",
            s(&old),
            "--in",
            s(&plain),
            "--out",
            s(&enc),
        ],
        &[],
    );
    // The wrong "old" key: nothing is changed, and it says so.
    let (code, _, err) = rekey_run(
        &[
            "backup",
            "rewrap",
            "--old-kek",
            s(&third),
            "--new-kek",
            s(&new),
            "--from",
            s(&enc),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("wrong key"), "{err}");
    rekey_ok(
        &[
            "backup",
            "rewrap",
            "--old-kek",
            s(&old),
            "--new-kek",
            s(&new),
            "--from",
            s(&enc),
        ],
        &[],
    );
    let names: Vec<_> = super::util::ls(dir.path());
    assert!(
        !names.iter().any(|n| n.ends_with(".partial")),
        "temporary file left: {names:?}"
    );
    let out = dir.path().join("out");
    rekey_ok(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&new),
            "--from",
            s(&enc),
            "--out",
            s(&out),
        ],
        &[],
    );
    assert!(std::fs::read(&out).expect("read") == data);
    let (code, _, err) = rekey_run(
        &[
            "backup",
            "rewrap",
            "--old-kek",
            s(&old),
            "--new-kek",
            s(&old),
            "--from",
            s(&enc),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
}
