//! Backups that carry their keys, end to end against real etcd (the
//! Kubernetes stand-in's etcd storage mode): `backup run` records which
//! provider keys the snapshot's values are under (`encryption_keys`, also in
//! `backup list --json`) and escrows them next to the backup, sealed under
//! the KEK and bound to the backup's id; the drill (`backup verify
//! --decrypt-secrets N`) decrypts Secrets with the escrowed keys only and
//! fails on a tampered or missing escrow; `rewrap` re-wraps the escrow,
//! `prune` deletes it with its backup; and `rotate-key --retire` refuses a
//! key while a retained backup needs it.

use std::path::{Path, PathBuf};

use super::util::{kek_file, ls, rekey_json, rekey_run};
use crate::etcd::migrate::{CBC, GCM, Stale, cbc_old, config, create, migrate, retire, stand_in};
use rekey_integration::{etcd::Etcd, pg::fresh_db};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `DIR/rekey.toml` for `backup run` of `etcd` into `destination`, with
/// `encryption_config` (whose keys are escrowed) and the KEK file `kek`.
fn backup_config(
    dir: &Path,
    db: &str,
    etcd: &Etcd,
    encryption_config: &Path,
    destination: &Path,
    kek: &Path,
) -> PathBuf {
    let toml = dir.join("rekey.toml");
    std::fs::write(
        &toml,
        format!(
            "[database]\nurl = \"{db}\"\n\n[etcd]\nendpoints = [\"{}\"]\nencryption_config = \"{}\"\n\n[backup]\ndestination = \"{}\"\nkek_file = \"{}\"\n",
            etcd.endpoint,
            encryption_config.display(),
            destination.display(),
            kek.display()
        ),
    )
    .unwrap();
    toml
}

