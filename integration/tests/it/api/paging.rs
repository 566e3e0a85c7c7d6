//! Paged lists end to end, through a real `rekey serve` over mutual TLS:
//! `?limit` and `?continue` on `/v1/credentials`, `/v1/bootstrap-tokens`,
//! `/v1/backups` and `/v1/audit`.
//!
//! Rows are written straight into Postgres (as other replicas, the engine or
//! the watchers would), so each test controls exactly what the lists hold,
//! including rows inserted between two page requests.

use std::collections::HashSet;

use rekey_integration::{
    api::{Pki, Serve},
    pg::{TestDb, fresh_db},
};
use serde_json::Value;

/// A server with nothing declared, and a viewer's client.
async fn server() -> (TestDb, Pki, Serve, reqwest::Client) {
    let db = fresh_db().await;
    let pki = Pki::new();
    let serve = Serve::start(&db, &pki, "", "").await;
    let viewer = pki.client("viewer");
    (db, pki, serve, viewer)
}

/// `n` unmanaged credentials (the engine leaves them alone) named
/// `{prefix}00001`, `{prefix}00002`, ...
async fn insert_credentials(db: &TestDb, prefix: &str, n: i32) {
    sqlx::query(
        "INSERT INTO credentials (name, kind, source, managed, not_after)
         SELECT $1 || lpad(i::text, 5, '0'), 'certificate', 'discovered', false,
                now() + interval '1 day'
         FROM generate_series(1, $2) i",
    )
    .bind(prefix)
    .bind(n)
    .execute(db.pool())
    .await
    .unwrap();
}

async fn insert_credential(db: &TestDb, name: &str) {
    sqlx::query(
        "INSERT INTO credentials (name, kind, source, managed) VALUES ($1, 'certificate', 'discovered', false)",
    )
    .bind(name)
    .execute(db.pool())
    .await
    .unwrap();
}

/// One page: its items (under `key`) and its `continue`.
struct Page {
    items: Vec<Value>,
    next: Option<String>,
}

async fn page(client: &reqwest::Client, url: &str, query: &[(&str, String)], key: &str) -> Page {
    let r = client.get(url).query(query).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{url} {query:?}: {body}");
    let cont = body
        .get("continue")
        .unwrap_or_else(|| panic!("no `continue` field: {body}"));
    Page {
        items: body[key]
            .as_array()
            .unwrap_or_else(|| panic!("no `{key}`: {body}"))
            .clone(),
        next: match cont {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => panic!("continue is {other}"),
        },
    }
}

/// Follows `continue` from the first page to the last; returns every item
/// and the number of pages.
async fn walk(
    client: &reqwest::Client,
    url: &str,
    filters: &[(&str, String)],
    limit: usize,
    key: &str,
) -> (Vec<Value>, usize) {
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = filters.to_vec();
        q.push(("limit", limit.to_string()));
        if let Some(t) = &next {
            q.push(("continue", t.clone()));
        }
        let p = page(client, url, &q, key).await;
        pages += 1;
        assert!(p.items.len() <= limit, "a page longer than limit");
        if p.next.is_some() {
            assert_eq!(p.items.len(), limit, "only the last page may be short");
        }
        all.extend(p.items);
        match p.next {
            Some(t) => next = Some(t),
            None => return (all, pages),
        }
        assert!(pages < 10_000, "paging does not end");
    }
}

fn strings(items: &[Value], field: &str) -> Vec<String> {
    items
        .iter()
        .map(|v| {
            v[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} in {v}"))
                .to_string()
        })
        .collect()
}

/// Asserts a 400 problem document whose detail starts with `param`.
async fn assert_bad(client: &reqwest::Client, url: &str, query: &[(&str, String)], param: &str) {
    let r = client.get(url).query(query).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 400, "{url} {query:?}: {body}");
    assert_eq!(ct, "application/problem+json", "{url} {query:?}");
    assert_eq!(body["type"], "urn:rekey:problem:bad-request", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with(param),
        "{url} {query:?}: the detail should name `{param}`: {detail}"
    );
    assert!(body["request_id"].is_string(), "{body}");
}

