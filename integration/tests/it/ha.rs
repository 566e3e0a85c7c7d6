//! High availability: three `rekey serve` replicas on one database and one
//! Kubernetes API (the stand-in) for about two minutes; halfway through, the
//! bootstrap-token leader is killed with SIGKILL while it is publishing a
//! rotation.
//!
//! ```text
//!  t=0      replicas a, b, c start; 14 credentials rotate every 12–28 s
//!           (staggered), bootstrap tokens are created and nodes join
//!  t≈55 s   the API server turns slow (3 s per Secret update); as soon as the
//!           leader holds a lease on a rotation it is publishing: SIGKILL
//!  after    a node joins at once (no leader until a survivor takes over),
//!           more join later; rotations go on
//!  t≈2 min  the survivors stop (SIGTERM); then the records are checked
//! ```
//!
//! Checked: every due time of every credential served by exactly one
//! successful rotation (the chain of `next_rotation_at` → `due_at`, one
//! published version and one Secret write per rotation, nothing failed); the
//! killed replica's leased work taken over only after its lease expired and
//! within its lease time of the kill; every joined node's bootstrap token
//! revoked exactly once (one Secret deletion, one audit event), the token no
//! node used left alone; one leader at a time, one takeover; the survivors'
//! `/metrics` exporting what the alerts in deploy/ read.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use rekey_integration::{
    kube::{Fault, FaultKind, KubeStandIn, fixtures},
    serve::{Scenario, Server},
    wait::{Text, eventually},
};
use serde_json::Value;
use uuid::Uuid;

/// The engine lease: how long a dead replica's claims block its work.
const LEASE: Duration = Duration::from_secs(10);

/// How long the whole run lasts (from the replicas' start to their stop).
const RUN: Duration = Duration::from_secs(120);

/// The earliest kill, and how long to wait for the leader to hold a lease.
const KILL_AFTER: Duration = Duration::from_secs(55);
const KILL_PATIENCE: Duration = Duration::from_secs(30);

/// The slow API server during the kill: each Secret update takes this long.
const SLOW_UPDATE: Duration = Duration::from_secs(3);

/// Scheduling slack on top of a due time (poll interval 1 s, a slow update,
/// a shared 2-core machine).
const SLACK: Duration = Duration::from_secs(6);

const NS: &str = "ha";
const CERTS: usize = 12;
const REPLICAS: [&str; 3] = ["ha-a", "ha-b", "ha-c"];

fn config(s: &Scenario, k: &KubeStandIn) -> String {
    let mut c = s.config_head(&format!(
        "lease = \"{}s\"\nmax_jitter = \"0s\"\npoll_interval = \"1s\"",
        LEASE.as_secs()
    ));
    c.push_str(&format!(
        "[kubernetes]\nkubeconfig = \"{}\"\n\n[bootstrap_tokens]\nrevoke_after_join = true\nmax_age = \"24h\"\n\n",
        k.kubeconfig().display()
    ));
    // Staggered periods (renewed at half of 24 s, 27 s, ... 57 s), so due
    // times spread over the run and each is claimed by whichever replica
    // polls first.
    for i in 0..CERTS {
        c.push_str(&format!(
            "[[certificate]]\nname = \"cert/{NS}/c{i}\"\ndns_names = [\"c{i}.{NS}.svc\"]\nlifetime = \"{}s\"\nrenew_fraction = 0.5\n\
             sink = {{ kind = \"kubernetes-secret\", namespace = \"{NS}\", name = \"c{i}\" }}\n\n",
            24 + 3 * i
        ));
    }
    for (i, fraction) in [0.02, 0.03].into_iter().enumerate() {
        c.push_str(&format!(
            "[[token]]\nname = \"sa-token/{NS}/t{i}\"\nnamespace = \"{NS}\"\nservice_account = \"sa{i}\"\nlifetime = \"10m\"\n\
             renew_fraction = {fraction}\nsink = {{ kind = \"kubernetes-secret\", namespace = \"{NS}\", name = \"t{i}\" }}\n\n"
        ));
    }
    c
}

