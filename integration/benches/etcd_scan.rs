//! Benchmark: scanning Secrets in a real etcd.
//!
//! Loads `BENCH_VALUES` (default 100,000) Secrets of about 2 KiB, aesgcm
//! encrypted by the independent encoder, into a fresh etcd; then, in the same
//! run and interleaved, times
//!
//! - `etcdctl get --prefix /registry/secrets/ -w json` (the baseline dump),
//! - `rekey etcd verify --sample 0` (classification only),
//! - `rekey etcd verify` (every value decrypted and checked),
//!
//! and reports values/s for each plus the peak RSS (GNU time `%M`) of each
//! over a tenth of the values and over all of them.
//!
//! Run: `cargo build --release -p rekey --bins && cargo bench -p rekey-integration --bench etcd_scan`
//! (`REKEY_BIN` picks another binary; `BENCH_VALUES`, `BENCH_REPS` resize it).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use rekey_integration::{bin::rekey_bin, etcd::Etcd, k8s_values};
use serde_json::{Value, json};

const GCM1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
/// Bytes of random secret data per object: the stored value is about 2 KiB.
const FILLER: usize = 1900;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Wall seconds and peak RSS (KiB) of a command, through GNU time.
fn measure(cmd: Command, rss_file: &Path) -> (f64, u64) {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
        .collect();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(rss_file)
        .arg(program)
        .args(args)
        .envs(envs)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = timed
        .output()
        .expect("running /usr/bin/time (apt-get install -y time)");
    let secs = start.elapsed().as_secs_f64();
    // rekey exits 1 on findings; only a crash or bad input is a failure here.
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "{:?} failed ({code}): {}",
        timed,
        String::from_utf8_lossy(&out.stderr)
    );
    let rss = std::fs::read_to_string(rss_file)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    (secs, rss)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    rekey::install_crypto_provider();
    let total = env_or("BENCH_VALUES", 100_000);
    let reps = env_or("BENCH_REPS", 3).max(1);
    let small = total / 10;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("enc.yaml");
    std::fs::write(
        &config,
        format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - {{name: k1, secret: {GCM1}}}\n      - identity: {{}}\n"),
    )
    .expect("config");

    eprintln!("loading {total} Secrets of ~2 KiB into etcd...");
    let load_start = Instant::now();
    let client = rt
        .block_on(rekey::etcd::client::connect(&etcd.config()))
        .expect("connect");
    let mut bytes = 0usize;
    for chunk_start in (0..total).step_by(10_000) {
        let chunk_end = (chunk_start + 10_000).min(total);
        let reqs: Vec<Value> = (chunk_start..chunk_end)
            .map(|i| {
                let ns = if i < small { "small" } else { "big" };
                json!({"etcd_key": format!("/registry/secrets/{ns}/s{i:07}"), "format": "aesgcm",
                       "key_name": "k1", "secret": GCM1, "name": format!("s{i:07}"),
                       "namespace": ns, "filler": FILLER})
            })
            .collect();
        let values = k8s_values::encode(&reqs);
        bytes += values.iter().map(Vec::len).sum::<usize>();
        let kvs = reqs
            .iter()
            .zip(values)
            .map(|(r, v)| (r["etcd_key"].as_str().expect("key").to_string(), v))
            .collect();
        rt.block_on(k8s_values::load(&client, kvs));
    }
    eprintln!(
        "loaded {total} values, {:.1} MiB (mean {} B) in {:.1}s",
        bytes as f64 / (1 << 20) as f64,
        bytes / total.max(1),
        load_start.elapsed().as_secs_f64()
    );

    let bin = rekey_bin();
    eprintln!("rekey binary: {}", bin.display());
    let rss_file = dir.path().join("rss");
    let etcdctl = |prefix: &str| {
        let mut c = etcd.etcdctl();
        c.args(["get", "--prefix", prefix, "-w", "json"]);
        c
    };
    let verify = |prefix: &str, sample: Option<&str>| {
        let mut c = Command::new(&bin);
        c.args(["etcd", "verify", "--json", "--encryption-config"])
            .arg(&config)
            .args(["--endpoints", &etcd.endpoint, "--etcd-prefix", prefix])
            .env("REKEY_LOG", "warn");
        if let Some(n) = sample {
            c.args(["--sample", n]);
        }
        c
    };
    let all = "/registry/secrets/";
    let tenth = "/registry/secrets/small/";
    // Warm etcd's page cache once.
    measure(etcdctl(all), &rss_file);

    let names = [
        "etcdctl get --prefix -w json (baseline)",
        "rekey etcd verify --sample 0 (classify)",
        "rekey etcd verify (decrypt all)",
    ];
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut rss_all = [0u64; 3];
    let mut rss_tenth = [0u64; 3];
    for _ in 0..reps {
        for (i, t) in times.iter_mut().enumerate() {
            let cmd = match i {
                0 => etcdctl(all),
                1 => verify(all, Some("0")),
                _ => verify(all, None),
            };
            let (secs, rss) = measure(cmd, &rss_file);
            t.push(secs);
            rss_all[i] = rss_all[i].max(rss);
        }
    }
    for (i, r) in rss_tenth.iter_mut().enumerate() {
        let cmd = match i {
            0 => etcdctl(tenth),
            1 => verify(tenth, Some("0")),
            _ => verify(tenth, None),
        };
        *r = measure(cmd, &rss_file).1;
    }

    println!();
    println!(
        "etcd scan benchmark: {total} Secrets (~2 KiB, aesgcm), etcd 3.4 on loopback, median of {reps}"
    );
    println!(
        "{:<42} {:>10} {:>12} {:>14} {:>14}",
        "", "seconds", "values/s", "peak RSS 10%", "peak RSS 100%"
    );
    for i in 0..3 {
        let secs = median(times[i].clone());
        println!(
            "{:<42} {:>10.2} {:>12.0} {:>11} KiB {:>11} KiB",
            names[i],
            secs,
            total as f64 / secs,
            rss_tenth[i],
            rss_all[i]
        );
    }
    let base = median(times[0].clone());
    println!(
        "classification / etcdctl speed: {:.2}x; full decryption / etcdctl speed: {:.2}x",
        base / median(times[1].clone()),
        base / median(times[2].clone())
    );
}
