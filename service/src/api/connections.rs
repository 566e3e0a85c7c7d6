//! Which connections a listener keeps: the one admission mechanism of both
//! listeners (the admin API and the plain-HTTP metrics port), after
//! mini-redis's semaphore, grown for hostile clients.
//!
//! ```text
//!  accept ─► Registry::admit(peer)
//!            ├─ peer at max_connections_per_peer ─► close that peer's least useful connection, else refuse
//!            ├─ listener at max_connections ───────► close the least useful connection, else refuse
//!            └─ admitted: a Conn (stage, requests in flight, last progress), tracked until its task ends
//!  per connection: Silent (no ClientHello / no request yet) ─► Handshaking ─► Open (TLS done)
//!                  requests begin and end (the response body dropped) ─► progress
//!  deadlines:      Silent/Handshaking: handshake_timeout from accept
//!                  Open, no request in flight: header_read_timeout from the last progress
//! ```
//!
//! "Least useful" ([`victim`], pure): never a connection with a request in
//! flight; first the ones that have not said anything usable (no complete
//! ClientHello; on plain HTTP no request yet) or whose certificate gives no
//! role (when bearer tokens are not accepted, nothing they send can be
//! allowed); then any other (mid-handshake, handshake done but no request
//! yet, idle keep-alive), the one without progress for longest first. A real
//! client leaves the first group within a round trip and makes progress
//! every request, so idle and unauthenticated connections make room for it.
//!
//! Refusals (TLS failures, limits, timeouts, evictions) are counted in
//! `rekey_api_connections_refused_total{listener,reason}` and logged through
//! [`RefusalLog`]: the first per peer per minute with its reason, then one
//! summary line per peer with counts, so a flood of refused connections
//! writes a bounded number of lines.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// How long one [`RefusalLog`] window lasts.
pub const LOG_WINDOW: Duration = Duration::from_secs(60);

/// Peers logged individually per window (their first refusal); refusals of
/// further peers are only counted and summarised.
const LOG_PEERS_PER_WINDOW: usize = 16;

/// A listener's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at once (`[api].max_connections`).
    pub max_connections: usize,
    /// Open connections from one IP address (`[api].max_connections_per_peer`).
    pub max_per_peer: usize,
    /// From accept to a finished TLS handshake (plain HTTP: to the first request).
    pub handshake_timeout: Duration,
    /// From the last progress (handshake done, a response finished) to the
    /// next request's complete headers (`[api].header_read_timeout`).
    pub header_read_timeout: Duration,
    /// Longest a connection with a request in flight goes without progress
    /// (past the request timeout: a response nobody reads).
    pub busy_timeout: Duration,
}

/// Why a connection was refused or closed (the `reason` label: a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The TLS handshake failed (no or untrusted certificate, garbage).
    Tls,
    /// The handshake (or, on plain HTTP, the first request) took too long.
    HandshakeTimeout,
    /// No complete request headers within `header_read_timeout`.
    HeaderTimeout,
    /// The peer already had `max_connections_per_peer` busy connections.
    PeerLimit,
    /// The listener already had `max_connections` busy connections.
    Full,
    /// Closed to make room for a new connection.
    Evicted,
}

