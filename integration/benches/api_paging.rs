//! Paged inventory under load: `GET /v1/credentials?limit=100` with 100,000
//! credentials in Postgres, 64 concurrent clients, against a real
//! `rekey serve` (release build) over mutual TLS, beside the same requests
//! over plain HTTP (a second `rekey serve` with `insecure_plain_http` on the
//! same database) in the same run.
//!
//! ```text
//!  Postgres: 100,000 rows (one INSERT ... SELECT generate_series)
//!     ├── rekey serve A: admin API over mutual TLS
//!     └── rekey serve B: admin API over plain HTTP (baseline)
//!  64 client tasks, one keep-alive HTTP/1.1 connection each, closed loop:
//!     start at a random page (a first page, or a `continue` token collected
//!     beforehand anywhere in the list), follow `continue` for 10 pages, repeat
//! ```
//!
//! Also: the first page of 500 with a single fresh client (new connection,
//! mutual-TLS handshake, one request: what `rekey status --server` shows
//! first), and the page query's own cost in Postgres at the start, middle
//! and end of the list.
//!
//! Run: `cargo build --release -p rekey --bins && cargo bench -p rekey-integration --bench api_paging`
//! (`REKEY_BENCH_SECS` sets the seconds per measurement, default 10).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rekey_integration::{
    api::{Pki, Serve},
    pg::fresh_db,
};

const CLIENTS: usize = 64;
const CREDENTIALS: i32 = 100_000;
const PAGE: usize = 100;
/// Pages a client follows before starting again somewhere else.
const WALK: usize = 10;

struct Figures {
    latencies_us: Vec<u64>,
    errors: usize,
    secs: u64,
    /// Every request sent, warm-up included (for CPU per request).
    total: usize,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.secs as f64
    }
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// The `continue` of a list response (the last member, so found from the end).
fn continue_of(body: &[u8]) -> Option<String> {
    const FIELD: &[u8] = b"\"continue\":";
    let at = body.windows(FIELD.len()).rposition(|w| w == FIELD)?;
    serde_json::Deserializer::from_slice(&body[at + FIELD.len()..])
        .into_iter::<Option<String>>()
        .next()?
        .ok()?
}

/// GET one page of `PAGE`; `Some(continue)` if it succeeded.
async fn get_page(c: &reqwest::Client, base: &str, token: Option<&str>) -> Option<Option<String>> {
    get_page_of(c, base, PAGE, token).await
}

/// GET one page of `limit`; `Some(continue)` if it succeeded.
async fn get_page_of(
    c: &reqwest::Client,
    base: &str,
    limit: usize,
    token: Option<&str>,
) -> Option<Option<String>> {
    let mut req = c.get(base).query(&[("limit", limit.to_string())]);
    if let Some(t) = token {
        req = req.query(&[("continue", t)]);
    }
    let r = req.send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let body = r.bytes().await.ok()?;
    Some(continue_of(&body))
}

/// `CLIENTS` loops for `secs` after a 2 s warm-up, each walking `WALK`
/// pages from a random start among `starts` (`None`: a first page). Closed
/// loops (the next request as soon as the answer is in) when `every` is
/// `None`; else each client sends one request every `every` (spread evenly),
/// and latency counts from when the request was due, so a server that falls
/// behind is not flattered.
async fn load(
    secs: u64,
    url: Arc<String>,
    starts: Arc<Vec<Option<String>>>,
    every: Option<Duration>,
    make_client: impl Fn() -> reqwest::Client,
) -> Figures {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(2);
    let end = measure_from + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let client = make_client();
        let url = url.clone();
        let starts = starts.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut total = 0;
            let mut pick = n.wrapping_mul(2_654_435_761);
            let mut token: Option<String> = None;
            let mut left = 0;
            let mut due = every.map(|e| start + e * n as u32 / CLIENTS as u32);
            loop {
                if left == 0 {
                    pick = pick.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    token = starts[(pick >> 17) % starts.len()].clone();
                    left = WALK;
                }
                let t0 = match (due.as_mut(), every) {
                    (Some(d), Some(e)) => {
                        tokio::time::sleep_until((*d).into()).await;
                        let t = *d;
                        *d += e;
                        t
                    }
                    _ => Instant::now(),
                };
                if t0 >= end {
                    break;
                }
                let got = get_page(&client, &url, token.as_deref()).await;
                let t1 = Instant::now();
                total += 1;
                let measured = t0 >= measure_from && t1 <= end;
                match got {
                    Some(next) => {
                        if measured {
                            lat.push((t1 - t0).as_micros() as u64);
                        }
                        left -= 1;
                        token = next;
                        if token.is_none() {
                            left = 0;
                        }
                    }
                    None => {
                        if measured {
                            errors += 1;
                        }
                        left = 0;
                    }
                }
            }
            (lat, errors, total)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    let mut total = 0;
    for t in tasks {
        let (l, e, n) = t.await.expect("load task");
        latencies_us.extend(l);
        errors += e;
        total += n;
    }
    latencies_us.sort_unstable();
    Figures {
        latencies_us,
        errors,
        secs,
        total,
    }
}

