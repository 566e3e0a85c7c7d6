//! `rekey etcd migrate` end to end: the real binary rewrites, through the
//! Kubernetes stand-in's etcd storage mode, every Secret and ConfigMap
//! stored under an old aescbc key so it ends up under the new aesgcm write
//! key, and the re-scan counts zero; the old key is then retired (refused
//! while a value or a retained backup needs it). Also: `--dry-run` writes nothing, a
//! configuration that does not open what is stored rewrites nothing, 409 and
//! 404 answers, `--max-rate`, and the `etcd_migrations` record.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, api::PostParams};
use rekey_integration::{
    bin::{outcome, rekey, run},
    etcd::Etcd,
    kube::{Fault, FaultKind, KubeStandIn, Options, storage::StorageOptions},
    pg::fresh_db,
};
use serde_json::{Value, json};

pub const CBC: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
pub const GCM: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

/// An EncryptionConfiguration for Secrets and ConfigMaps with `providers`
/// (YAML list items) then identity.
pub fn config(dir: &Path, name: &str, providers: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets, configmaps]\n    providers:\n{providers}      - identity: {{}}\n"
        ),
    )
    .unwrap();
    p
}

/// The old aescbc key only.
pub fn cbc_old() -> String {
    format!("      - aescbc:\n          keys:\n            - {{name: old, secret: {CBC}}}\n")
}

/// The new aesgcm write key, then the old aescbc key (the rotation's step 2).
pub fn gcm_new_then_cbc_old() -> String {
    format!(
        "      - aesgcm:\n          keys:\n            - {{name: new, secret: {GCM}}}\n{}",
        cbc_old()
    )
}

/// The new aesgcm key only (the old one already removed).
pub fn gcm_new_only() -> String {
    format!("      - aesgcm:\n          keys:\n            - {{name: new, secret: {GCM}}}\n")
}

/// A stand-in keeping Secrets and ConfigMaps in `etcd` under `config`.
pub fn stand_in(etcd: &Etcd, config: &Path) -> KubeStandIn {
    KubeStandIn::start_with(Options {
        storage: Some(StorageOptions::new(&etcd.endpoint, config)),
        ..Default::default()
    })
}

/// Creates `secrets` Secrets (spread over two namespaces) and `configmaps`
/// ConfigMaps through the API.
pub async fn create(k: &KubeStandIn, secrets: usize, configmaps: usize) {
    let client = k.admin_client().await;
    for i in 0..secrets {
        let ns = if i % 4 == 3 { "other" } else { "default" };
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("s{i:04}")},
            "type": "Opaque", "stringData": {"password": format!("pw-{i}")},
        }))
        .unwrap();
        api.create(&PostParams::default(), &s).await.unwrap();
    }
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..configmaps {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("c{i:04}")}, "data": {"k": format!("v{i}")}}),
        )
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
}

/// Real etcd behind the stand-in: `secrets` Secrets and `configmaps`
/// ConfigMaps written under the old aescbc key (`old`), then the API
/// servers restarted with the new aesgcm write key first (`both`): every
/// value is stale.
pub struct Stale {
    pub etcd: Etcd,
    pub dir: tempfile::TempDir,
    pub old: PathBuf,
    pub both: PathBuf,
    pub k: KubeStandIn,
}

impl Stale {
    pub async fn new(secrets: usize, configmaps: usize) -> Self {
        let etcd = Etcd::start();
        let dir = tempfile::tempdir().unwrap();
        let old = config(dir.path(), "old.yaml", &cbc_old());
        let both = config(dir.path(), "both.yaml", &gcm_new_then_cbc_old());
        let k = stand_in(&etcd, &old);
        create(&k, secrets, configmaps).await;
        k.set_encryption_config(&both);
        Self {
            etcd,
            dir,
            old,
            both,
            k,
        }
    }
}

/// Every key under `/registry/` with its value's prefix and mod revision.
pub async fn stored(etcd: &Etcd) -> Vec<(String, String, i64)> {
    let mut c = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    let r = c
        .get(
            "/registry/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    r.kvs()
        .iter()
        .filter(|kv| {
            let k = kv.key();
            k.starts_with(b"/registry/secrets/") || k.starts_with(b"/registry/configmaps/")
        })
        .map(|kv| {
            let v = kv.value();
            let head = String::from_utf8_lossy(&v[..v.len().min(22)]).into_owned();
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                head,
                kv.mod_revision(),
            )
        })
        .collect()
}