impl Refusal {
    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::HandshakeTimeout => "handshake-timeout",
            Self::HeaderTimeout => "header-timeout",
            Self::PeerLimit => "peer-limit",
            Self::Full => "full",
            Self::Evicted => "evicted",
        }
    }

    const ALL: [Self; 6] = [
        Self::Tls,
        Self::HandshakeTimeout,
        Self::HeaderTimeout,
        Self::PeerLimit,
        Self::Full,
        Self::Evicted,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

const SILENT: u8 = 0;
const HANDSHAKING: u8 = 1;
const OPEN: u8 = 2;

/// One admitted connection's state, updated by its task without locks.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    peer: IpAddr,
    accepted: Instant,
    epoch: Instant,
    stage: AtomicU8,
    in_flight: AtomicU32,
    progress_ms: AtomicU64,
    no_role: AtomicBool,
    close: CancellationToken,
    /// Woken on every change of stage or progress: a deadline may have moved
    /// earlier (the handshake's 10 s give way to `header_read_timeout`).
    changed: tokio::sync::Notify,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// A complete ClientHello arrived.
    pub fn hello(&self) {
        self.stage.store(HANDSHAKING, Ordering::Relaxed);
        self.progress();
    }

    /// The TLS handshake is done; `no_role`: the peer's certificate allows nothing.
    pub fn open(&self, no_role: bool) {
        self.no_role.store(no_role, Ordering::Relaxed);
        self.stage.store(OPEN, Ordering::Relaxed);
        self.progress();
    }

    /// A request begins; it ends when the guard drops (its response body sent or dropped).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.stage.store(OPEN, Ordering::Relaxed);
        self.progress();
        InFlight(self.clone())
    }

    /// Resolves when the registry closed this connection to make room.
    pub async fn evicted(&self) {
        self.close.cancelled().await;
    }

    /// Resolves when the connection has outlived its deadline, with the
    /// reason: the handshake (or first request), or the next request's headers.
    pub async fn expired(&self, limits: &Limits) -> Refusal {
        loop {
            // Registered before the state is read: no change is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = self.now_ms();
            let (deadline, why) = if self.stage.load(Ordering::Relaxed) < OPEN {
                let accepted = self.accepted.duration_since(self.epoch);
                (
                    accepted + limits.handshake_timeout,
                    Refusal::HandshakeTimeout,
                )
            } else {
                let last = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
                if self.in_flight.load(Ordering::Relaxed) > 0 {
                    (last + limits.busy_timeout, Refusal::HeaderTimeout)
                } else {
                    (last + limits.header_read_timeout, Refusal::HeaderTimeout)
                }
            };
            let now = Duration::from_millis(now);
            if now >= deadline {
                return why;
            }
            // Progress and stages move the deadline: look again when this
            // one is due or something changed.
            tokio::select! {
                () = tokio::time::sleep(deadline - now) => {}
                () = changed => {}
            }
        }
    }

    fn view(&self) -> View {
        let stage = self.stage.load(Ordering::Relaxed);
        View {
            id: self.id,
            busy: self.in_flight.load(Ordering::Relaxed) > 0,
            useless: stage == SILENT || (stage == OPEN && self.no_role.load(Ordering::Relaxed)),
            progress_ms: self.progress_ms.load(Ordering::Relaxed),
        }
    }
}

/// A request in flight on a [`Conn`]; ending it is progress.
#[derive(Debug)]
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.progress();
    }
}

/// What [`victim`] weighs of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// The connection.
    pub id: u64,
    /// A request is in flight: never closed to make room.
    pub busy: bool,
    /// Nothing usable said yet (no ClientHello, no request), or a
    /// certificate with no role: closed first.
    pub useless: bool,
    /// When it last made progress (ms on the registry's clock).
    pub progress_ms: u64,
}

/// The connection to close to make room (pure): never a busy one; useless
/// ones first; then the one without progress for longest.
pub fn victim(views: impl IntoIterator<Item = View>) -> Option<u64> {
    views
        .into_iter()
        .filter(|v| !v.busy)
        .min_by_key(|v| (!v.useless, v.progress_ms, v.id))
        .map(|v| v.id)
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Arc<Conn>>,
    per_peer: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Arc<Conn>> {
        let conn = self.conns.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&conn.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&conn.peer);
            }
        }
        Some(conn)
    }
}

/// A listener's open connections.
#[derive(Debug)]
pub struct Registry {
    listener: &'static str,
    limits: Limits,
    epoch: Instant,
    table: Mutex<Table>,
    log: RefusalLog,
}

/// An admitted connection: its slot is freed when this is dropped.
#[derive(Debug)]
pub struct Admitted {
    registry: Arc<Registry>,
    /// The connection's state.
    pub conn: Arc<Conn>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut t) = self.registry.table.lock() {
            t.remove(self.conn.id);
            self.registry.gauge(t.conns.len());
        }
    }
}

