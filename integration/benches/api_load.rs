//! Admin API under load: 64 concurrent clients against a real `rekey serve`
//! (release build) holding 1,000 credentials.
//!
//! Measured in one run, each beside its baseline:
//! - `GET /v1/credentials` over mutual TLS with keep-alive vs the same GET
//!   over plain HTTP (a second `rekey serve` with `insecure_plain_http`);
//! - `POST /v1/credentials/{name}/rotate` (no wait) over mutual TLS;
//! - new connections per second: a full mTLS handshake per request vs a
//!   plain TCP connect per request (`GET /healthz`).
//!
//! Run: `cargo build --release -p rekey --bins && cargo bench -p rekey-integration --bench api_load`
//! (`REKEY_BENCH_SECS` sets the seconds per measurement, default 10).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rekey_integration::{
    api::{Pki, Serve, certificate_toml, enc},
    pg::fresh_db,
};

const CLIENTS: usize = 64;
const CREDENTIALS: usize = 1000;

struct Figures {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// Runs `CLIENTS` loops of `call` for `secs` after a short warm-up.
async fn load<F, Fut>(secs: u64, make_client: impl Fn() -> reqwest::Client, call: F) -> Figures
where
    F: Fn(reqwest::Client, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let counter = Arc::new(AtomicUsize::new(0));
    let warmup = Duration::from_secs(2);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = make_client();
        let call = call.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let ok = call(client.clone(), n).await;
                let t1 = Instant::now();
                if t0 >= measure_from && t1 <= end {
                    if ok {
                        lat.push((t1 - t0).as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        latencies_us.extend(l);
        errors += e;
    }
    latencies_us.sort_unstable();
    Figures {
        requests: latencies_us.len(),
        errors,
        elapsed: Duration::from_secs(secs),
        latencies_us,
    }
}

fn row(label: &str, f: &Figures) {
    println!(
        "{label:<44} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} ok, {} errors)",
        f.rate(),
        f.pct(0.50),
        f.pct(0.99),
        f.requests,
        f.errors
    );
}

fn main() {
    let secs: u64 = std::env::var("REKEY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(secs));
}

async fn bench(secs: u64) {
    let db = fresh_db().await;
    let pki = Pki::new();
    let mut certs = String::new();
    let names: Vec<String> = (0..CREDENTIALS)
        .map(|i| format!("cert/bench-{}/svc-{i:04}", i % 20))
        .collect();
    for n in &names {
        let dir = pki.dir.path().join("sinks").join(n.replace('/', "_"));
        certs.push_str(&certificate_toml(n, "ecdsa-p256", "24h", &dir));
    }
    let limits = "max_concurrent_requests = 1024\n";
    let tls = Serve::start(&db, &pki, limits, &certs).await;
    let plain = Serve::start(
        &db,
        &pki,
        &format!("{limits}insecure_plain_http = true\n"),
        &certs,
    )
    .await;
    // Wait for the engine to issue every credential once.
    let t = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM credentials WHERE current_version IS NOT NULL",
        )
        .fetch_one(db.pool())
        .await
        .expect("count");
        if n as usize == CREDENTIALS {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "only {n} issued");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (cert, key) = pki.client_files("operator");
    let mtls = || pki.client_with_pool(Some((cert.clone(), key.clone())), usize::MAX);
    let size = mtls()
        .get(format!("{}/v1/credentials", tls.url))
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body")
        .len();
    println!(
        "\napi_load: {CLIENTS} clients, {CREDENTIALS} credentials ({} KiB per list), {secs} s per row, release build, {} cores\n",
        size / 1024,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let http1_plain = || {
        reqwest::Client::builder()
            .http1_only()
            .build()
            .expect("client")
    };

    let get_url = Arc::new(format!("{}/v1/credentials", tls.url));
    let u = get_url.clone();
    let get_tls = load(secs, mtls, move |c, _| {
        let u = u.clone();
        async move {
            match c.get(u.as_str()).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    row("GET /v1/credentials, mTLS, keep-alive", &get_tls);

    let plain_url = Arc::new(format!("{}/v1/credentials", plain.url));
    let get_plain = load(secs, http1_plain, move |c, _| {
        let u = plain_url.clone();
        async move {
            match c.get(u.as_str()).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    row("GET /v1/credentials, plain HTTP (baseline)", &get_plain);
    println!(
        "{:<44} throughput {:+.1}%, p50 {:+.1}%, p99 {:+.1}%",
        "  TLS cost vs plain",
        (get_tls.rate() / get_plain.rate() - 1.0) * 100.0,
        (get_tls.pct(0.5) / get_plain.pct(0.5) - 1.0) * 100.0,
        (get_tls.pct(0.99) / get_plain.pct(0.99) - 1.0) * 100.0,
    );

    let base = Arc::new(tls.url.clone());
    let names = Arc::new(names);
    let rotate = load(secs, mtls, move |c, n| {
        let url = format!(
            "{}/v1/credentials/{}/rotate",
            base,
            enc(&names[n % names.len()])
        );
        async move {
            match c.post(url).send().await {
                Ok(r) => r.status().as_u16() == 202 && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    row("POST .../rotate (no wait), mTLS, keep-alive", &rotate);
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM rotations WHERE trigger = 'manual'")
        .fetch_one(db.pool())
        .await
        .expect("count");
    println!("{:<44} {queued} manual rotations queued in total", "");

    // Let the engine drain the queue so it does not skew the connection figures.
    let t = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rotations WHERE status IN ('queued', 'running')",
        )
        .fetch_one(db.pool())
        .await
        .expect("count");
        if open == 0 || t.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let fresh_tls = || {
        // No idle connections kept: every request is a new TCP + mTLS handshake.
        pki.client_with_pool(Some((cert.clone(), key.clone())), 0)
    };
    let hz = Arc::new(format!("{}/healthz", tls.url));
    let handshakes = load(secs, fresh_tls, move |c, _| {
        let u = hz.clone();
        async move {
            match c.get(u.as_str()).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    row("new connection + mTLS handshake per request", &handshakes);
    let hz_plain = Arc::new(format!("{}/healthz", plain.url));
    let connects = load(
        secs,
        || {
            reqwest::Client::builder()
                .http1_only()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client")
        },
        move |c, _| {
            let u = hz_plain.clone();
            async move {
                match c.get(u.as_str()).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    row("new plain TCP connection per request (baseline)", &connects);
    println!(
        "\ntargets: GET p99 < 20 ms ({}), TLS overhead on kept-alive connections < 30% ({})",
        if get_tls.pct(0.99) < 20.0 {
            "met"
        } else {
            "NOT met"
        },
        if get_tls.rate() >= get_plain.rate() * 0.7 && get_tls.pct(0.5) <= get_plain.pct(0.5) * 1.3
        {
            "met"
        } else {
            "NOT met"
        }
    );
}
