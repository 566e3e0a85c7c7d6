//! `rekey backup prune`: keeps the right backups (by count and by age), deletes
//! the others' objects and marks their records pruned.

use std::path::Path;

use super::util::{fill_etcd, kek_file, ls, rekey_json, rekey_run, write_config};
use rekey_integration::{etcd::Etcd, pg::fresh_db};

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

#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_the_newest_and_the_young() {
    let etcd = Etcd::start();
    fill_etcd(&etcd, 5, "p");
    let db = fresh_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = kek_file(dir.path(), "kek");
    let local = dir.path().join("backups");
    let config = write_config(dir.path(), &db.url, &etcd, s(&local), &kek, "keep = 4\n");
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(rekey_json(&["backup", "run", "--config", s(&config)], &[]));
    }
    // Newest first, as `list` shows them.
    let newest_first: Vec<String> = runs
        .iter()
        .rev()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ls(&local).len(), 5);

    // A dry run changes nothing.
    let dry = rekey_json(
        &[
            "backup",
            "prune",
            "--config",
            s(&config),
            "--keep",
            "2",
            "--dry-run",
        ],
        &[],
    );
    assert_eq!(ids(&dry, "pruned"), newest_first[2..].to_vec());
    assert_eq!(ls(&local).len(), 5);

    // The configured `keep` (4) is the default.
    let by_config = rekey_json(&["backup", "prune", "--config", s(&config)], &[]);
    assert_eq!(ids(&by_config, "pruned"), newest_first[4..].to_vec());
    assert_eq!(ls(&local).len(), 4);

    let pruned = rekey_json(
        &["backup", "prune", "--config", s(&config), "--keep", "2"],
        &[],
    );
    assert_eq!(ids(&pruned, "pruned"), newest_first[2..4].to_vec());
    assert_eq!(pruned["kept"], 2);
    let left = rekey_json(&["backup", "list", "--config", s(&config)], &[]);
    assert_eq!(ids(&left, "backups"), newest_first[..2].to_vec());
    let files = ls(&local);
    assert_eq!(files.len(), 2, "{files:?}");
    for id in &newest_first[..2] {
        assert!(
            files.iter().any(|f| f.contains(id.as_str())),
            "{id} deleted: {files:?}"
        );
    }
    let all = rekey_json(&["backup", "list", "--config", s(&config), "--all"], &[]);
    let pruned_rows: Vec<_> = all["backups"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|r| r["status"] == "pruned")
        .collect();
    assert_eq!(pruned_rows.len(), 3);
    assert!(pruned_rows.iter().all(|r| !r["pruned_at"].is_null()));

    // By age: make the older of the two remaining backups 10 days old.
    sqlx::query(
        "UPDATE backups SET started_at = started_at - interval '10 days',
                            finished_at = finished_at - interval '10 days'
         WHERE id = $1::uuid",
    )
    .bind(&newest_first[1])
    .execute(db.pool())
    .await
    .expect("backdate");
    let young = rekey_json(
        &[
            "backup",
            "prune",
            "--config",
            s(&config),
            "--older-than",
            "30d",
        ],
        &[],
    );
    assert!(ids(&young, "pruned").is_empty(), "{young}");
    let aged = rekey_json(
        &[
            "backup",
            "prune",
            "--config",
            s(&config),
            "--older-than",
            "7d",
        ],
        &[],
    );
    assert_eq!(ids(&aged, "pruned"), vec![newest_first[1].clone()]);
    // The newest backup is never pruned, however old.
    sqlx::query(
        "UPDATE backups SET started_at = started_at - interval '100 days',
                            finished_at = finished_at - interval '100 days'",
    )
    .execute(db.pool())
    .await
    .expect("backdate all");
    let never = rekey_json(
        &[
            "backup",
            "prune",
            "--config",
            s(&config),
            "--older-than",
            "1d",
            "--keep",
            "1",
        ],
        &[],
    );
    assert!(ids(&never, "pruned").is_empty(), "{never}");
    assert_eq!(ls(&local).len(), 1);

    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'backup.prune'")
            .fetch_one(db.pool())
            .await
            .expect("audit query");
    assert_eq!(audited, 4);

    // Bad retention is bad input.
    for args in [vec!["--keep", "0"], vec!["--older-than", "soon"]] {
        let mut full = vec!["backup", "prune", "--database-url", db.url.as_str()];
        full.extend(args.iter());
        let (code, _, err) = rekey_run(&full, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, _, err) = rekey_run(&["backup", "prune", "--database-url", &db.url], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--keep"), "{err}");
}
