//! Bootstrap-token revocation latency: from a Node registering to its
//! token's Secret being deleted, with 1,000 tokens and 1,000 joining nodes
//! against the API stand-in.
//!
//! Baseline (same run, same stand-in setup): a bare watcher that deletes the
//! token's Secret the moment it sees the Node — the floor set by the watch
//! and one DELETE, with no Postgres bookkeeping.
//!
//!   cargo bench -p rekey-integration --bench kube_revocation
//!   REKEY_BENCH_TOKENS=200 REKEY_BENCH_RATE=100 cargo bench ... (smaller/faster)

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PartialObjectMeta, WatchEvent, WatchParams},
    runtime::{WatchStreamExt, watcher},
};
use rekey::k8s::{BootstrapTokensConfig, bootstrap};
use rekey_integration::{
    kube::{KubeStandIn, Options, fixtures},
    pg::fresh_db,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn id_of(i: usize) -> String {
    format!("b{i:05}")
}

/// Tokens, and for each an approved, issued kubelet CSR made with it.
fn prepare(k: &KubeStandIn, n: usize) {
    for i in 0..n {
        let id = id_of(i);
        let (secret, _) = fixtures::bootstrap_secret(&id, Some(chrono::TimeDelta::hours(2)), None);
        k.put(secret).expect("token secret");
        let mut csr = fixtures::node_csr(&format!("csr-{i}"), &format!("node-{i}"));
        csr["spec"]["username"] = json!(format!("system:bootstrap:{id}"));
        csr["spec"]["groups"] = json!(["system:bootstrappers", "system:authenticated"]);
        k.put(csr).expect("csr");
        k.approve_and_issue(&format!("csr-{i}")).expect("approve");
    }
}

/// Records when each token Secret's deletion is seen (admin watch).
async fn deletion_recorder(
    k: &KubeStandIn,
) -> (
    Arc<Mutex<HashMap<String, Instant>>>,
    tokio::task::JoinHandle<()>,
) {
    let api: Api<Secret> = Api::namespaced(k.admin_client().await, "kube-system");
    let rv = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let s = seen.clone();
    let mut stream = api
        .watch(
            &WatchParams::default().timeout(290).disable_bookmarks(),
            &rv,
        )
        .await
        .expect("watch")
        .boxed();
    let task = tokio::spawn(async move {
        while let Ok(Some(ev)) = stream.try_next().await {
            if let WatchEvent::Deleted(sec) = ev {
                let name = sec.metadata.name.unwrap_or_default();
                s.lock().expect("lock").insert(
                    name.trim_start_matches("bootstrap-token-").to_string(),
                    Instant::now(),
                );
            }
        }
    });
    (seen, task)
}

/// Registers nodes at `rate` per second; returns when each was registered.
async fn register_nodes(k: &KubeStandIn, n: usize, rate: usize) -> HashMap<String, Instant> {
    let mut registered = HashMap::new();
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for i in 0..n {
        let due = start + gap * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        k.put(fixtures::node(&format!("node-{i}"))).expect("node");
        registered.insert(id_of(i), Instant::now());
    }
    registered
}

async fn wait_all(seen: &Mutex<HashMap<String, Instant>>, n: usize, patience: Duration) {
    let start = Instant::now();
    while seen.lock().expect("lock").len() < n {
        assert!(
            start.elapsed() < patience,
            "only {} of {n} tokens revoked",
            seen.lock().expect("lock").len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Stats {
    median: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(registered: &HashMap<String, Instant>, deleted: &HashMap<String, Instant>) -> Stats {
    let mut v: Vec<Duration> = registered
        .iter()
        .map(|(id, t0)| deleted[id].saturating_duration_since(*t0))
        .collect();
    v.sort();
    Stats {
        median: v[v.len() / 2],
        p99: v[(v.len() * 99 / 100).min(v.len() - 1)],
        max: v[v.len() - 1],
    }
}

fn standin() -> KubeStandIn {
    KubeStandIn::start_with(Options {
        workers: 2,
        ..Options::default()
    })
}

async fn baseline(n: usize, rate: usize) -> Stats {
    let k = standin();
    prepare(&k, n);
    let (seen, rec) = deletion_recorder(&k).await;
    let client = k.client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut nodes = watcher(
            Api::<PartialObjectMeta<Node>>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .boxed();
        loop {
            tokio::select! {
                _ = s.cancelled() => return,
                Some(Ok(ev)) = nodes.next() => {
                    if let watcher::Event::Apply(node) = ev {
                        let i: usize = node.metadata.name.unwrap_or_default().trim_start_matches("node-").parse().unwrap_or(0);
                        let _ = secrets.delete(&format!("bootstrap-token-{}", id_of(i)), &DeleteParams::default()).await;
                    }
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let registered = register_nodes(&k, n, rate).await;
    wait_all(&seen, n, Duration::from_secs(120)).await;
    stop.cancel();
    let _ = task.await;
    rec.abort();
    let deleted = seen.lock().expect("lock").clone();
    stats(&registered, &deleted)
}

async fn with_rekey(n: usize, rate: usize) -> Stats {
    let db = fresh_db().await;
    let k = standin();
    prepare(&k, n);
    let (seen, rec) = deletion_recorder(&k).await;
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(bootstrap::run(
        db.store.clone(),
        k.client().await,
        BootstrapTokensConfig::default(),
        stop.clone(),
    ));
    // Wait until every token and join is recorded: the measurement starts at node registration.
    let start = Instant::now();
    loop {
        let joins: i64 = sqlx::query_scalar("SELECT count(*) FROM bootstrap_token_joins")
            .fetch_one(db.pool())
            .await
            .expect("count");
        let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM bootstrap_tokens")
            .fetch_one(db.pool())
            .await
            .expect("count");
        if joins as usize == n && tokens as usize == n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "discovery stalled at {tokens} tokens, {joins} joins"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "  rekey recorded {n} tokens and {n} joins in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let registered = register_nodes(&k, n, rate).await;
    wait_all(&seen, n, Duration::from_secs(300)).await;
    stop.cancel();
    watcher.await.expect("join").expect("watcher");
    rec.abort();
    let revoked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM bootstrap_tokens WHERE state = 'revoked'")
            .fetch_one(db.pool())
            .await
            .expect("count");
    assert_eq!(revoked as usize, n);
    let deletes = k
        .requests()
        .iter()
        .filter(|r| r.verb == "delete" && r.resource == "secrets")
        .count();
    assert_eq!(deletes, n, "one DELETE per token");
    let deleted = seen.lock().expect("lock").clone();
    stats(&registered, &deleted)
}

fn main() {
    rekey::install_crypto_provider();
    let n = env_or("REKEY_BENCH_TOKENS", 1000);
    let rate = env_or("REKEY_BENCH_RATE", 50);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        eprintln!("kube_revocation: {n} tokens, {n} nodes registering at {rate}/s");
        let base = baseline(n, rate).await;
        let ours = with_rekey(n, rate).await;
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        println!("revocation latency, Node registered -> token Secret deleted ({n} tokens, {n} nodes at {rate}/s)");
        println!("{:<10} {:>14} {:>14}", "", "rekey", "baseline");
        println!("{:<10} {:>14} {:>14}", "median", ms(ours.median), ms(base.median));
        println!("{:<10} {:>14} {:>14}", "p99", ms(ours.p99), ms(base.p99));
        println!("{:<10} {:>14} {:>14}", "max", ms(ours.max), ms(base.max));
        println!("baseline: a bare watcher deleting the Secret on the Node event (watch + one DELETE, no Postgres)");
    });
}
