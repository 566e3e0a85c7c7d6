//! Connection exhaustion, metric labels and log flooding (issue 17), through
//! the real binary: idle pre-TLS and slow role-less clients holding
//! `max_connections` do not keep real clients out; a peer is held to
//! `max_connections_per_peer`; `header_read_timeout` closes a slow head;
//! made-up methods and paths do not grow `/metrics`; refused connections
//! are logged once per peer, then counted.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rekey_integration::{
    api::{Pki, Serve, certificate_toml},
    pg::fresh_db,
    wait::{Text, eventually},
};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tokio_util::sync::CancellationToken;

use super::hostile::{plain, port, tls_client};

const WEB: &str = "cert/default/web-tls";

async fn server(api_extra: &str) -> (rekey_integration::pg::TestDb, Pki, Serve) {
    let db = fresh_db().await;
    let pki = Pki::new();
    let certs = certificate_toml(WEB, "ecdsa-p256", "24h", &pki.dir.path().join("sink-web"));
    let serve = Serve::start(&db, &pki, api_extra, &certs).await;
    (db, pki, serve)
}

/// A TCP connection to `to` from the loopback address `from` (another peer).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Whether the server has closed `s` (EOF or reset), without waiting.
fn closed(s: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// The value of the series `name{labels}` in a Prometheus text page.
fn metric(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_page(serve: &Serve) -> String {
    reqwest::get(format!("{}/metrics", serve.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until the API listener has `n` open connections.
async fn wait_open(serve: &Serve, n: f64) {
    eventually(
        &format!("{n} open connections on the API listener"),
        Duration::from_secs(60),
        async || {
            let page = metrics_page(serve).await;
            let open = metric(&page, "rekey_api_open_connections", &["listener=\"api\""]);
            if open == Some(n) { Ok(()) } else { Err(open) }
        },
    )
    .await;
}

/// `n` real requests (a new connection and handshake each): how many succeeded.
async fn real_requests(pki: &Pki, serve: &Serve, n: usize) -> usize {
    let client = pki.client_with_pool(Some(pki.client_files("operator")), 0);
    let mut ok = 0;
    for _ in 0..n {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            client.get(format!("{}/v1/credentials", serve.url)).send(),
        )
        .await;
        if let Ok(Ok(r)) = r
            && r.status() == 200
        {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn idle_pre_tls_connections_holding_every_slot_do_not_keep_real_clients_out() {
    let (_db, pki, serve) = server("max_connections = 100").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port(&serve.url)));
    let stop = CancellationToken::new();
    let closed_by_server = Arc::new(AtomicU64::new(0));
    // 100 clients from another address that connect and never send a byte,
    // reconnecting whenever the server closes them.
    let attackers: Vec<_> = (0..100)
        .map(|_| {
            let (stop, count) = (stop.clone(), closed_by_server.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let Ok(mut s) = connect_from([127, 0, 0, 2], addr).await else {
                        continue;
                    };
                    let mut buf = [0u8; 16];
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = s.read(&mut buf) => { count.fetch_add(1, Ordering::Relaxed); }
                    }
                }
            })
        })
        .collect();
    wait_open(&serve, 100.0).await;
    let ok = real_requests(&pki, &serve, 20).await;
    stop.cancel();
    for a in attackers {
        a.await.unwrap();
    }
    assert!(ok >= 16, "only {ok} of 20 real requests succeeded");
    // It looked: the attackers were holding the slots, and made room.
    assert!(closed_by_server.load(Ordering::Relaxed) >= 20);
    let page = metrics_page(&serve).await;
    assert!(
        metric(
            &page,
            "rekey_api_connections_refused_total",
            &["reason=\"evicted\""]
        )
        .unwrap_or(0.0)
            >= 20.0,
        "{page}"
    );
}

#[tokio::test]
async fn slow_clients_without_a_role_holding_every_slot_do_not_keep_real_clients_out() {
    let (_db, pki, serve) = server("max_connections = 40\nheader_read_timeout = \"3s\"").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port(&serve.url)));
    let tls = tokio_rustls::TlsConnector::from(tls_client(&pki, "nobody"));
    let stop = CancellationToken::new();
    // 40 clients with a trusted certificate but no role, sending a request
    // head one byte a second, reconnecting when closed.
    let attackers: Vec<_> = (0..40)
        .map(|_| {
            let (stop, tls) = (stop.clone(), tls.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let Ok(tcp) = connect_from([127, 0, 0, 2], addr).await else {
                        continue;
                    };
                    let Ok(mut s) = tls
                        .connect(ServerName::try_from("localhost").unwrap(), tcp)
                        .await
                    else {
                        continue;
                    };
                    for b in b"GET /v1/credentials HTTP/1.1\r\nhost: localhost\r\n" {
                        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
                            break;
                        }
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            })
        })
        .collect();
    wait_open(&serve, 40.0).await;
    let ok = real_requests(&pki, &serve, 10).await;
    stop.cancel();
    for a in attackers {
        a.await.unwrap();
    }
    assert!(ok >= 8, "only {ok} of 10 real requests succeeded");
}