/// Free local ports for the replicas' `[metrics]` listeners.
fn metrics_port() -> u16 {
    rekey::devdb::free_port().expect("free port")
}

struct Replica {
    id: &'static str,
    port: u16,
    server: Server,
}

/// A bootstrap token made for a node, and when the node joined.
struct Join {
    id: String,
    node: String,
    token: secrecy::SecretString,
    joined: Option<Instant>,
    revoked_after: Option<Duration>,
}

fn new_token(k: &KubeStandIn, n: usize) -> Join {
    let id = format!("ha{n:04}");
    let (secret, token) = fixtures::bootstrap_secret(&id, None, None);
    k.put(secret).expect("bootstrap-token Secret");
    Join {
        id,
        node: format!("ha-node-{n}"),
        token,
        joined: None,
        revoked_after: None,
    }
}

async fn join(k: &KubeStandIn, j: &mut Join) {
    use secrecy::ExposeSecret;
    k.join_node(j.token.expose_secret(), &j.node).await;
    j.joined = Some(Instant::now());
}

/// Marks joined tokens whose Secret is gone with their revocation latency.
fn note_revocations(k: &KubeStandIn, joins: &mut [Join]) {
    for j in joins.iter_mut() {
        if let (Some(at), None) = (j.joined, j.revoked_after)
            && k.get(
                "Secret",
                "kube-system",
                &format!("bootstrap-token-{}", j.id),
            )
            .is_none()
        {
            j.revoked_after = Some(at.elapsed());
        }
    }
}

