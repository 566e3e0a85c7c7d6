//! Rotations per second through `rekey serve` (release binary) for 10,000
//! TLS Secrets published to the API stand-in.
//!
//! Baseline (same run): the same 10,000 certificates published to file
//! sinks, so the figure isolates what the kubernetes-secret sink costs
//! (get + resourceVersion-checked replace per Secret, over TLS).
//! The rate is measured over the middle 80% of the wave of first issuances
//! (each one a full rotation: key, certificate, publish, commit).
//!
//!   cargo build --release -p rekey --bins
//!   cargo bench -p rekey-integration --bench kube_rotation
//!   REKEY_BENCH_SECRETS=1000 cargo bench ... (smaller)

use std::time::{Duration, Instant};

use rekey_integration::{
    kube::{KubeStandIn, Options},
    serve::Scenario,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    rate: f64,
    total: Duration,
}

async fn run(n: usize, kube: bool) -> Run {
    let s = Scenario::new().await;
    let k = kube.then(|| {
        let k = KubeStandIn::start_with(Options {
            workers: 2,
            ..Options::default()
        });
        k.add_namespace("bench");
        k
    });
    let mut config = s.config_head("max_jitter = \"0s\"");
    if let Some(k) = &k {
        config.push_str(&format!(
            "[kubernetes]\nkubeconfig = \"{}\"\n\n",
            k.kubeconfig().display()
        ));
    }
    for i in 0..n {
        let sink = if kube {
            format!("{{ kind = \"kubernetes-secret\", namespace = \"bench\", name = \"c{i}\" }}")
        } else {
            format!(
                "{{ kind = \"file\", dir = \"{}\" }}",
                s.path(&format!("sinks/c{i}")).display()
            )
        };
        config.push_str(&format!(
            "[[certificate]]\nname = \"cert/bench/c{i}\"\ndns_names = [\"c{i}.bench.svc\"]\nlifetime = \"1h\"\nsink = {sink}\n\n"
        ));
    }
    let path = s.write_config("rekey.toml", &config);
    let start = Instant::now();
    let mut server = s.serve(&path, &[("REKEY_LOG", "warn")]);
    let (lo, hi) = (n / 10, n * 9 / 10);
    let (mut t_lo, mut t_hi) = (None, None);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM credentials WHERE current_version IS NOT NULL",
        )
        .fetch_one(s.db.pool())
        .await
        .expect("count");
        let done = done as usize;
        if t_lo.is_none() && done >= lo {
            t_lo = Some(Instant::now());
        }
        if t_hi.is_none() && done >= hi {
            t_hi = Some(Instant::now());
        }
        if done >= n {
            break;
        }
        assert!(
            matches!(server.child.try_wait(), Ok(None)),
            "rekey serve exited:\n{}",
            server.log()
        );
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "stalled at {done} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed();
    server.terminate(Duration::from_secs(20));
    if let Some(k) = &k {
        let published = k
            .list("Secret", Some("bench"))
            .iter()
            .filter(|s| s["metadata"]["annotations"]["rekey.io/version"].is_string())
            .count();
        assert_eq!(published, n, "every Secret carries its version");
        assert!(k.denied().is_empty());
    }
    let window = t_hi.expect("90%") - t_lo.expect("10%");
    Run {
        rate: (hi - lo) as f64 / window.as_secs_f64(),
        total,
    }
}

fn main() {
    rekey::install_crypto_provider();
    let n = env_or("REKEY_BENCH_SECRETS", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        eprintln!("kube_rotation: {n} certificates");
        let base = run(n, false).await;
        let ours = run(n, true).await;
        println!("rotations per second, {n} TLS certificates (ECDSA P-256), rekey serve (release)");
        println!(
            "{:<28} {:>18} {:>18}",
            "", "kubernetes-secret", "baseline: file"
        );
        println!(
            "{:<28} {:>18.0} {:>18.0}",
            "rotations/s (middle 80%)", ours.rate, base.rate
        );
        println!(
            "{:<28} {:>17.1}s {:>17.1}s",
            "wall time incl. start-up",
            ours.total.as_secs_f64(),
            base.total.as_secs_f64()
        );
    });
}