#[tokio::test]
async fn a_peer_is_held_to_its_limit_and_a_slow_head_times_out() {
    let (_db, pki, serve) =
        server("max_connections_per_peer = 10\nheader_read_timeout = \"1s\"").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port(&serve.url)));
    // 15 silent connections from one peer: the 5 oldest make room.
    let mut conns = Vec::new();
    for _ in 0..15 {
        // Connected one after another: accepted, and admitted, in this order.
        conns.push(connect_from([127, 0, 0, 3], addr).await.unwrap());
    }
    eventually(
        "the 5 oldest connections of the peer closed, the 10 newest open",
        Duration::from_secs(5),
        async || {
            let state: Vec<bool> = conns.iter().map(closed).collect();
            let want: Vec<bool> = (0..15).map(|i| i < 5).collect();
            if state == want { Ok(()) } else { Err(state) }
        },
    )
    .await;
    drop(conns);
    // Another peer is not affected by that one's limit.
    assert_eq!(real_requests(&pki, &serve, 1).await, 1);

    // A head that never ends is closed after header_read_timeout.
    let tls = tokio_rustls::TlsConnector::from(tls_client(&pki, "operator"));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: local")
        .await
        .unwrap();
    s.flush().await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server to close a connection whose head never ends:\n{}",
        plain(&serve.log())
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_metrics() {
    let (_db, pki, serve) = server("").await;
    let viewer = pki.client("viewer");
    let plain_http = reqwest::Client::new();
    let send_all = async || {
        for i in 0..100 {
            let method =
                reqwest::Method::from_bytes(format!("M{i}{}", "X".repeat(2000)).as_bytes())
                    .unwrap();
            for (client, base) in [(&viewer, &serve.url), (&plain_http, &serve.metrics_url)] {
                let _ = client
                    .request(method.clone(), format!("{base}/healthz"))
                    .send()
                    .await
                    .unwrap();
                let _ = client
                    .get(format!("{base}/made-up/{i}/{}", "p".repeat(500)))
                    .send()
                    .await
                    .unwrap();
            }
        }
    };
    send_all().await;
    // (The first scrape's own series appear with the second.)
    metrics_page(&serve).await;
    let before = metrics_page(&serve).await;
    send_all().await;
    let after = metrics_page(&serve).await;
    // It looked: the requests were counted, under the fixed labels.
    let other = metric(&after, "rekey_api_requests_total", &["method=\"other\""]);
    assert!(other.is_some_and(|n| n >= 100.0), "{after}");
    assert!(metric(&after, "rekey_api_requests_total", &["route=\"unmatched\""]).is_some());
    assert!(
        !after.contains("XXXX") && !after.contains("made-up"),
        "a label from a request"
    );
    // The second batch of 400 made-up requests added no series of its own
    // (only counts and sums changed). Only the API's own series are compared:
    // those are the ones whose labels a request could reach, while the engine
    // may add series of its own meanwhile on a loaded machine.
    let api_lines = |page: &str| -> Vec<String> {
        page.lines()
            .filter(|l| l.starts_with("rekey_api_"))
            .map(|l| l.rsplit_once(' ').map_or(l, |(k, _)| k).to_string())
            .collect()
    };
    let (api_before, api_after) = (api_lines(&before), api_lines(&after));
    assert!(
        !api_before.is_empty(),
        "the API's series were read: {before}"
    );
    let added: Vec<&String> = api_after
        .iter()
        .filter(|k| !api_before.contains(k))
        .collect();
    assert!(added.is_empty(), "{added:#?}");
    let size = |keys: &[String]| keys.iter().map(String::len).sum::<usize>();
    assert_eq!(size(&api_after), size(&api_before));
}

#[tokio::test]
async fn refused_connections_are_logged_once_per_peer_then_counted() {
    let (_db, _pki, serve) = server("").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port(&serve.url)));
    for _ in 0..300 {
        let mut s = connect_from([127, 0, 0, 4], addr).await.unwrap();
        // Plain HTTP to the TLS port: every one is refused.
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    }
    eventually(
        "300 TLS refusals counted",
        Duration::from_secs(10),
        async || {
            let page = metrics_page(&serve).await;
            let n = metric(
                &page,
                "rekey_api_connections_refused_total",
                &["listener=\"api\"", "reason=\"tls\""],
            );
            if n.is_some_and(|n| n >= 300.0) {
                Ok(())
            } else {
                Err(n)
            }
        },
    )
    .await;
    let log = plain(&serve.log());
    let lines = log
        .lines()
        .filter(|l| l.contains("refused") && l.contains("127.0.0.4"))
        .count();
    assert_eq!(lines, 1, "{:?}", Text(log));
}