/// Sleeps until `deadline`, noting revocations every 50 ms (the run's
/// timeline is the scenario: when nodes join, when the leader is killed).
async fn run_until(k: &KubeStandIn, joins: &mut [Join], deadline: Instant) {
    while Instant::now() < deadline {
        note_revocations(k, joins);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Successful `verb`s of a Secret (`""`: of the collection) by rekey, as the
/// API server answered them.
fn secret_writes(k: &KubeStandIn, ns: &str, name: &str, verb: &str) -> usize {
    k.requests()
        .iter()
        .filter(|r| {
            r.user.starts_with("system:serviceaccount:")
                && r.resource == "secrets"
                && r.namespace == ns
                && r.name == name
                && r.verb == verb
                && (200..300).contains(&r.code)
        })
        .count()
}

#[derive(Debug, sqlx::FromRow)]
struct Rotation {
    id: Uuid,
    credential: String,
    status: String,
    replica: Option<String>,
    due_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    error: Option<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_one_killed_halfway_rotate_and_revoke_exactly_once() {
    let s = Scenario::new().await;
    let k = KubeStandIn::start();
    k.add_namespace(NS);
    for i in 0..2 {
        k.put(fixtures::service_account(NS, &format!("sa{i}")))
            .expect("service account");
    }
    let config = s.write_config("rekey.toml", &config(&s, &k));
    let start = Instant::now();
    let mut replicas: Vec<Replica> = REPLICAS
        .iter()
        .map(|id| {
            let port = metrics_port();
            let listen = format!("127.0.0.1:{port}");
            let server = s.serve(
                &config,
                &[
                    ("REKEY_ENGINE_REPLICA_ID", id),
                    ("REKEY_METRICS_LISTEN", &listen),
                ],
            );
            Replica { id, port, server }
        })
        .collect();
    let http = reqwest::Client::new();
    for r in &replicas {
        let url = format!("http://127.0.0.1:{}/readyz", r.port);
        eventually(
            &format!("{} to be ready", r.id),
            Duration::from_secs(30),
            async || match http.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => Ok(()),
                answer => Err(Text(format!(
                    "{:?}; log:\n{}",
                    answer.map(|a| a.status()),
                    r.server.log()
                ))),
            },
        )
        .await;
    }

    // Before the kill: four nodes join, one token is never used.
    let unused = new_token(&k, 0);
    let mut joins: Vec<Join> = (1..=4).map(|n| new_token(&k, n)).collect();
    for (i, offset) in [8u64, 20, 32, 44].into_iter().enumerate() {
        run_until(&k, &mut joins, start + Duration::from_secs(offset)).await;
        join(&k, &mut joins[i]).await;
    }
    run_until(&k, &mut joins, start + KILL_AFTER).await;
    for j in &joins {
        assert!(
            j.revoked_after.is_some(),
            "token {} (node {}) was not revoked before the kill",
            j.id,
            j.node
        );
    }

    // The kill: the leader, while it holds the lease of a rotation it is publishing.
    let leader: String =
        sqlx::query_scalar("SELECT holder FROM leadership WHERE name = 'bootstrap-tokens'")
            .fetch_one(s.db.pool())
            .await
            .expect("a bootstrap-token leader");
    let mut slow = Fault::new("update", "secrets", FaultKind::Delay(SLOW_UPDATE), 10_000);
    slow.namespace = Some(NS.into());
    k.inject(slow);
    let after_kill_token = new_token(&k, 5);
    let held: Vec<(String, DateTime<Utc>)> = eventually(
        &format!("the leader {leader} to hold a rotation lease"),
        KILL_PATIENCE,
        async || {
            let held: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
                "SELECT c.name, c.lease_expires_at FROM credentials c
                 WHERE c.lease_owner = $1 AND c.lease_expires_at > now()
                   AND EXISTS (SELECT 1 FROM rotations r WHERE r.credential_id = c.id
                               AND r.status = 'running' AND r.replica = $1)",
            )
            .bind(&leader)
            .fetch_all(s.db.pool())
            .await
            .expect("leases");
            if held.is_empty() {
                Err("no lease held")
            } else {
                Ok(held)
            }
        },
    )
    .await;
    let victim = replicas
        .iter()
        .position(|r| r.id == leader)
        .expect("the leader is one of ours");
    replicas[victim].server.kill9();
    let killed_at = Utc::now();
    let killed = Instant::now();
    // Everything it held then (lease expiry, the due time it was serving),
    // now that it cannot renew anything.
    let held_at_kill: BTreeMap<String, (DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT name, lease_expires_at, next_rotation_at FROM credentials
         WHERE lease_owner = $1 AND lease_expires_at > $2",
    )
    .bind(&leader)
    .bind(killed_at)
    .fetch_all(s.db.pool())
    .await
    .expect("leases")
    .into_iter()
    .map(|(name, expiry, due): (String, DateTime<Utc>, DateTime<Utc>)| (name, (expiry, due)))
    .collect();
    for (name, _) in &held {
        assert!(held_at_kill.contains_key(name), "{name} {held_at_kill:?}");
    }
    k.clear_faults();
    let victim_log = replicas[victim].server.log();
    let victim = replicas.remove(victim);

    // After the kill: a node joins while nobody leads, more join later.
    joins.push(after_kill_token);
    let n = joins.len() - 1;
    join(&k, &mut joins[n]).await;
    for (n, offset) in [(6, 15u64), (7, 30), (8, 45)] {
        // Made a few seconds before its node joins.
        run_until(&k, &mut joins, killed + Duration::from_secs(offset - 5)).await;
        let mut j = new_token(&k, n);
        run_until(&k, &mut joins, killed + Duration::from_secs(offset)).await;
        join(&k, &mut j).await;
        joins.push(j);
    }
    run_until(
        &k,
        &mut joins,
        (start + RUN).max(killed + Duration::from_secs(55)),
    )
    .await;
    let wait = Instant::now() + Duration::from_secs(15);
    while joins.iter().any(|j| j.revoked_after.is_none()) && Instant::now() < wait {
        run_until(&k, &mut joins, Instant::now() + Duration::from_millis(200)).await;
    }

    // The survivors' metrics carry what the alerts read, then they stop.
    let alerts = std::fs::read_to_string(
        rekey_integration::deploy::deploy_dir().join("components/monitoring/prometheusrule.yaml"),
    )
    .expect("prometheusrule.yaml");
    let mut new_leader = None;
    for r in &replicas {
        let text = http
            .get(format!("http://127.0.0.1:{}/metrics", r.port))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        for metric in [
            "rekey_credential_not_after_seconds",
            "rekey_credential_not_before_seconds",
            "rekey_credential_rotation_failures",
            "rekey_rotations_total",
        ] {
            assert!(alerts.contains(metric), "the alerts read {metric}");
        }
        for line in [
            format!(
                "rekey_credential_not_after_seconds{{name=\"cert/{NS}/c0\",kind=\"certificate\"}} "
            ),
            format!(
                "rekey_credential_not_before_seconds{{name=\"cert/{NS}/c0\",kind=\"certificate\"}} "
            ),
            format!(
                "rekey_credential_rotation_failures{{name=\"cert/{NS}/c0\",kind=\"certificate\"}} 0\n"
            ),
        ] {
            assert!(text.contains(&line), "{}: no `{line}` in\n{text}", r.id);
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("rekey_rotations_total{")
                    && l.contains("outcome=\"success\"")),
            "{}: no successful rotation counted:\n{text}",
            r.id
        );
        assert!(
            !text.contains("outcome=\"failure\""),
            "{}: failed rotations:\n{text}",
            r.id
        );
        // ... and what the dashboard reads (deploy/components/monitoring).
        assert!(
            text.lines().any(|l| l
                .strip_prefix("rekey_credentials{kind=\"certificate\",state=\"valid\"} ")
                .is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0))),
            "{}: no valid certificates counted:\n{text}",
            r.id
        );
        if text.contains("rekey_leader{job=\"bootstrap-tokens\"} 1") {
            assert!(
                new_leader.replace(r.id).is_none(),
                "two leaders export rekey_leader 1"
            );
            // It revoked the tokens of the nodes that joined after the kill.
            let revoked: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("rekey_bootstrap_tokens_revoked_total "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            assert!(revoked >= 1.0, "{}: revocations not counted:\n{text}", r.id);
        }
    }
    let new_leader = new_leader.expect("a survivor leads the bootstrap-token watcher");
    let mut logs = BTreeMap::from([(victim.id, victim_log)]);
    for r in &mut replicas {
        let code = r.server.terminate(Duration::from_secs(30));
        assert_eq!(
            code,
            Some(0),
            "{} did not stop cleanly:\n{}",
            r.id,
            r.server.log()
        );
        logs.insert(r.id, r.server.log());
    }
    let total = start.elapsed();

    // --- Leadership: one takeover, one leader at a time. -------------------
    let (epoch, holder, acquired_at): (i64, String, DateTime<Utc>) = sqlx::query_as(
        "SELECT epoch, holder, acquired_at FROM leadership WHERE name = 'bootstrap-tokens'",
    )
    .fetch_one(s.db.pool())
    .await
    .expect("leadership");
    assert_eq!(epoch, 2, "exactly one takeover");
    assert_eq!(holder, new_leader);
    let takeover = (acquired_at - killed_at).to_std().expect("after the kill");
    assert!(
        takeover <= LEASE,
        "the leader's work was taken over after {takeover:?}"
    );
    for (id, log) in &logs {
        let led = log
            .lines()
            .filter(|l| l.contains("leading") && l.contains("bootstrap-tokens"))
            .count();
        let expected = usize::from(*id == leader || *id == new_leader);
        assert_eq!(led, expected, "{id} led the watcher {led} times:\n{log}");
    }

    // --- Bootstrap tokens: each revoked once, the unused one kept. ----------
    for j in &joins {
        let latency = j.revoked_after.unwrap_or_else(|| {
            panic!(
                "token {} (node {}) was never revoked:\n{}",
                j.id, j.node, logs[new_leader]
            )
        });
        let (state, reason, node): (String, Option<String>, Option<String>) = sqlx::query_as(
            "SELECT state, revoked_reason, revoked_node FROM bootstrap_tokens WHERE id = $1",
        )
        .bind(&j.id)
        .fetch_one(s.db.pool())
        .await
        .expect("token row");
        assert_eq!(
            (state.as_str(), reason.as_deref(), node.as_deref()),
            ("revoked", Some("joined"), Some(j.node.as_str())),
            "token {}",
            j.id
        );
        let deletes = k
            .requests()
            .iter()
            .filter(|r| {
                r.verb == "delete"
                    && r.namespace == "kube-system"
                    && r.name == format!("bootstrap-token-{}", j.id)
                    && (200..300).contains(&r.code)
            })
            .count();
        assert_eq!(deletes, 1, "token {}: Secret deleted {deletes} times", j.id);
        let events: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events WHERE action = 'bootstrap_token.revoke' AND target = $1",
        )
        .bind(format!("bootstrap-token/{}", j.id))
        .fetch_one(s.db.pool())
        .await
        .expect("audit");
        assert_eq!(events, 1, "token {}: {events} revocation events", j.id);
        // Watch-driven while a leader runs; across the kill, within the takeover.
        let bound = if j.id == "ha0005" {
            LEASE + Duration::from_secs(5)
        } else {
            Duration::from_secs(5)
        };
        assert!(
            latency <= bound,
            "token {} revoked {latency:?} after its join",
            j.id
        );
    }
    assert!(
        k.get(
            "Secret",
            "kube-system",
            &format!("bootstrap-token-{}", unused.id)
        )
        .is_some(),
        "a token no node used is kept"
    );

    // --- Rotations: every due time served by exactly one rotation. ----------
    let rotations: Vec<Rotation> = sqlx::query_as(
        "SELECT r.id, c.name AS credential, r.status, r.replica, r.due_at, r.started_at, r.error
         FROM rotations r JOIN credentials c ON c.id = r.credential_id
         ORDER BY c.name, r.finished_at NULLS LAST, r.requested_at",
    )
    .fetch_all(s.db.pool())
    .await
    .expect("rotations");
    for r in &rotations {
        assert!(
            r.status == "succeeded"
                || (r.status == "abandoned" && r.replica.as_deref() == Some(leader.as_str())),
            "nothing but the killed replica's interrupted attempts may be left unsucceeded: {r:?} ({:?})",
            r.error
        );
    }
    // next_rotation_at as each committed rotation set it (its audit event).
    let commits: Vec<(String, Value, DateTime<Utc>)> = sqlx::query_as(
        "SELECT actor, details, at FROM audit_events WHERE action = 'credential.rotate' AND outcome = 'success'",
    )
    .fetch_all(s.db.pool())
    .await
    .expect("audit");
    // rotation id → (actor, next_rotation_at it planned, when, recovered).
    let commit_of: BTreeMap<Uuid, (String, DateTime<Utc>, DateTime<Utc>, bool)> = commits
        .into_iter()
        .map(|(actor, d, at)| {
            let id: Uuid = serde_json::from_value(d["rotation_id"].clone()).expect("rotation_id");
            let next: DateTime<Utc> =
                serde_json::from_value(d["next_rotation_at"].clone()).expect("next_rotation_at");
            (id, (actor, next, at, d["recovered"] == true))
        })
        .collect();
    let failed_versions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credential_versions v JOIN rotations r ON r.id = v.rotation_id
         WHERE v.status NOT IN ('published', 'superseded') AND (r.replica IS DISTINCT FROM $1 OR r.status <> 'abandoned')",
    )
    .bind(&leader)
    .fetch_one(s.db.pool())
    .await
    .expect("versions");
    assert_eq!(
        failed_versions, 0,
        "versions failed other than the killed attempt's"
    );
    let mut per_credential: BTreeMap<&str, Vec<&Rotation>> = BTreeMap::new();
    for r in rotations.iter().filter(|r| r.status == "succeeded") {
        per_credential.entry(&r.credential).or_default().push(r);
    }
    assert_eq!(per_credential.len(), CERTS + 2, "every credential rotated");
    let mut total_rotations = 0;
    let mut takeovers: BTreeMap<String, Duration> = BTreeMap::new();
    let mut recoveries = 0;
    for (name, rs) in &per_credential {
        total_rotations += rs.len();
        assert!(rs.len() >= 4, "{name} rotated only {} times", rs.len());
        let dues: BTreeSet<DateTime<Utc>> = rs.iter().filter_map(|r| r.due_at).collect();
        assert_eq!(
            dues.len(),
            rs.len(),
            "{name}: a due time served twice: {rs:#?}"
        );
        for pair in rs.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let (_, planned, _, _) = &commit_of[&prev.id];
            let due = next.due_at.expect("due_at");
            assert!(
                (due - *planned).num_milliseconds().abs() < 1,
                "{name}: rotation {} served {due}, but the one before planned {planned}",
                next.id
            );
            let late = (next.started_at.expect("started") - due)
                .to_std()
                .unwrap_or_default();
            let (actor, _, committed, _) = &commit_of[&next.id];
            match held_at_kill.get(*name) {
                // The due time the killed replica held: nobody else before
                // its lease expired, a survivor right after.
                Some((expiry, held_due)) if (due - *held_due).num_milliseconds().abs() < 1 => {
                    assert!(
                        *committed >= *expiry && actor != &format!("rekey/{leader}"),
                        "{name}: taken over before the lease expired ({committed} < {expiry}) or by {actor}"
                    );
                    let gap = (*committed - killed_at).to_std().expect("after the kill");
                    assert!(
                        gap <= LEASE + SLACK,
                        "{name}: picked up {gap:?} after the kill"
                    );
                    takeovers.insert(name.to_string(), gap);
                }
                _ => assert!(
                    late <= SLACK,
                    "{name}: started {late:?} after its due time {due}"
                ),
            }
        }
        // One published version and one Secret write per rotation.
        let published: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM credential_versions v JOIN credentials c ON c.id = v.credential_id
             WHERE c.name = $1 AND v.status IN ('published', 'superseded')",
        )
        .bind(name)
        .fetch_one(s.db.pool())
        .await
        .expect("versions");
        assert_eq!(
            published as usize,
            rs.len(),
            "{name}: versions vs rotations"
        );
        let secret = name.rsplit('/').next().expect("secret name");
        // Created by the first rotation (a create names no object in its
        // path: counted for the namespace below), replaced by every other.
        let writes = 1 + secret_writes(&k, NS, secret, "update");
        // A write the killed replica made while it died may land without the
        // stand-in logging it (the connection is gone before the answer); the
        // survivor that took over then found that version in the Secret and
        // committed it (`recovered`).
        let recovered = rs
            .iter()
            .filter(|r| commit_of[&r.id].3 && held_at_kill.contains_key(*name))
            .count();
        assert!(
            writes == rs.len() || (recovered == 1 && writes + 1 == rs.len()),
            "{name}: {writes} Secret writes for {} rotations ({recovered} recovered)",
            rs.len()
        );
        recoveries += recovered;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT current_version FROM credentials WHERE name = $1")
                .bind(name)
                .fetch_one(s.db.pool())
                .await
                .expect("current");
        let in_secret: Option<i64> = k.get("Secret", NS, secret).and_then(|o| {
            o["metadata"]["annotations"]["rekey.io/version"]
                .as_str()?
                .parse()
                .ok()
        });
        assert_eq!(
            in_secret, current,
            "{name}: the Secret holds the current version"
        );
    }
    assert_eq!(
        secret_writes(&k, NS, "", "create"),
        CERTS + 2,
        "each Secret created once"
    );
    for name in held_at_kill.keys() {
        assert!(
            takeovers.contains_key(name),
            "{name}, leased by the killed replica, was never rotated after: {takeovers:?}"
        );
    }
    assert!(k.denied().is_empty(), "{:?}", k.denied());
    let revocation_after_kill = joins
        .iter()
        .find(|j| j.id == "ha0005")
        .and_then(|j| j.revoked_after);
    eprintln!(
        "ha: {total_rotations} rotations by {} replicas in {total:?}; killed {leader} {:?} after start \
         holding {} lease(s); taken over after {takeovers:?} (lease {LEASE:?}); leader takeover after \
         {takeover:?}; {recoveries} interrupted publication(s) recovered; the token joined right after \
         the kill revoked after {revocation_after_kill:?}",
        REPLICAS.len(),
        killed - start,
        held_at_kill.len()
    );
}
