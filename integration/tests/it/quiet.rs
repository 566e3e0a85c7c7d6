//! Quiet output: at the default log level, commands that only read print
//! their result on stdout and nothing on stderr (no migration chatter, no
//! Postgres notices, no colour codes into a pipe); `rekey migrate` says what
//! it did.

use rekey::store::MIGRATOR;
use rekey_integration::{
    bin::{outcome, rekey, run},
    pg::{empty_db, fresh_db},
};

/// `rekey ARGS --database-url URL` at the default log level (no `REKEY_LOG`):
/// (exit code, stdout, stderr).
fn rekey_default_log(args: &[&str], url: &str) -> (i32, String, String) {
    outcome(&run(rekey()
        .env_remove("REKEY_LOG")
        .args(args)
        .args(["--database-url", url])))
}

fn migrations() -> usize {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .count()
}

#[tokio::test]
async fn read_only_commands_print_their_result_and_nothing_on_stderr() {
    let db = fresh_db().await;
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["token", "list"],
        &["backup", "list"],
        &["backup", "list", "--json"],
        &["migrate"],
    ] {
        let (code, out, err) = rekey_default_log(args, &db.url);
        assert_eq!(code, 0, "rekey {args:?}: {out}{err}");
        assert!(!out.trim().is_empty(), "rekey {args:?} printed nothing");
        assert_eq!(err, "", "rekey {args:?} wrote on stderr");
    }
}

#[tokio::test]
async fn a_new_database_is_migrated_without_a_word_and_migrate_says_what_it_did() {
    let all = migrations();

    // `rekey status` on a new database migrates it, silently.
    let db = empty_db().await;
    let (code, out, err) = rekey_default_log(&["status"], &db.url);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err, "", "migration chatter on stderr");
    assert!(db.store.ready().await, "status did not migrate");
    // The stderr above was really looked at: asked for debug output, the
    // same command says it migrated (and writes no colour codes to a pipe).
    let db = empty_db().await;
    let (code, _, err) = rekey_default_log(&["status", "--log", "debug"], &db.url);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("database migrations applied"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in piped logs:\n{err}"
    );

    // `rekey migrate` reports what it applied, then that nothing was left.
    let db = empty_db().await;
    let (code, out, err) = rekey_default_log(&["migrate"], &db.url);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out.trim(),
        format!("migrations applied: {all} (the schema is up to date, {all} in all)")
    );
    let (code, out, err) = rekey_default_log(&["migrate"], &db.url);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out.trim(),
        format!("the database schema is up to date ({all} migrations)")
    );
}

#[tokio::test]
async fn a_database_that_does_not_exist_is_named_once_not_at_every_retry() {
    let db = fresh_db().await;
    let (base, _) = db.url.rsplit_once('/').expect("a URL with a database");
    let missing = format!("{base}/no_such_database_here");
    let (code, out, err) = rekey_default_log(&["status"], &missing);
    assert_eq!(code, 1, "{out}{err}");
    let said = "database \"no_such_database_here\" does not exist (SQLSTATE 3D000)";
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.starts_with("error: ") && l.ends_with(said)),
        "{err}"
    );
    // Retried while Postgres might be starting, but warned once, and no line
    // numbers of Postgres' own source ("at line 948").
    assert_eq!(
        err.matches("not reachable yet").count(),
        1,
        "one warning for one cause:\n{err}"
    );
    assert!(!err.contains(" at line "), "{err}");
}
