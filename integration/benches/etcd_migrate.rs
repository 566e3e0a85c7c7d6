//! Benchmark: `rekey etcd migrate` against the floor of the storage-migration
//! procedure.
//!
//! The Kubernetes stand-in keeps Secrets in a real etcd (its storage mode,
//! encoding with the independent encoder), running with a new aesgcm write
//! key before an old aescbc key. In the same run:
//!
//! 1. `BENCH_OBJECTS / 10` stale Secrets (under the old key) are loaded and
//!    migrated by the `rekey` binary (peak RSS at a tenth of the objects);
//! 2. `BENCH_OBJECTS` stale Secrets are loaded and rewritten by a bare client:
//!    the same GET + unchanged PUT per object through the same stand-in, with
//!    the same concurrency (8), nothing else (the baseline);
//! 3. `BENCH_OBJECTS` more stale Secrets are loaded and migrated by the
//!    `rekey` binary (pre-flight scan, rewrites, re-scan; no rate limit),
//!    timed and with its peak RSS (GNU time `%M`).
//!
//! Reports rewrites per second of both and the ratio (target ≥ 0.8), and the
//! peak RSS at a tenth and at all of the objects (target: flat).
//!
//! Run: `cargo build --release -p rekey --bins && cargo bench -p rekey-integration --bench etcd_migrate`
//! (`REKEY_BIN` picks another binary; `BENCH_OBJECTS` resizes it, default 100,000).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use rekey_integration::{
    bin::rekey_bin,
    etcd::Etcd,
    k8s_values,
    kube::{KubeStandIn, Options, storage::StorageOptions},
};
use serde_json::{Value, json};

const CBC: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const GCM: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
const CONCURRENCY: usize = 8;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Loads `n` Secrets named `s<i>` in namespace `ns`, stored under the old
/// aescbc key, straight into etcd.
fn load(rt: &tokio::runtime::Runtime, etcd: &Etcd, ns: &str, n: usize) {
    let client = rt
        .block_on(rekey::etcd::client::connect(&etcd.config()))
        .expect("connect");
    for start in (0..n).step_by(10_000) {
        let reqs: Vec<Value> = (start..(start + 10_000).min(n))
            .map(|i| {
                json!({"etcd_key": format!("/registry/secrets/{ns}/s{i:07}"), "format": "aescbc",
                       "key_name": "old", "secret": CBC, "name": format!("s{i:07}"),
                       "namespace": ns, "filler": 200})
            })
            .collect();
        let values = k8s_values::encode(&reqs);
        let kvs = reqs
            .iter()
            .zip(values)
            .map(|(r, v)| (r["etcd_key"].as_str().expect("key").to_string(), v))
            .collect();
        rt.block_on(k8s_values::load(&client, kvs));
    }
}

/// Runs `rekey etcd migrate`; wall seconds, peak RSS (KiB), the report.
fn migrate(etcd: &Etcd, k: &KubeStandIn, config: &Path, rss_file: &Path) -> (f64, u64, Value) {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%M", "-o"])
        .arg(rss_file)
        .arg(rekey_bin())
        .args([
            "etcd",
            "migrate",
            "--json",
            "--max-rate",
            "0",
            "--encryption-config",
        ])
        .arg(config)
        .args(["--endpoints", &etcd.endpoint, "--kubeconfig"])
        .arg(k.admin_kubeconfig())
        .env("REKEY_LOG", "warn")
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let out = timed
        .output()
        .expect("running /usr/bin/time (apt-get install -y time)");
    let secs = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "rekey etcd migrate failed: {out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["stale_after"], 0, "{report:#}");
    let rss = std::fs::read_to_string(rss_file)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    (secs, rss, report)
}

fn main() {
    rekey::install_crypto_provider();
    let total = env_or("BENCH_OBJECTS", 100_000);
    let tenth = (total / 10).max(1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("enc.yaml");
    std::fs::write(
        &config,
        format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - {{name: new, secret: {GCM}}}\n      - aescbc:\n          keys:\n            - {{name: old, secret: {CBC}}}\n      - identity: {{}}\n"),
    )
    .expect("config");
    let k = KubeStandIn::start_with(Options {
        storage: Some(StorageOptions::new(&etcd.endpoint, &config)),
        ..Default::default()
    });
    let rss_file = dir.path().join("rss");

    eprintln!("a tenth: {tenth} stale Secrets, migrated by rekey...");
    load(&rt, &etcd, "tenth", tenth);
    let (_, rss_tenth, _) = migrate(&etcd, &k, &config, &rss_file);

    eprintln!("baseline: {total} stale Secrets, GET + unchanged PUT by a bare client...");
    load(&rt, &etcd, "bare", total);
    let client = rt.block_on(k.admin_client());
    let start = Instant::now();
    let rewritten = rt.block_on(async {
        let api: Api<Secret> = Api::namespaced(client, "bare");
        futures::stream::iter(0..total)
            .map(|i| {
                let api = api.clone();
                async move {
                    let name = format!("s{i:07}");
                    let obj = api.get(&name).await.expect("get");
                    let before = obj.metadata.resource_version.clone();
                    let after = api
                        .replace(&name, &PostParams::default(), &obj)
                        .await
                        .expect("put");
                    usize::from(after.metadata.resource_version != before)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .fold(0usize, |n, x| async move { n + x })
            .await
    });
    let bare_secs = start.elapsed().as_secs_f64();
    assert_eq!(rewritten, total, "the bare client rewrote every object");

    eprintln!("rekey: {total} more stale Secrets, migrated by rekey...");
    load(&rt, &etcd, "mig", total);
    let (mig_secs, rss_all, report) = migrate(&etcd, &k, &config, &rss_file);
    assert_eq!(
        report["rewritten"].as_u64(),
        Some(total as u64),
        "{report:#}"
    );

    let bare_rate = total as f64 / bare_secs;
    let mig_rate = total as f64 / mig_secs;
    println!();
    println!(
        "etcd migrate benchmark: {total} stale Secrets (aescbc:old -> aesgcm:new), stand-in storage mode on a real etcd, concurrency {CONCURRENCY}"
    );
    println!("{:<58} {:>9} {:>12}", "", "seconds", "rewrites/s");
    println!(
        "{:<58} {:>9.1} {:>12.0}",
        "bare client: GET + unchanged PUT (baseline)", bare_secs, bare_rate
    );
    println!(
        "{:<58} {:>9.1} {:>12.0}",
        "rekey etcd migrate (scan + rewrites + re-scan, wall)", mig_secs, mig_rate
    );
    println!(
        "{:<58} {:>9} {:>12.0}",
        "rekey etcd migrate (its own figure, without process start)",
        "",
        report["rewrites_per_second"].as_f64().unwrap_or(0.0)
    );
    println!(
        "ratio rekey / bare: {:.2} (target >= 0.80: {})",
        mig_rate / bare_rate,
        if mig_rate / bare_rate >= 0.8 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "peak RSS of rekey: {rss_tenth} KiB at {tenth} objects, {rss_all} KiB at {total} (of {} stored)",
        tenth + 2 * total
    );
}