fn key<'a>(rec: &'a Value, label: &str) -> &'a Value {
    rec["encryption_keys"]
        .as_array()
        .unwrap_or_else(|| panic!("encryption_keys: {rec:#}"))
        .iter()
        .find(|k| k["key"] == label)
        .unwrap_or_else(|| panic!("{label} in {rec:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_record_and_escrow_their_keys_and_hold_a_key_until_pruned() {
    let db = fresh_db().await;
    let Stale {
        etcd,
        dir,
        old: _old,
        both,
        k,
    } = Stale::new(5, 0).await;
    let kek = kek_file(dir.path(), "kek");
    let local = dir.path().join("backups");
    let toml = backup_config(dir.path(), &db.url, &etcd, &both, &local, &kek);

    // The first backup: five values under aescbc:old; aesgcm:new writes.
    let first = rekey_json(&["backup", "run", "--config", s(&toml)], &[]);
    let old_use = key(&first, "aescbc:old");
    assert_eq!(old_use["values"], 5, "{first:#}");
    assert_eq!(old_use["escrowed"], true);
    assert_eq!(old_use["fingerprint"].as_str().unwrap().len(), 16);
    let new_use = key(&first, "aesgcm:new");
    assert_eq!(
        (new_use["writing"].as_bool(), new_use["escrowed"].as_bool()),
        (Some(true), Some(true))
    );
    let files = ls(&local);
    assert_eq!(files.len(), 2, "the backup and its escrow: {files:?}");
    let escrow = files
        .iter()
        .find(|f| f.ends_with(".rkb.keys"))
        .expect("escrow");
    let escrow_path = local.join(escrow);
    let sealed = std::fs::read(&escrow_path).unwrap();
    assert!(sealed.starts_with(b"REKEYESC"));
    for secret in [CBC, GCM] {
        assert!(
            !sealed.windows(12).any(|w| w == &secret.as_bytes()[..12]),
            "keys are sealed"
        );
    }
    assert!(
        !sealed.windows(16).any(|w| w == [1u8; 16]),
        "raw key bytes are sealed"
    );
    // An escrow is not a backup.
    let (code, _, err) = rekey_run(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&kek),
            "--from",
            s(&escrow_path),
            "--out",
            s(&dir.path().join("x")),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("key escrow"), "{err}");
    // Listed with the record.
    let list = rekey_json(&["backup", "list", "--config", s(&toml)], &[]);
    assert_eq!(
        key(&list["backups"][0], "aescbc:old")["values"],
        5,
        "{list:#}"
    );

    // The drill: with the EncryptionConfiguration gone from this machine and
    // no config file, Secrets of the restored snapshot are decrypted with
    // the escrowed keys only.
    let first_location = first["location"].as_str().unwrap().to_string();
    let hidden = dir.path().join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    for f in ["old.yaml", "both.yaml"] {
        std::fs::rename(dir.path().join(f), hidden.join(f)).unwrap();
    }
    let drill = |kek: &Path, n: &str| {
        rekey_run(
            &[
                "backup",
                "verify",
                "--json",
                "--kek-file",
                s(kek),
                "--from",
                &first_location,
                "--decrypt-secrets",
                n,
            ],
            &[],
        )
    };
    let (code, out, err) = drill(&kek, "3");
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            report["secrets_decrypted"].as_u64(),
            report["secrets_failed"].as_u64()
        ),
        (Some(3), Some(0)),
        "{report:#}"
    );
    assert_eq!(report["secrets"]["found"], 5);
    assert_eq!(report["secrets"]["by_key"]["aescbc:old"], 3);
    let (code, out, err) = drill(&kek, "100");
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["secrets_decrypted"], 5, "all if fewer: {report:#}");
    // A tampered escrow fails the drill, naming it; so does a missing one.
    let mut tampered = sealed.clone();
    let at = tampered.len() - 20;
    tampered[at] ^= 1;
    std::fs::write(&escrow_path, &tampered).unwrap();
    let (code, out, err) = drill(&kek, "3");
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(escrow.as_str()) && err.contains("key escrow"),
        "{err}"
    );
    std::fs::remove_file(&escrow_path).unwrap();
    let (code, out, err) = drill(&kek, "3");
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(escrow.as_str()) && err.contains("missing"),
        "{err}"
    );
    std::fs::write(&escrow_path, &sealed).unwrap();
    for f in ["old.yaml", "both.yaml"] {
        std::fs::rename(hidden.join(f), dir.path().join(f)).unwrap();
    }

    // Everything moves to the new key; a second backup no longer needs the old one.
    let (code, report, err) = migrate(
        &etcd,
        &k.admin_kubeconfig(),
        &both,
        Some(&db.url),
        &["--max-rate", "0"],
    );
    assert_eq!(code, 0, "{err}\n{report:#}");
    let second = rekey_json(&["backup", "run", "--config", s(&toml)], &[]);
    assert!(
        second["encryption_keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["key"] != "aescbc:old"),
        "{second:#}"
    );
    assert_eq!(key(&second, "aesgcm:new")["values"], 5);

    // The first backup still needs the old key: retirement names it.
    let (code, _, err) = retire(&etcd, &both, &db.url, "old");
    assert_eq!(code, 1, "{err}");
    let first_id = first["id"].as_str().unwrap();
    assert!(err.contains(first_id), "{err}");
    assert!(!err.contains(second["id"].as_str().unwrap()), "{err}");
    assert!(err.contains("its snapshot holds values under it"), "{err}");

    // rewrap re-wraps the escrows too.
    let new_kek = kek_file(dir.path(), "new-kek");
    let before = std::fs::read(&escrow_path).unwrap();
    let rw = rekey_json(
        &[
            "backup",
            "rewrap",
            "--config",
            s(&toml),
            "--old-kek",
            s(&kek),
            "--new-kek",
            s(&new_kek),
        ],
        &[],
    );
    assert_eq!(
        rw["rewrapped"].as_array().unwrap().len(),
        4,
        "two backups, two escrows: {rw:#}"
    );
    assert!(rw["failed"].as_array().unwrap().is_empty(), "{rw:#}");
    let after = std::fs::read(&escrow_path).unwrap();
    assert_eq!(after.len(), before.len());
    assert_ne!(after[39..107], before[39..107], "envelope re-wrapped");
    assert_eq!(after[107..], before[107..], "body untouched");
    // The re-wrapped escrow opens with the new KEK.
    let (code, out, err) = rekey_run(
        &[
            "backup",
            "verify",
            "--json",
            "--kek-file",
            s(&new_kek),
            "--from",
            &first_location,
            "--decrypt-secrets",
            "5",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["secrets_decrypted"],
        5
    );
    // The records still describe the backups, not their escrows.
    let list = rekey_json(&["backup", "list", "--config", s(&toml)], &[]);
    for rec in list["backups"].as_array().unwrap() {
        let object = std::fs::read(
            rec["location"]
                .as_str()
                .unwrap()
                .trim_start_matches("file://"),
        )
        .unwrap();
        assert_eq!(
            rec["size_bytes"].as_u64(),
            Some(object.len() as u64),
            "{rec:#}"
        );
    }

    // Pruning the first backup deletes its escrow too; then the key can go.
    let pruned = rekey_json(
        &["backup", "prune", "--config", s(&toml), "--keep", "1"],
        &[],
    );
    assert_eq!(pruned["pruned"].as_array().unwrap().len(), 1, "{pruned:#}");
    let files = ls(&local);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(!files.iter().any(|f| f.contains(first_id)), "{files:?}");
    let (code, out, err) = retire(&etcd, &both, &db.url, "old");
    assert_eq!(code, 0, "{out}\n{err}");
}

/// A Secret a KMS provider encrypted cannot be opened without the KMS: the
/// drill counts it as not verifiable locally, not as a failure, and still
/// passes on the Secrets it can open. `rewrap --from` a backup re-wraps its
/// escrow too, so the drill works with the new KEK.
#[tokio::test(flavor = "multi_thread")]
async fn kms_secrets_are_not_verifiable_and_rewrap_from_takes_the_escrow_along() {
    let db = fresh_db().await;
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let old = config(dir.path(), "old.yaml", &cbc_old());
    let k = stand_in(&etcd, &old);
    create(&k, 4, 0).await;
    // As a kms v2 provider stores a value (its envelope cannot be opened
    // here: no KMS plugin).
    let mut c = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    c.put(
        "/registry/secrets/default/from-kms",
        b"k8s:enc:kms:v2:vault:\x0a\x20opaque-envelope-bytes".to_vec(),
        None,
    )
    .await
    .unwrap();
    let kek = kek_file(dir.path(), "kek");
    let local = dir.path().join("backups");
    let toml = backup_config(dir.path(), &db.url, &etcd, &old, &local, &kek);
    let backup = rekey_json(&["backup", "run", "--config", s(&toml)], &[]);
    let (code, out, err) = rekey_run(
        &[
            "backup",
            "verify",
            "--json",
            "--kek-file",
            s(&kek),
            "--from",
            backup["location"].as_str().unwrap(),
            "--decrypt-secrets",
            "100",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["secrets"]["found"], 5, "{report:#}");
    assert_eq!(report["secrets_decrypted"], 4, "{report:#}");
    assert_eq!(report["secrets_failed"], 0, "{report:#}");
    assert_eq!(report["secrets"]["not_verifiable"], 1, "{report:#}");

    // `rewrap --from` one backup re-wraps its escrow with it (named twice:
    // once each); the drill then opens both with the new KEK.
    let location = backup["location"].as_str().unwrap();
    let new_kek = kek_file(dir.path(), "new-kek");
    let rw = rekey_json(
        &[
            "backup",
            "rewrap",
            "--config",
            s(&toml),
            "--old-kek",
            s(&kek),
            "--new-kek",
            s(&new_kek),
            "--from",
            location,
            "--from",
            location,
        ],
        &[],
    );
    assert_eq!(
        rw["rewrapped"].as_array().unwrap().len(),
        2,
        "the backup and its escrow: {rw:#}"
    );
    let (code, out, err) = rekey_run(
        &[
            "backup",
            "verify",
            "--json",
            "--kek-file",
            s(&new_kek),
            "--from",
            location,
            "--decrypt-secrets",
            "100",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["secrets_decrypted"], 4, "{report:#}");
}

/// A run that never finished (its process was killed) counts as needing
/// every key while it may still be running, and is abandoned after
/// `ABANDONED_AFTER_HOURS`: key retirement no longer waits for it, and the
/// next `backup run` marks it failed, audited.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_run_that_never_finished_is_abandoned_and_holds_no_key() {
    let db = fresh_db().await;
    let Stale {
        etcd,
        dir,
        old: _old,
        both,
        k,
    } = Stale::new(3, 0).await;
    let (code, _, err) = migrate(
        &etcd,
        &k.admin_kubeconfig(),
        &both,
        Some(&db.url),
        &["--max-rate", "0"],
    );
    assert_eq!(code, 0, "{err}");
    // A run killed mid-snapshot an hour ago: it may still be running.
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO backups (id, location, status, requested_by, kek_id, chunk_size, started_at)
         VALUES ($1, 'file:///nowhere/x.rkb', 'running', 'rekey/cli', '0123456789abcdef', 65536,
                 now() - interval '1 hour')",
    )
    .bind(id)
    .execute(db.pool())
    .await
    .unwrap();
    let (code, _, err) = retire(&etcd, &both, &db.url, "old");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&id.to_string()), "names the run: {err}");
    // Seven hours on: abandoned.
    sqlx::query("UPDATE backups SET started_at = now() - interval '7 hours' WHERE id = $1")
        .bind(id)
        .execute(db.pool())
        .await
        .unwrap();
    let kek = kek_file(dir.path(), "kek");
    let toml = backup_config(
        dir.path(),
        &db.url,
        &etcd,
        &both,
        &dir.path().join("backups"),
        &kek,
    );
    rekey_json(&["backup", "run", "--config", s(&toml)], &[]);
    let list = rekey_json(&["backup", "list", "--config", s(&toml)], &[]);
    let row = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(row["status"], "failed", "{row:#}");
    assert!(
        row["error"].as_str().unwrap().starts_with("abandoned:"),
        "{row:#}"
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'backup.abandoned' AND details->>'backup_id' = $1",
    )
    .bind(id.to_string())
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(audited, 1);
    let (code, _, err) = retire(&etcd, &both, &db.url, "old");
    assert_eq!(code, 0, "the abandoned run holds no key: {err}");
}