/// A token with one character changed (still base64url).
fn tampered(token: &str, at: usize) -> String {
    let mut b = token.as_bytes().to_vec();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn credentials_pages_cover_every_row_once_in_order() {
    let (db, _pki, serve, viewer) = server().await;
    // 1,233 and the issuer's CA (ca/default, first by name): 1,234 rows.
    insert_credentials(&db, "cert/page/c-", 1233).await;
    let url = format!("{}/v1/credentials", serve.url);

    let (items, pages) = walk(&viewer, &url, &[], 100, "credentials").await;
    let names = strings(&items, "name");
    let expected: Vec<String> = std::iter::once("ca/default".to_string())
        .chain((1..=1233).map(|i| format!("cert/page/c-{i:05}")))
        .collect();
    assert_eq!(names, expected, "every row once, by name");
    assert_eq!(pages, 13, "12 full pages and one of 34");
    assert_eq!(items[0]["state"], "valid", "{}", items[0]);

    // The default page is 500, and the whole list at 1,000 per page.
    let first = page(&viewer, &url, &[], "credentials").await;
    assert_eq!(first.items.len(), 500);
    assert!(first.next.is_some());
    let (all, pages) = walk(&viewer, &url, &[], 1000, "credentials").await;
    assert_eq!((all.len(), pages), (1234, 2));

    // A last page that is exactly full has no empty page after it.
    let (all, pages) = walk(&viewer, &url, &[], 617, "credentials").await;
    assert_eq!((all.len(), pages), (1234, 2));
}

#[tokio::test]
async fn rows_inserted_between_pages_neither_repeat_nor_hide_others() {
    let (db, _pki, serve, viewer) = server().await;
    insert_credentials(&db, "cert/mid/c-", 500).await;
    let url = format!("{}/v1/credentials", serve.url);
    let existing: Vec<String> = (1..=500).map(|i| format!("cert/mid/c-{i:05}")).collect();

    let mut seen: Vec<String> = Vec::new();
    let mut next: Option<String> = None;
    let mut inserted_before = Vec::new();
    let mut inserted_after = Vec::new();
    let mut round = 0;
    loop {
        let mut q = vec![("limit", "60".to_string())];
        if let Some(t) = &next {
            q.push(("continue", t.clone()));
        }
        let p = page(&viewer, &url, &q, "credentials").await;
        seen.extend(strings(&p.items, "name"));
        let Some(t) = p.next else { break };
        next = Some(t);
        // Between two requests: a row before the position (already passed),
        // one just after it, one at the end, and one removed ahead.
        round += 1;
        let last = seen.last().unwrap().clone();
        let before = format!("cert/mid/a-{round:03}");
        let after = format!("{last}~{round}");
        let end = format!("cert/zzz/{round:03}");
        for n in [&before, &after, &end] {
            insert_credential(&db, n).await;
        }
        inserted_before.push(before);
        inserted_after.push(after);
        inserted_after.push(end);
    }
    assert!(round >= 8, "the list took {round} continues");

    let set: HashSet<&String> = seen.iter().collect();
    assert_eq!(set.len(), seen.len(), "a row was sent twice: {seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "pages are in name order, across pages too");
    for n in &existing {
        assert!(
            set.contains(n),
            "{n} existed at the first request but was skipped"
        );
    }
    for n in &inserted_before {
        assert!(!set.contains(n), "{n} sorts before the position: not sent");
    }
    for n in &inserted_after {
        assert!(set.contains(n), "{n} sorts after the position: sent once");
    }
}

#[tokio::test]
async fn bad_limits_and_tokens_are_400_problems_on_every_list() {
    let (db, pki, serve, viewer) = server().await;
    insert_credentials(&db, "cert/bad/c-", 5).await;
    let lists = [
        ("/v1/credentials", "credentials"),
        ("/v1/bootstrap-tokens", "tokens"),
        ("/v1/backups", "backups"),
        ("/v1/audit", "events"),
    ];
    for (path, _) in lists {
        let url = format!("{}{path}", serve.url);
        for bad in ["0", "-1", "1001", "abc", "", "2.5", "99999999999999999999"] {
            assert_bad(&viewer, &url, &[("limit", bad.into())], "limit").await;
        }
        for bad in ["x", "%%", "AAAA", &"A".repeat(3000)] {
            assert_bad(&viewer, &url, &[("continue", bad.into())], "continue").await;
        }
    }

    // A real token, altered or cut short anywhere, is refused.
    let url = format!("{}/v1/credentials", serve.url);
    let p = page(&viewer, &url, &[("limit", "2".into())], "credentials").await;
    let token = p.next.expect("5 rows, 2 per page");
    for at in [0, token.len() / 2, token.len() - 1] {
        assert_bad(
            &viewer,
            &url,
            &[("continue", tampered(&token, at))],
            "continue",
        )
        .await;
    }
    for cut in [1, token.len() / 2, token.len() - 1] {
        assert_bad(
            &viewer,
            &url,
            &[("continue", token[..cut].to_string())],
            "continue",
        )
        .await;
    }
    // It stays good, and may be used again (a retried request).
    for _ in 0..2 {
        let again = page(
            &viewer,
            &url,
            &[("limit", "2".into()), ("continue", token.clone())],
            "credentials",
        )
        .await;
        assert_eq!(
            strings(&again.items, "name"),
            ["cert/bad/c-00002", "cert/bad/c-00003"],
            "after ca/default and c-00001"
        );
    }

    // Re-used on another list: refused on each of the others.
    for (path, _) in &lists[1..] {
        assert_bad(
            &viewer,
            &format!("{}{path}", serve.url),
            &[("continue", token.clone())],
            "continue",
        )
        .await;
    }

    // Bound to the filters: an audit token for one actor is refused for another.
    sqlx::query(
        "INSERT INTO audit_events (actor, action, target, outcome)
         SELECT 'CN=pager-' || (i % 2), 'test.page', 't' || i, 'success' FROM generate_series(1, 10) i",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let audit = format!("{}/v1/audit", serve.url);
    let p = page(
        &viewer,
        &audit,
        &[("actor", "CN=pager-0".into()), ("limit", "2".into())],
        "events",
    )
    .await;
    let t = p.next.expect("5 events of that actor");
    assert_bad(
        &viewer,
        &audit,
        &[("actor", "CN=pager-1".into()), ("continue", t.clone())],
        "continue",
    )
    .await;
    assert_bad(&viewer, &audit, &[("continue", t.clone())], "continue").await;
    // `after` and `continue` both say where to start: one at a time.
    let r = viewer
        .get(&audit)
        .query(&[
            ("actor", "CN=pager-0"),
            ("continue", t.as_str()),
            ("after", "1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // The backups filters likewise.
    let backups = format!("{}/v1/backups", serve.url);
    insert_backups(&db, 4, false).await;
    let p = page(
        &viewer,
        &backups,
        &[("include_pruned", "true".into()), ("limit", "1".into())],
        "backups",
    )
    .await;
    let t = p.next.expect("4 backups");
    assert_bad(
        &viewer,
        &backups,
        &[("include_pruned", "false".into()), ("continue", t.clone())],
        "continue",
    )
    .await;

    // A client without a role is refused before its query is looked at.
    let nobody = pki.client("nobody");
    let r = nobody
        .get(&url)
        .query(&[("limit", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

/// `n` completed backups, all started at the same instant (so only the id
/// orders them), and as many pruned ones an hour earlier if `pruned`.
async fn insert_backups(db: &TestDb, n: i32, pruned: bool) {
    sqlx::query(
        "INSERT INTO backups (id, location, status, requested_by, kek_id, chunk_size, started_at, finished_at)
         SELECT gen_random_uuid(), 'file:///backups/' || gen_random_uuid(), 'completed', 'test',
                '0123456789abcdef', 1048576, '2026-11-25T10:00:00Z', '2026-11-25T10:01:00Z'
         FROM generate_series(1, $1)",
    )
    .bind(n)
    .execute(db.pool())
    .await
    .unwrap();
    if pruned {
        sqlx::query(
            "INSERT INTO backups (id, location, status, requested_by, kek_id, chunk_size, started_at, pruned_at)
             SELECT gen_random_uuid(), 'file:///backups/old-' || i, 'pruned', 'test',
                    '0123456789abcdef', 1048576,
                    timestamptz '2026-11-25T09:00:00Z' - i * interval '1 microsecond', now()
             FROM generate_series(1, $1) i",
        )
        .bind(n)
        .execute(db.pool())
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn backups_page_newest_first_with_ties_broken_by_id() {
    let (db, _pki, serve, viewer) = server().await;
    insert_backups(&db, 25, true).await;
    let url = format!("{}/v1/backups", serve.url);
    let expected: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM backups WHERE status <> 'pruned' ORDER BY started_at DESC, id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let (items, pages) = walk(&viewer, &url, &[], 7, "backups").await;
    assert_eq!(
        strings(&items, "id"),
        expected,
        "pruned ones left out, id order in a tie"
    );
    assert_eq!(pages, 4);

    let all: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM backups ORDER BY started_at DESC, id")
            .fetch_all(db.pool())
            .await
            .unwrap();
    let filters = [("include_pruned", "true".to_string())];
    let (items, _) = walk(&viewer, &url, &filters, 7, "backups").await;
    assert_eq!(strings(&items, "id"), all);
    assert_eq!(items[0]["status"], "completed");
    assert_eq!(items[49]["status"], "pruned");

    // A backup taken while paging is newer than the position: not sent again
    // later, and nothing older is skipped.
    let p = page(&viewer, &url, &[("limit", "10".into())], "backups").await;
    sqlx::query(
        "INSERT INTO backups (id, location, status, requested_by, kek_id, chunk_size)
         VALUES (gen_random_uuid(), 'file:///backups/new', 'completed', 'test', '0123456789abcdef', 1)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let rest = page(
        &viewer,
        &url,
        &[("limit", "100".into()), ("continue", p.next.unwrap())],
        "backups",
    )
    .await;
    let mut ids = strings(&p.items, "id");
    ids.extend(strings(&rest.items, "id"));
    assert_eq!(ids, expected);
    assert!(rest.next.is_none());
}

#[tokio::test]
async fn bootstrap_tokens_page_by_id_with_their_joins() {
    let (db, _pki, serve, viewer) = server().await;
    sqlx::query(
        "INSERT INTO bootstrap_tokens (id, description, usages)
         SELECT 'b' || lpad(i::text, 5, '0'), 'token ' || i, '{authentication}' FROM generate_series(1, 23) i",
    )
    .execute(db.pool())
    .await
    .unwrap();
    // Two joins for b00007 (the last of a page of 7), one for b00008 (the first of the next).
    sqlx::query(
        "INSERT INTO bootstrap_token_joins (csr_uid, csr_name, token_id, node_name) VALUES
           ('u1', 'csr-1', 'b00007', 'node-a'), ('u2', 'csr-2', 'b00007', 'node-b'),
           ('u3', 'csr-3', 'b00008', 'node-c')",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let url = format!("{}/v1/bootstrap-tokens", serve.url);
    let (items, pages) = walk(&viewer, &url, &[], 7, "tokens").await;
    let expected: Vec<String> = (1..=23).map(|i| format!("b{i:05}")).collect();
    assert_eq!(strings(&items, "id"), expected);
    assert_eq!(pages, 4);
    let joins = |id: &str| -> Vec<String> {
        let t = items.iter().find(|t| t["id"] == id).unwrap();
        strings(t["joins"].as_array().unwrap(), "node_name")
    };
    assert_eq!(joins("b00007"), ["node-a", "node-b"]);
    assert_eq!(joins("b00008"), ["node-c"]);
    assert!(joins("b00001").is_empty());
    assert_eq!(items[0]["description"], "token 1");
    assert!(
        items[0].get("secret_uid").is_none(),
        "the shape of `rekey token list --json`: {}",
        items[0]
    );
}

#[tokio::test]
async fn audit_pages_by_continue_or_after_alike() {
    let (db, _pki, serve, viewer) = server().await;
    sqlx::query(
        "INSERT INTO audit_events (actor, action, target, outcome)
         SELECT 'CN=pager', 'test.page', 't' || i, 'success' FROM generate_series(1, 45) i",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let url = format!("{}/v1/audit", serve.url);
    let filters = [("action", "test.page".to_string())];
    let (items, pages) = walk(&viewer, &url, &filters, 10, "events").await;
    let targets = strings(&items, "target");
    let expected: Vec<String> = (1..=45).map(|i| format!("t{i}")).collect();
    assert_eq!(targets, expected, "oldest first, each once");
    assert_eq!(pages, 5);

    // The older `after`/`next_after` walk visits the same events.
    let mut after: Option<i64> = None;
    let mut old_way = Vec::new();
    loop {
        let mut q = vec![("action", "test.page".to_string()), ("limit", "10".into())];
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        let r: Value = viewer
            .get(&url)
            .query(&q)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        old_way.extend(strings(r["events"].as_array().unwrap(), "target"));
        match r["next_after"].as_i64() {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(old_way, expected);

    // A page of 1,000 at the store's cap still knows whether more follow.
    sqlx::query(
        "INSERT INTO audit_events (actor, action, target, outcome)
         SELECT 'CN=pager', 'test.many', 'm' || i, 'success' FROM generate_series(1, 1001) i",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let many = [("action", "test.many".to_string())];
    let (items, pages) = walk(&viewer, &url, &many, 1000, "events").await;
    assert_eq!((items.len(), pages), (1001, 2));
    let (items, pages) = walk(&viewer, &url, &filters, 45, "events").await;
    assert_eq!(
        (items.len(), pages),
        (45, 1),
        "exactly full: no empty page after it"
    );
}

#[tokio::test]
async fn a_list_begun_on_one_replica_continues_on_another() {
    let (db, pki, a, viewer) = server().await;
    let b = Serve::start(&db, &pki, "", "").await;
    insert_credentials(&db, "cert/ha/c-", 30).await;
    let first = page(
        &viewer,
        &format!("{}/v1/credentials", a.url),
        &[("limit", "20".into())],
        "credentials",
    )
    .await;
    let rest = page(
        &viewer,
        &format!("{}/v1/credentials", b.url),
        &[("limit", "20".into()), ("continue", first.next.unwrap())],
        "credentials",
    )
    .await;
    let mut names = strings(&first.items, "name");
    names.extend(strings(&rest.items, "name"));
    let expected: Vec<String> = std::iter::once("ca/default".to_string())
        .chain((1..=30).map(|i| format!("cert/ha/c-{i:05}")))
        .collect();
    assert_eq!(names, expected);
    assert!(rest.next.is_none());
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_paging_key")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(keys, 1, "one key, shared");
}