/// CPU time (user + system, in clock ticks) of the processes whose command
/// line contains `needle`, read from /proc.
fn cpu_ticks(needle: &str) -> u64 {
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let path = e.path();
        let Ok(cmd) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains(needle) {
            continue;
        }
        total += self_ticks(&path.join("stat"));
    }
    total
}

/// utime + stime of one /proc/PID/stat.
fn self_ticks(stat: &std::path::Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return 0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// CPU used by the server, Postgres (this database's backends) and this
/// process while `f` runs, per request, in microseconds.
struct Cpu {
    server: u64,
    postgres: u64,
    client: u64,
}

impl Cpu {
    fn take(server: &str, db: &str) -> Self {
        Self {
            server: cpu_ticks(server),
            postgres: cpu_ticks(&format!("postgres: postgres {db} ")),
            client: self_ticks(std::path::Path::new("/proc/self/stat")),
        }
    }

    fn per_request(&self, after: &Self, requests: usize) -> String {
        // Linux reports 100 ticks a second on every platform rekey runs on.
        let us = |a: u64, b: u64| (b - a) as f64 * 10_000.0 / requests.max(1) as f64;
        format!(
            "CPU per request: server {:.0} µs, Postgres {:.0} µs, clients {:.0} µs",
            us(self.server, after.server),
            us(self.postgres, after.postgres),
            us(self.client, after.client)
        )
    }
}

fn row(label: &str, f: &Figures) {
    println!(
        "{label:<46} {:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  ({} ok, {} errors)",
        f.rate(),
        f.pct(0.50),
        f.pct(0.99),
        f.pct(0.999),
        f.latencies_us.len(),
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

    // 100,000 credentials in one statement: unmanaged (the engine leaves
    // them alone), with the times a tracked certificate has.
    let t = Instant::now();
    sqlx::query(
        "INSERT INTO credentials (name, kind, source, managed, not_before, not_after,
                                  next_rotation_at, next_rotation_reason)
         SELECT 'cert/ns-' || lpad((i % 100)::text, 2, '0') || '/svc-' || lpad(i::text, 6, '0'),
                'certificate', 'discovered', false,
                now() - interval '1 hour', now() + interval '23 hours',
                now() + interval '15 hours', 'renew_fraction'
         FROM generate_series(1, $1) i",
    )
    .bind(CREDENTIALS)
    .execute(db.pool())
    .await
    .expect("insert");
    sqlx::query("VACUUM ANALYZE credentials")
        .execute(db.pool())
        .await
        .expect("vacuum");
    let inserted = t.elapsed();

    let limits = "max_concurrent_requests = 1024\n";
    let tls = Serve::start(&db, &pki, limits, "").await;
    let plain = Serve::start(
        &db,
        &pki,
        &format!("{limits}insecure_plain_http = true\n"),
        "",
    )
    .await;
    let (cert, key) = pki.client_files("viewer");
    let mtls = || pki.client_with_pool(Some((cert.clone(), key.clone())), usize::MAX);
    let http1_plain = || {
        reqwest::Client::builder()
            .http1_only()
            .build()
            .expect("client")
    };
    let tls_url = Arc::new(format!("{}/v1/credentials", tls.url));
    let plain_url = Arc::new(format!("{}/v1/credentials", plain.url));

    // The first page of 500 with a fresh client: connect, handshake, one GET.
    let mut first = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let c = pki.client_with_pool(Some((cert.clone(), key.clone())), 0);
        let t = Instant::now();
        let r = c
            .get(tls_url.as_str())
            .query(&[("limit", "500")])
            .send()
            .await
            .expect("GET");
        assert!(r.status().is_success());
        size = r.bytes().await.expect("body").len();
        first.push(t.elapsed());
    }
    first.sort();

    // `rekey status --server` itself, the release binary: process start,
    // handshake, first page printed (its first table row on stdout), then
    // every page to the end.
    let mut cli_first = Vec::new();
    let mut cli_all = Vec::new();
    for _ in 0..5 {
        let mut cmd = tls.cli(&pki, Some("viewer"));
        cmd.arg("status")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let t = Instant::now();
        let mut child = cmd.spawn().expect("rekey status --server");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let mut rows = 0usize;
        let mut first_row = None;
        while std::io::BufRead::read_line(&mut out, &mut line).expect("read") > 0 {
            if line.starts_with("cert/") {
                rows += 1;
                first_row.get_or_insert_with(|| t.elapsed());
            }
            line.clear();
        }
        let _ = child.wait();
        assert_eq!(
            rows, CREDENTIALS as usize,
            "rekey status --server printed every credential"
        );
        cli_first.push(first_row.expect("a row"));
        cli_all.push(t.elapsed());
    }
    cli_first.sort();
    cli_all.sort();

    // Every page's token (one walk through the list), so clients can start anywhere.
    let t = Instant::now();
    let walker = mtls();
    let mut tokens: Vec<Option<String>> = vec![None];
    let mut next = None;
    loop {
        next = get_page(&walker, &tls_url, next.as_deref())
            .await
            .expect("page");
        match &next {
            Some(tk) => tokens.push(Some(tk.clone())),
            None => break,
        }
    }
    let walk = t.elapsed();
    assert_eq!(tokens.len(), CREDENTIALS as usize / PAGE, "pages");
    // The whole inventory as `rekey status --server` fetches it: pages of 500.
    let t = Instant::now();
    let status_client = pki.client_with_pool(Some((cert.clone(), key.clone())), usize::MAX);
    let mut next = None;
    let mut status_pages = 0;
    loop {
        next = get_page_of(&status_client, &tls_url, 500, next.as_deref())
            .await
            .expect("page");
        status_pages += 1;
        if next.is_none() {
            break;
        }
    }
    let status_walk = t.elapsed();
    // A first page for every ten pages elsewhere.
    let mut starts: Vec<Option<String>> = vec![None; tokens.len() / 10];
    starts.extend(tokens.iter().skip(1).cloned());
    let starts = Arc::new(starts);

    // The page query's own cost, start / middle / end of the list.
    let mut explain = Vec::new();
    for after in ["", "cert/ns-50/svc-000050", "cert/ns-99/svc-099899"] {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, TIMING OFF) SELECT name, kind, not_before, not_after, next_rotation_at,
                 next_rotation_reason, source, managed, schedule, current_version, failures, last_error
             FROM credentials WHERE removed_at IS NULL AND name > '{after}' ORDER BY name LIMIT 101"
        )))
        .fetch_all(db.pool())
        .await
        .expect("explain");
        let exec = plan
            .iter()
            .find_map(|l| l.strip_prefix("Execution Time: "))
            .unwrap_or("?")
            .to_string();
        let scan = plan
            .iter()
            .find(|l| l.contains("Scan"))
            .and_then(|l| l.trim().trim_start_matches("->").trim().split("  (").next())
            .unwrap_or_default()
            .to_string();
        explain.push(format!("after `{after}`: {exec} ({scan})"));
    }

    // What the unpaged list's rendered-body cache checked on every request
    // (row count and sum of xmin), at this size: a whole-table scan.
    let t = Instant::now();
    for _ in 0..10 {
        let _: (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(xmin::text::bigint), 0)::bigint FROM credentials",
        )
        .fetch_one(db.pool())
        .await
        .expect("version");
    }
    let version_check = t.elapsed() / 10;

    println!(
        "\napi_paging: {CREDENTIALS} credentials (inserted and analysed in {:.1} s), {CLIENTS} clients, \
         limit={PAGE}, {secs} s per row, release build, {} cores\n",
        inserted.as_secs_f64(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "first page of 500 ({} KiB), fresh client (TCP + mTLS handshake + GET), 20 tries: \
         min {:.1} ms, median {:.1} ms, max {:.1} ms",
        size / 1024,
        first[0].as_secs_f64() * 1e3,
        first[first.len() / 2].as_secs_f64() * 1e3,
        first[first.len() - 1].as_secs_f64() * 1e3,
    );
    println!(
        "`rekey status --server` (release binary, table), 5 runs: first row printed after \
         {:.0} / {:.0} / {:.0} ms (min / median / max), all {CREDENTIALS} rows after {:.2} / {:.2} / {:.2} s",
        cli_first[0].as_secs_f64() * 1e3,
        cli_first[2].as_secs_f64() * 1e3,
        cli_first[4].as_secs_f64() * 1e3,
        cli_all[0].as_secs_f64(),
        cli_all[2].as_secs_f64(),
        cli_all[4].as_secs_f64(),
    );
    println!(
        "one client walking all {} pages of {PAGE} over mTLS: {:.1} s ({:.2} ms a page)",
        tokens.len(),
        walk.as_secs_f64(),
        walk.as_secs_f64() * 1e3 / tokens.len() as f64
    );
    println!(
        "one fresh client fetching all {status_pages} pages of 500 over mTLS (the whole inventory): {:.2} s",
        status_walk.as_secs_f64()
    );
    println!(
        "the former whole-list cache's change check (count + sum of xmin) at this size: {:.1} ms",
        version_check.as_secs_f64() * 1e3
    );
    for e in &explain {
        println!("page query in Postgres, {e}");
    }
    println!();

    let rate: u32 = std::env::var("REKEY_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let every = Duration::from_secs(1) * CLIENTS as u32 / rate;
    let tls_config = tls.config.display().to_string();
    let plain_config = plain.config.display().to_string();
    let before = Cpu::take(&tls_config, &db.name);
    let get_tls = load(secs, tls_url.clone(), starts.clone(), None, mtls).await;
    let after = Cpu::take(&tls_config, &db.name);
    row("GET /v1/credentials?limit=100, mTLS", &get_tls);
    println!("{:<46} {}", "", before.per_request(&after, get_tls.total));
    let before = Cpu::take(&plain_config, &db.name);
    let get_plain = load(secs, plain_url.clone(), starts.clone(), None, http1_plain).await;
    let after = Cpu::take(&plain_config, &db.name);
    row("GET /v1/credentials?limit=100, plain HTTP", &get_plain);
    println!("{:<46} {}", "", before.per_request(&after, get_plain.total));
    println!(
        "{:<46} throughput {:+.1}%, p50 {:+.1}%, p99 {:+.1}%",
        "  TLS cost vs plain",
        (get_tls.rate() / get_plain.rate() - 1.0) * 100.0,
        (get_tls.pct(0.5) / get_plain.pct(0.5) - 1.0) * 100.0,
        (get_tls.pct(0.99) / get_plain.pct(0.99) - 1.0) * 100.0,
    );
    println!(
        "\nthe same {CLIENTS} clients paced: each one request every {} ms, {rate} req/s offered in all",
        every.as_millis()
    );
    let paced_tls = load(secs, tls_url.clone(), starts.clone(), Some(every), mtls).await;
    row("GET /v1/credentials?limit=100, mTLS, paced", &paced_tls);
    let paced_plain = load(
        secs,
        plain_url.clone(),
        starts.clone(),
        Some(every),
        http1_plain,
    )
    .await;
    row("GET /v1/credentials?limit=100, plain, paced", &paced_plain);
    println!(
        "\ntargets: p99 < 20 ms over mTLS: closed loop {}, paced at {rate} req/s {}; first page of 500 < 1 s ({}); `rekey status --server` first page < 1 s ({})",
        if get_tls.pct(0.99) < 20.0 {
            "met"
        } else {
            "NOT met"
        },
        if paced_tls.pct(0.99) < 20.0 {
            "met"
        } else {
            "NOT met"
        },
        if first[first.len() - 1] < Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        },
        if cli_first[4] < Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );
}