/// `rekey etcd migrate` with `args`; exit code, JSON report (Null when
/// stdout is not JSON), stderr.
pub fn migrate(
    etcd: &Etcd,
    kubeconfig: &Path,
    config: &Path,
    db: Option<&str>,
    args: &[&str],
) -> (i32, Value, String) {
    let mut cmd = rekey();
    cmd.args(["etcd", "migrate", "--json", "--encryption-config"])
        .arg(config)
        .args(["--endpoints", &etcd.endpoint])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args);
    if let Some(url) = db {
        cmd.args(["--database-url", url]);
    }
    let (code, out, err) = outcome(&run(&mut cmd));
    (code, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

/// `rekey etcd rotate-key --retire NAME`: exit code, stdout, stderr.
pub fn retire(etcd: &Etcd, config: &Path, db: &str, name: &str) -> (i32, String, String) {
    let mut cmd = rekey();
    cmd.args([
        "etcd",
        "rotate-key",
        "--retire",
        name,
        "--encryption-config",
    ])
    .arg(config)
    .args(["--endpoints", &etcd.endpoint, "--database-url", db]);
    outcome(&run(&mut cmd))
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_values_are_rewritten_under_the_new_write_key_until_none_is_left() {
    let db = fresh_db().await;
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let old = config(dir.path(), "old.yaml", &cbc_old());
    let both = config(dir.path(), "both.yaml", &gcm_new_then_cbc_old());
    let only_new = config(dir.path(), "new.yaml", &gcm_new_only());
    let k = stand_in(&etcd, &old);
    create(&k, 40, 6).await;
    let before = stored(&etcd).await;
    assert_eq!(before.len(), 46);
    assert!(
        before
            .iter()
            .all(|(_, v, _)| v.starts_with("k8s:enc:aescbc:v1:old:"))
    );
    // The API servers restart with the new write key.
    k.set_encryption_config(&both);

    // --dry-run: the plan, nothing written.
    let (code, plan, err) = migrate(
        &etcd,
        &k.admin_kubeconfig(),
        &both,
        Some(&db.url),
        &["--dry-run"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["planned"], 46, "{plan:#}");
    assert_eq!(plan["resources"][0]["resource"], "secrets");
    assert_eq!(plan["resources"][0]["to_rewrite"], 40);
    assert_eq!(plan["resources"][0]["by_key"]["aescbc:old"], 40);
    assert_eq!(plan["resources"][0]["write_key"], "aesgcm:new");
    assert_eq!(plan["resources"][1]["to_rewrite"], 6);
    assert_eq!(plan["rewritten"], 0);
    assert_eq!(stored(&etcd).await, before, "--dry-run wrote nothing");

    // Bad input: a resource the configuration does not cover; exit 2.
    let (code, _, err) = migrate(
        &etcd,
        &k.admin_kubeconfig(),
        &both,
        None,
        &["--resources", "deployments.apps"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("deployments.apps") && err.contains("not covered"),
        "{err}"
    );
    // A configuration that cannot open what is stored (the old key is not in
    // it): not the API server's; exit 1 naming why, nothing rewritten.
    let (code, _, err) = migrate(&etcd, &k.admin_kubeconfig(), &only_new, Some(&db.url), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot be read with this EncryptionConfiguration"),
        "{err}"
    );
    assert!(err.contains("/registry/"), "names a value: {err}");
    assert!(!err.contains(GCM) && !err.contains(CBC), "{err}");
    assert_eq!(stored(&etcd).await, before, "nothing rewritten");

    // Retirement is refused while values need the key (exit 1 naming the
    // key and the count), for a write key, and for an unknown name (exit 2);
    // the file is left alone.
    let original = std::fs::read(&both).unwrap();
    let (code, _, err) = retire(&etcd, &both, &db.url, "old");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("aescbc:old") && err.contains("46 stored value(s)"),
        "{err}"
    );
    let (code, _, err) = retire(&etcd, &both, &db.url, "new");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("write key"), "{err}");
    let (code, _, err) = retire(&etcd, &both, &db.url, "nope");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown key `nope`") && err.contains("`aescbc:old`"),
        "{err}"
    );
    assert_eq!(std::fs::read(&both).unwrap(), original);

    // The migration.
    let (code, report, err) = migrate(
        &etcd,
        &k.admin_kubeconfig(),
        &both,
        Some(&db.url),
        &["--max-rate", "0"],
    );
    assert_eq!(code, 0, "{err}\n{report:#}");
    assert_eq!(report["planned"], 46);
    assert_eq!(report["rewritten"], 46);
    assert_eq!(report["stale_after"], 0);
    assert_eq!(report["resumed"], false);
    assert!(report["error"].is_null());
    let after = stored(&etcd).await;
    assert_eq!(after.len(), 46);
    for ((key, v, rev), (_, _, rev0)) in after.iter().zip(&before) {
        assert!(v.starts_with("k8s:enc:aesgcm:v1:new:"), "{key}: {v}");
        assert!(rev > rev0, "{key} rewritten");
    }
    // The objects are intact.
    let s: Secret = Api::namespaced(k.admin_client().await, "other")
        .get("s0003")
        .await
        .unwrap();
    assert_eq!(s.data.unwrap()["password"].0, b"pw-3");
    // Recorded, with the re-scans in etcd_checks.
    let (status, rewritten, remaining): (String, i64, Option<i64>) = sqlx::query_as(
        "SELECT status, rewritten, remaining_stale FROM etcd_migrations WHERE id = $1",
    )
    .bind(report["migration_id"].as_i64().unwrap())
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), rewritten, remaining),
        ("completed", 46, Some(0))
    );
    let check = report["resources"][0]["check_id"].as_i64().unwrap();
    let stale: i64 = sqlx::query_scalar("SELECT stale FROM etcd_checks WHERE id = $1")
        .bind(check)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(stale, 0);

    // No value needs the old key now, but a retained backup whose keys were
    // not recorded might: refused, naming it. Once pruned, the key goes.
    let backup = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO backups (id, location, status, requested_by, kek_id, chunk_size)
         VALUES ($1, 'file:///backups/old.rkb', 'completed', 'test', '0123456789abcdef', 4096)",
    )
    .bind(backup)
    .execute(db.pool())
    .await
    .unwrap();
    let (code, _, err) = retire(&etcd, &both, &db.url, "old");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&backup.to_string()) && err.contains("file:///backups/old.rkb"),
        "names the backup: {err}"
    );
    assert!(!err.contains("stored value"), "no value needs it: {err}");
    assert_eq!(std::fs::read(&both).unwrap(), original);
    sqlx::query("UPDATE backups SET status = 'pruned', pruned_at = now() WHERE id = $1")
        .bind(backup)
        .execute(db.pool())
        .await
        .unwrap();
    let (code, out, err) = retire(&etcd, &both, &db.url, "old");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("aescbc:old"), "{out}");
    let text = std::fs::read_to_string(&both).unwrap();
    assert!(!text.contains("name: old") && !text.contains(CBC), "{text}");
    assert!(text.contains(GCM), "the write key stays");
    // The new configuration is valid and opens everything stored.
    let mut cmd = rekey();
    cmd.args(["etcd", "verify", "--json", "--encryption-config"])
        .arg(&both)
        .args(["--endpoints", &etcd.endpoint]);
    let (code, out, err) = outcome(&run(&mut cmd));
    assert_eq!(code, 0, "{out}\n{err}");

    // Again: nothing to do, nothing written.
    let (code, again, err) = migrate(&etcd, &k.admin_kubeconfig(), &both, Some(&db.url), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (again["planned"].as_u64(), again["rewritten"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(again["stale_after"], 0);
    assert_eq!(stored(&etcd).await, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_and_deleted_objects_are_answers_and_the_rate_is_kept() {
    let Stale {
        etcd,
        dir: _dir,
        old: _old,
        both,
        k,
    } = Stale::new(12, 0).await;
    // Two PUTs answered 409 (someone else wrote it) and one GET 404 (deleted
    // meanwhile): neither fails the migration; the re-scan still finds those
    // three stale, so a second pass rewrites them.
    // (Faults spare the harness's admin: the migration runs as another
    // system:masters user.)
    let token = k.add_user("migrator", &["system:masters"]);
    let kubeconfig = k.write_kubeconfig("migrator", &token, None);
    k.inject(Fault::new("update", "secrets", FaultKind::Status(409), 2));
    k.inject(Fault::new("get", "secrets", FaultKind::Status(404), 1));
    let (code, report, err) = migrate(
        &etcd,
        &kubeconfig,
        &both,
        None,
        &["--resources", "secrets", "--max-rate", "20"],
    );
    assert_eq!(code, 0, "{err}\n{report:#}");
    assert_eq!(k.faults_remaining(), 0, "the faults were hit");
    assert_eq!(report["conflicts"], 2, "{report:#}");
    assert_eq!(report["gone"], 1, "{report:#}");
    assert_eq!(report["rewritten"], 12, "{report:#}");
    assert_eq!(report["stale_after"], 0);
    assert_eq!(report["resources"].as_array().unwrap().len(), 1);
    // 15 requests at 20/s: at least 14 periods of 50 ms.
    assert!(
        report["duration_ms"].as_u64().unwrap() >= 700,
        "--max-rate 20 kept: {report:#}"
    );
    assert!(
        stored(&etcd)
            .await
            .iter()
            .all(|(_, v, _)| v.starts_with("k8s:enc:aesgcm:v1:new:"))
    );
}

/// `rekey serve` with `[kubernetes]` (the stand-in) and `[etcd]`
/// (`extra` lines added to the section).
async fn serve(
    db: &rekey_integration::pg::TestDb,
    pki: &rekey_integration::api::Pki,
    etcd: &Etcd,
    k: &KubeStandIn,
    config: &Path,
    extra: &str,
) -> rekey_integration::api::Serve {
    let rest = format!(
        "\n[kubernetes]\nkubeconfig = \"{}\"\n\n[etcd]\nendpoints = [\"{}\"]\nencryption_config = \"{}\"\nmigrate_max_rate = 0\n{extra}",
        k.admin_kubeconfig().display(),
        etcd.endpoint,
        config.display()
    );
    rekey_integration::api::Serve::start(db, pki, "", &rest).await
}

#[tokio::test(flavor = "multi_thread")]
async fn post_v1_etcd_migrate_is_for_admins_and_migrates() {
    let db = fresh_db().await;
    let pki = rekey_integration::api::Pki::new();
    let Stale {
        etcd,
        dir: _dir,
        old: _old,
        both,
        k,
    } = Stale::new(8, 2).await;
    let srv = serve(&db, &pki, &etcd, &k, &both, "").await;
    let url = format!("{}/v1/etcd/migrate", srv.url);
    let r = pki.client("operator").post(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = pki
        .client("admin")
        .post(&url)
        .json(&json!({"colour": "red"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "unknown fields are refused");
    let r = pki
        .client("admin")
        .post(&url)
        .json(&json!({"dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let plan: Value = r.json().await.unwrap();
    assert_eq!(
        (plan["planned"].as_u64(), plan["rewritten"].as_u64()),
        (Some(10), Some(0)),
        "{plan:#}"
    );
    let r = pki
        .client("admin")
        .post(&url)
        .json(&json!({"resources": ["secrets"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["rewritten"], 8, "{report:#}");
    assert_eq!(report["stale_after"], 0);
    let moved = stored(&etcd).await;
    assert_eq!(
        moved
            .iter()
            .filter(|(_, v, _)| v.starts_with("k8s:enc:aesgcm:v1:new:"))
            .count(),
        8,
        "only the Secrets: {moved:?}"
    );
    let trigger: String = sqlx::query_scalar("SELECT trigger FROM etcd_migrations WHERE id = $1")
        .bind(report["migration_id"].as_i64().unwrap())
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(trigger, "api");
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM audit_events WHERE action = 'etcd.migrate' ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert!(audited.iter().any(|o| o == "denied"), "{audited:?}");
    assert!(audited.iter().any(|o| o == "success"), "{audited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduled_migration_rewrites_what_is_stale() {
    let db = fresh_db().await;
    let pki = rekey_integration::api::Pki::new();
    let Stale {
        etcd,
        dir: _dir,
        old: _old,
        both,
        k,
    } = Stale::new(6, 1).await;
    let srv = serve(
        &db,
        &pki,
        &etcd,
        &k,
        &both,
        "migrate_schedule = \"* * * * * *\"\n",
    )
    .await;
    let pool = db.pool().clone();
    rekey_integration::wait::eventually(
        "a completed scheduled migration",
        std::time::Duration::from_secs(60),
        async || {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT status, rewritten FROM etcd_migrations WHERE trigger = 'schedule'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            if rows.iter().any(|(s, n)| s == "completed" && *n == 7) {
                Ok(())
            } else {
                Err(format!("{rows:?}\n{}", srv.log()))
            }
        },
    )
    .await;
    assert!(
        stored(&etcd)
            .await
            .iter()
            .all(|(_, v, _)| v.starts_with("k8s:enc:aesgcm:v1:new:"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_servers_still_on_the_old_write_key_leave_values_stale_and_the_migration_fails() {
    let db = fresh_db().await;
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let old = config(dir.path(), "old.yaml", &cbc_old());
    let both = config(dir.path(), "both.yaml", &gcm_new_then_cbc_old());
    // The API servers were not restarted: they still write with the old key.
    let k = stand_in(&etcd, &old);
    create(&k, 5, 0).await;
    let before = stored(&etcd).await;
    let (code, report, err) = migrate(
        &etcd,
        &k.admin_kubeconfig(),
        &both,
        Some(&db.url),
        &["--resources", "secrets", "--max-rate", "0"],
    );
    assert_eq!(code, 1, "{err}\n{report:#}");
    assert_eq!(report["rewritten"], 0, "{report:#}");
    assert!(report["unchanged"].as_u64().unwrap() >= 5, "{report:#}");
    assert_eq!(report["stale_after"], 5);
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("secrets (5 stale, write key aesgcm:new)") && error.contains("restart them"),
        "{error}"
    );
    assert_eq!(stored(&etcd).await, before, "nothing was written");
    let status: String = sqlx::query_scalar("SELECT status FROM etcd_migrations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(status, "failed");
}

/// rekey's own ServiceAccount, with the RBAC `deploy/` ships: refused (the
/// ClusterRole `rekey:etcd-migrate` is not bound by default), nothing
/// written; once an administrator binds it, the same migration succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn rekeys_service_account_migrates_once_rekey_etcd_migrate_is_bound() {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let Stale {
        etcd,
        dir: _dir,
        old: _old,
        both,
        k,
    } = Stale::new(8, 2).await;
    let before = stored(&etcd).await;

    let (code, report, err) = migrate(&etcd, &k.kubeconfig(), &both, None, &["--max-rate", "0"]);
    assert_ne!(code, 0, "{err}\n{report:#}");
    let said = format!("{err}\n{report}").to_lowercase();
    assert!(said.contains("forbidden"), "names the refusal: {said}");
    assert_eq!(stored(&etcd).await, before, "nothing rewritten");

    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "rekey:etcd-migrate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "rekey:etcd-migrate"},
        "subjects": [{"kind": "ServiceAccount", "name": "rekey", "namespace": "rekey"}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(k.admin_client().await)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let (code, report, err) = migrate(&etcd, &k.kubeconfig(), &both, None, &["--max-rate", "0"]);
    assert_eq!(code, 0, "{err}\n{report:#}");
    assert_eq!(report["rewritten"], 10, "{report:#}");
    assert_eq!(report["stale_after"], 0, "{report:#}");
    assert!(
        stored(&etcd)
            .await
            .iter()
            .all(|(_, v, _)| v.starts_with("k8s:enc:aesgcm:v1:new:"))
    );
}

/// On a terminal (a pseudo-terminal from util-linux `script`) the migration
/// draws a progress bar with a count and ETA on stderr; not with `--json`,
/// and not when stderr is not a terminal.
#[tokio::test(flavor = "multi_thread")]
async fn progress_is_drawn_on_a_terminal_only() {
    let Stale {
        etcd,
        dir: _dir,
        old: _old,
        both,
        k,
    } = Stale::new(24, 24).await;
    let cmd = |extra: &str| {
        format!(
            "{} etcd migrate --encryption-config {} --endpoints {} --kubeconfig {} --max-rate 12 {extra}",
            rekey_integration::bin::rekey_bin().display(),
            both.display(),
            etcd.endpoint,
            k.admin_kubeconfig().display(),
        )
    };
    let under_tty = |c: String| {
        let out = std::process::Command::new("script")
            .args(["-qec", &c, "/dev/null"])
            .env("REKEY_LOG", "warn")
            .output()
            .expect("script (util-linux) runs the command under a pseudo-terminal");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{text}");
        text
    };
    // Not a terminal: the ConfigMaps migrated (at ~12/s), no bar.
    let (code, report, err) = migrate(
        &etcd,
        &k.admin_kubeconfig(),
        &both,
        None,
        &["--max-rate", "12", "--resources", "configmaps"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(report["rewritten"], 24, "{report:#}");
    assert!(!err.contains("ETA"), "a bar without a terminal: {err}");
    // --dry-run --json on a terminal: a plan, no bar.
    let text = under_tty(cmd("--dry-run --json"));
    assert!(text.contains("\"planned\": 24"), "{text}");
    assert!(!text.contains("ETA"), "a bar was drawn with --json: {text}");
    // On a terminal: the bar, counting towards 24 at ~12/s.
    let text = under_tty(cmd(""));
    assert!(
        text.contains("migrate") && text.contains("/24") && text.contains("ETA"),
        "no progress bar on a terminal: {text}"
    );
}