impl Registry {
    /// A registry for `listener` (`api` or `metrics`: the metric label).
    pub fn new(listener: &'static str, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            listener,
            limits,
            epoch: Instant::now(),
            table: Mutex::default(),
            log: RefusalLog::new(listener),
        })
    }

    /// The limits it applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn gauge(&self, open: usize) {
        metrics::gauge!("rekey_api_open_connections", "listener" => self.listener).set(open as f64);
    }

    /// Admits a new connection from `peer`, closing the least useful one
    /// (of that peer, or of all) when a limit is reached; refuses it when
    /// every connection in the way has a request in flight.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refusal> {
        let mut evicted = None;
        let admitted = {
            let mut t = self.table.lock().map_err(|_| Refusal::Full)?;
            if t.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.max_per_peer {
                let views = t
                    .conns
                    .values()
                    .filter(|c| c.peer == peer)
                    .map(|c| c.view());
                let id = victim(views).ok_or(Refusal::PeerLimit)?;
                evicted = t.remove(id);
            } else if t.conns.len() >= self.limits.max_connections {
                let id = victim(t.conns.values().map(|c| c.view())).ok_or(Refusal::Full)?;
                evicted = t.remove(id);
            }
            t.next_id += 1;
            let conn = Arc::new(Conn {
                id: t.next_id,
                peer,
                accepted: Instant::now(),
                epoch: self.epoch,
                stage: AtomicU8::new(SILENT),
                in_flight: AtomicU32::new(0),
                progress_ms: AtomicU64::new(0),
                no_role: AtomicBool::new(false),
                close: CancellationToken::new(),
                changed: tokio::sync::Notify::new(),
            });
            conn.progress();
            t.conns.insert(conn.id, conn.clone());
            *t.per_peer.entry(peer).or_default() += 1;
            self.gauge(t.conns.len());
            Admitted {
                registry: self.clone(),
                conn,
            }
        };
        if let Some(old) = evicted {
            old.close.cancel();
            self.refused(
                old.peer,
                Refusal::Evicted,
                &"closed to make room for a new connection",
            );
        }
        Ok(admitted)
    }

    /// Counts and (rate-limited) logs a refused or closed connection.
    pub fn refused(&self, peer: IpAddr, why: Refusal, detail: &dyn std::fmt::Display) {
        metrics::counter!("rekey_api_connections_refused_total", "listener" => self.listener, "reason" => why.as_str())
            .increment(1);
        self.log.note(Instant::now(), peer, why, detail);
    }

    /// Writes the summary of the last window, if it is over (the accept loop
    /// calls this every [`LOG_WINDOW`], so quiet periods are summarised too).
    pub fn flush_log(&self) {
        self.log.flush(Instant::now(), false);
    }
}

/// One log line the [`RefusalLog`] decided to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The first refusal of a peer in a window, with its reason.
    First {
        /// The peer.
        peer: IpAddr,
        /// Why.
        why: Refusal,
        /// The detail (a TLS error, a limit).
        detail: String,
    },
    /// What followed a peer's first refusal in the window.
    Summary {
        /// The peer, or `None` for the peers without a line of their own.
        peer: Option<IpAddr>,
        /// How many peers the line covers.
        peers: usize,
        /// Refusals not logged, by reason.
        counts: Vec<(Refusal, u64)>,
    },
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    /// Peers with a line of their own this window, and what followed it.
    peers: HashMap<IpAddr, [u64; 6]>,
    /// Refusals of the other peers.
    others: [u64; 6],
    other_peers: std::collections::HashSet<IpAddr>,
}

/// Rate-limited, summarised logging of refused connections (pure decisions
/// in [`RefusalLog::decide`] and [`RefusalLog::summarise`]).
#[derive(Debug)]
pub struct RefusalLog {
    listener: &'static str,
    window: Mutex<Window>,
}

impl RefusalLog {
    /// A log for `listener`.
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            window: Mutex::default(),
        }
    }

    fn emit(&self, line: &Line) {
        let listener = self.listener;
        match line {
            Line::First { peer, why, detail } => tracing::warn!(
                %listener, %peer, reason = why.as_str(),
                "refused a connection: {detail} (further refusals from this peer are summarised \
                 once a minute)"
            ),
            Line::Summary {
                peer,
                peers,
                counts,
            } => {
                let total: u64 = counts.iter().map(|(_, n)| n).sum();
                let by: Vec<String> = counts
                    .iter()
                    .map(|(r, n)| format!("{}: {n}", r.as_str()))
                    .collect();
                match peer {
                    Some(peer) => tracing::warn!(
                        %listener, %peer,
                        "refused {total} more connections from this peer in the last minute ({})",
                        by.join(", ")
                    ),
                    None => tracing::warn!(
                        %listener,
                        "refused {total} connections from {peers} other peers in the last minute ({})",
                        by.join(", ")
                    ),
                }
            }
        }
    }

    /// Notes one refusal at `now`: logs it if it is its peer's first in the
    /// window (and few peers have had a line), else counts it.
    pub fn note(&self, now: Instant, peer: IpAddr, why: Refusal, detail: &dyn std::fmt::Display) {
        self.flush(now, false);
        let line = match self.window.lock() {
            Ok(mut w) => Self::decide(&mut w, now, peer, why, detail),
            Err(_) => None,
        };
        if let Some(line) = line {
            self.emit(&line);
        }
    }

    fn decide(
        w: &mut Window,
        now: Instant,
        peer: IpAddr,
        why: Refusal,
        detail: &dyn std::fmt::Display,
    ) -> Option<Line> {
        w.started.get_or_insert(now);
        if let Some(counts) = w.peers.get_mut(&peer) {
            counts[why.index()] += 1;
            return None;
        }
        if w.peers.len() < LOG_PEERS_PER_WINDOW {
            w.peers.insert(peer, [0; 6]);
            let detail = crate::store::audit::bounded(&detail.to_string(), 512);
            return Some(Line::First { peer, why, detail });
        }
        w.others[why.index()] += 1;
        w.other_peers.insert(peer);
        None
    }

    fn summarise(w: &mut Window) -> Vec<Line> {
        let counts = |c: &[u64; 6]| -> Vec<(Refusal, u64)> {
            Refusal::ALL
                .iter()
                .map(|r| (*r, c[r.index()]))
                .filter(|(_, n)| *n > 0)
                .collect()
        };
        let mut lines: Vec<Line> = w
            .peers
            .iter()
            .filter(|(_, c)| c.iter().any(|n| *n > 0))
            .map(|(peer, c)| Line::Summary {
                peer: Some(*peer),
                peers: 1,
                counts: counts(c),
            })
            .collect();
        if w.others.iter().any(|n| *n > 0) {
            lines.push(Line::Summary {
                peer: None,
                peers: w.other_peers.len(),
                counts: counts(&w.others),
            });
        }
        *w = Window::default();
        lines
    }

    /// Ends the window if it is over (or `force`), logging its summary.
    pub fn flush(&self, now: Instant, force: bool) {
        let lines = match self.window.lock() {
            Ok(mut w) => {
                let over = w
                    .started
                    .is_some_and(|s| force || now.duration_since(s) >= LOG_WINDOW);
                if over {
                    Self::summarise(&mut w)
                } else {
                    Vec::new()
                }
            }
            Err(_) => Vec::new(),
        };
        for line in &lines {
            self.emit(line);
        }
    }

    #[cfg(test)]
    fn lines_for(&self, events: &[(u64, IpAddr, Refusal)], t0: Instant) -> Vec<Line> {
        let mut out = Vec::new();
        for (ms, peer, why) in events {
            let now = t0 + Duration::from_millis(*ms);
            let mut w = self.window.lock().unwrap();
            if w.started
                .is_some_and(|s| now.duration_since(s) >= LOG_WINDOW)
            {
                out.extend(Self::summarise(&mut w));
            }
            out.extend(Self::decide(&mut w, now, *peer, *why, &"x"));
        }
        out.extend(Self::summarise(&mut self.window.lock().unwrap()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: u64, busy: bool, useless: bool, progress_ms: u64) -> View {
        View {
            id,
            busy,
            useless,
            progress_ms,
        }
    }

    #[test]
    fn the_least_useful_connection_makes_room() {
        // Busy connections are never closed.
        assert_eq!(victim([v(1, true, true, 0)]), None);
        // Useless first (silent, or a certificate without a role), oldest first.
        assert_eq!(
            victim([
                v(1, false, false, 0),
                v(2, false, true, 50),
                v(3, false, true, 40)
            ]),
            Some(3)
        );
        // Then the one without progress for longest.
        assert_eq!(
            victim([
                v(1, false, false, 30),
                v(2, true, false, 0),
                v(3, false, false, 20)
            ]),
            Some(3)
        );
        assert_eq!(victim([]), None);
    }

    #[test]
    fn limits_admit_evict_and_refuse() {
        let limits = Limits {
            max_connections: 3,
            max_per_peer: 2,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(70),
        };
        let r = Registry::new("test", limits);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = r.admit(a).unwrap();
        let _busy = a1.conn.begin();
        let a2 = r.admit(a).unwrap();
        a2.conn.open(false);
        // Peer a is at its limit: its idle connection makes room, not the busy one.
        let a3 = r.admit(a).unwrap();
        assert!(a2.conn.close.is_cancelled());
        assert!(!a1.conn.close.is_cancelled());
        drop(a2);
        let b1 = r.admit(b).unwrap();
        // The listener is full: the silent newcomer of a goes before b's.
        let _c1 = r.admit(c).unwrap();
        assert!(a3.conn.close.is_cancelled());
        assert!(!b1.conn.close.is_cancelled());
        drop(a3);
        // Everything in the way is busy: refused.
        let _b = b1.conn.begin();
        let t = r.table.lock().unwrap();
        let ids: Vec<u64> = t.conns.keys().copied().collect();
        drop(t);
        for id in ids {
            let t = r.table.lock().unwrap();
            let conn = t.conns[&id].clone();
            drop(t);
            std::mem::forget(conn.begin());
        }
        assert_eq!(r.admit(c).unwrap_err(), Refusal::Full);
    }

    #[test]
    fn refusals_are_logged_once_per_peer_then_summarised() {
        let log = RefusalLog::new("test");
        let t0 = Instant::now();
        let peer = |n: u8| IpAddr::from([10, 0, 0, n]);
        let mut events: Vec<(u64, IpAddr, Refusal)> = (0..10_000)
            .map(|i| (i / 100, peer(1), Refusal::Tls))
            .collect();
        events.extend((0..50u8).map(|n| (200, peer(n + 2), Refusal::Full)));
        let lines = log.lines_for(&events, t0);
        let firsts = lines
            .iter()
            .filter(|l| matches!(l, Line::First { .. }))
            .count();
        assert_eq!(firsts, LOG_PEERS_PER_WINDOW);
        // One summary for peer 1, one per other logged peer with more (none),
        // one for the peers without a line of their own.
        assert!(lines.len() <= 2 * LOG_PEERS_PER_WINDOW + 1, "{lines:?}");
        assert!(lines.contains(&Line::Summary {
            peer: Some(peer(1)),
            peers: 1,
            counts: vec![(Refusal::Tls, 9_999)],
        }));
        assert!(lines.iter().any(|l| matches!(
            l,
            Line::Summary { peer: None, peers, .. } if *peers == 50 - (LOG_PEERS_PER_WINDOW - 1)
        )));
        // A new window logs a peer's first refusal again.
        let again = log.lines_for(
            &[(0, peer(1), Refusal::Tls), (61_000, peer(1), Refusal::Tls)],
            t0,
        );
        assert_eq!(
            again
                .iter()
                .filter(|l| matches!(l, Line::First { .. }))
                .count(),
            2
        );
    }
}
