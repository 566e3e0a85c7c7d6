//! Scanning etcd page by page with bounded memory.
//!
//! ```text
//!   fetcher task ── Range(limit, start key, pinned revision) ──► channel (1 page)
//!                                                                   │
//!   consumer: Sampler (open this one?) → Keyring::judge → Tally ◄───┘
//! ```
//!
//! etcd 3.4 has no RangeStream, so pages are plain ranges: `limit` keys from
//! a start key, the next page starting just after the last key, all at the
//! revision of the first request (one consistent snapshot). The page size
//! adapts to the values' size so a page stays near [`PAGE_BYTES`]; at most
//! three pages (one being received, one queued, one being judged) are in
//! memory besides the bounded lists of the report.

use std::time::Instant;

use etcd_client::{Client, GetOptions, KeyValue};
use rand::Rng;
use tokio::sync::mpsc;

use super::{
    report::{Problem, ScanReport},
    values::{Format, Keyring, Verdict},
};
use crate::etcd::encryption::ProviderKind;

/// Target size of one page of values (2 MiB: measured ~20 MiB peak RSS at
/// 100k values of 2 KiB, 2.5-3x etcdctl's dump speed; 4 MiB pages and a
/// 2-page queue were ~15% faster but peaked near 38 MiB).
pub const PAGE_BYTES: usize = 2 << 20;
/// First page size, before value sizes are known.
const FIRST_PAGE: i64 = 256;
/// Page size bounds.
const MIN_PAGE: i64 = 8;
const MAX_PAGE: i64 = 2048;
/// gRPC message limit for one page (a single etcd value can be 1.5 MiB).
const MAX_MESSAGE: usize = 64 << 20;
/// Keys listed per category in the report by default.
pub const DEFAULT_MAX_LISTED: usize = 1000;

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// etcd refused or failed a range request.
    #[error("reading {prefix} from etcd: {source}")]
    Range {
        /// The prefix scanned.
        prefix: String,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// The fetcher task died.
    #[error("the etcd reader stopped unexpectedly")]
    Reader,
}

/// What to scan and how.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Key prefix, e.g. `/registry/secrets/`.
    pub prefix: String,
    /// Resource name for the report.
    pub resource: String,
    /// Open only this many values, chosen uniformly at random (None: all).
    pub sample: Option<u64>,
    /// Keys listed per category.
    pub max_listed: usize,
    /// Read at this etcd revision (None: the current one).
    pub revision: Option<i64>,
}

/// Chooses exactly `want` of `total` values uniformly as they stream by
/// (Knuth's selection sampling): no buffering, one decision per value.
#[derive(Debug)]
pub struct Sampler<R> {
    want: Option<u64>,
    remaining: u64,
    rng: R,
}

impl<R: Rng> Sampler<R> {
    /// `want` of `total` (None: every value).
    pub fn new(want: Option<u64>, total: u64, rng: R) -> Self {
        Self {
            want,
            remaining: total,
            rng,
        }
    }

    /// Should the next value be opened?
    pub fn take(&mut self) -> bool {
        let Some(want) = self.want else {
            return true;
        };
        if want == 0 {
            return false;
        }
        let pick = if self.remaining <= want {
            true
        } else {
            self.rng.random_range(0..self.remaining) < want
        };
        self.remaining = self.remaining.saturating_sub(1);
        if pick {
            self.want = Some(want - 1);
        }
        pick
    }
}

/// Accumulates verdicts into a [`ScanReport`] with bounded lists.
#[derive(Debug)]
pub struct Tally {
    report: ScanReport,
    max_listed: usize,
}

impl Tally {
    /// An empty tally.
    pub fn new(prefix: &str, resource: &str, max_listed: usize) -> Self {
        Self {
            report: ScanReport {
                prefix: prefix.into(),
                resource: resource.into(),
                ..Default::default()
            },
            max_listed,
        }
    }

    fn push(list: &mut Vec<String>, truncated: &mut bool, max: usize, key: &str) {
        if list.len() < max {
            list.push(key.to_string());
        } else {
            *truncated = true;
        }
    }

    /// Counts one value; `version` is etcd's write count of its key.
    pub fn observe(&mut self, key: &[u8], v: &Verdict, opened: bool, version: i64) {
        let r = &mut self.report;
        let key = String::from_utf8_lossy(key);
        r.total += 1;
        r.version_sum += u64::try_from(version).unwrap_or(0);
        match v.format.provider() {
            Some(ProviderKind::Identity) => r.by_provider.identity += 1,
            Some(ProviderKind::Aescbc) => r.by_provider.aescbc += 1,
            Some(ProviderKind::Aesgcm) => r.by_provider.aesgcm += 1,
            Some(ProviderKind::Secretbox) => r.by_provider.secretbox += 1,
            Some(ProviderKind::Kms) => r.by_provider.kms += 1,
            None => {}
        }
        *r.by_key.entry(v.format.label()).or_default() += 1;
        if opened && !v.not_verifiable {
            r.sampled += 1;
        }
        if v.verified {
            r.verified += 1;
        }
        if v.not_verifiable {
            r.not_verifiable += 1;
        }
        if matches!(v.format, Format::Plaintext(_)) {
            r.counts.plaintext += 1;
            Self::push(&mut r.plaintext, &mut r.truncated, self.max_listed, &key);
        }
        if v.stale {
            r.counts.stale += 1;
            Self::push(&mut r.stale, &mut r.truncated, self.max_listed, &key);
        }
        if let Some(reason) = &v.problem {
            r.counts.undecryptable += 1;
            if r.undecryptable.len() < self.max_listed {
                r.undecryptable.push(key.to_string());
                r.undecryptable_reasons.push(Problem {
                    key: key.to_string(),
                    reason: reason.clone(),
                });
            } else {
                r.truncated = true;
            }
        }
    }

    /// The report so far.
    pub fn finish(self) -> ScanReport {
        self.report
    }
}

/// The smallest key after every key starting with `prefix` (etcd's `--prefix` range end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn next_page_size(kvs: &[KeyValue], current: i64) -> i64 {
    let bytes: usize = kvs.iter().map(|kv| kv.key().len() + kv.value().len()).sum();
    if kvs.is_empty() || bytes == 0 {
        return current;
    }
    let avg = (bytes / kvs.len()).max(1);
    ((PAGE_BYTES / avg) as i64).clamp(MIN_PAGE, MAX_PAGE)
}

fn too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if matches!(s.code(), tonic_code::ResourceExhausted | tonic_code::OutOfRange))
}

mod tonic_code {
    pub use tonic::Code::{OutOfRange, ResourceExhausted};
}

/// One page of at most `limit` values from `start` (inclusive) up to `end`
/// (exclusive) at the current revision, and whether more follow. For walks
/// that change what they read (a storage migration), where one pinned
/// revision would go stale.
pub async fn page(
    client: &Client,
    start: &[u8],
    end: &[u8],
    limit: i64,
) -> Result<(Vec<KeyValue>, bool), etcd_client::Error> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut limit = limit.max(1);
    loop {
        let opts = GetOptions::new().with_range(end.to_vec()).with_limit(limit);
        match kv.get(start.to_vec(), Some(opts)).await {
            Ok(mut resp) => {
                let more = resp.more();
                return Ok((resp.take_kvs(), more));
            }
            Err(e) if too_large(&e) && limit > 1 => limit = (limit / 2).max(1),
            Err(e) => return Err(e),
        }
    }
}

/// Scans every value under `opts.prefix`, judging each with `ring`.
pub async fn scan(
    client: &Client,
    ring: &Keyring,
    opts: &ScanOptions,
) -> Result<ScanReport, ScanError> {
    let started = Instant::now();
    let prefix = opts.prefix.as_bytes().to_vec();
    let end = prefix_end(&prefix);
    let range_err = |source| ScanError::Range {
        prefix: opts.prefix.clone(),
        source,
    };
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    // Count first: pins the revision and sizes the sample.
    let mut count_opts = GetOptions::new().with_range(end.clone()).with_count_only();
    if let Some(r) = opts.revision {
        count_opts = count_opts.with_revision(r);
    }
    let head = kv
        .get(prefix.clone(), Some(count_opts))
        .await
        .map_err(range_err)?;
    let revision = opts
        .revision
        .unwrap_or_else(|| head.header().map(|h| h.revision()).unwrap_or(0));
    let count = u64::try_from(head.count()).unwrap_or(0);

    let (tx, mut rx) = mpsc::channel::<Result<Vec<KeyValue>, etcd_client::Error>>(1);
    let fetcher = tokio::spawn(async move {
        let mut start = prefix;
        let mut limit = FIRST_PAGE;
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(limit)
                .with_revision(revision);
            let resp = match kv.get(start.clone(), Some(opts)).await {
                Ok(r) => r,
                Err(e) if too_large(&e) && limit > 1 => {
                    limit = (limit / 2).max(1);
                    continue;
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let more = resp.more();
            let mut resp = resp;
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else {
                return;
            };
            start = last.key().to_vec();
            start.push(0);
            limit = next_page_size(&kvs, limit);
            if tx.send(Ok(kvs)).await.is_err() || !more {
                return;
            }
        }
    });

    // StdRng (not thread_rng) keeps the future Send for spawned checks.
    let rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut sampler = Sampler::new(opts.sample, count, rng);
    let mut tally = Tally::new(&opts.prefix, &opts.resource, opts.max_listed);
    let mut failure = None;
    while let Some(page) = rx.recv().await {
        match page {
            Ok(kvs) => {
                for kv in &kvs {
                    let open = sampler.take();
                    let verdict = ring.judge(kv.key(), kv.value(), open);
                    tally.observe(kv.key(), &verdict, open, kv.version());
                }
            }
            Err(e) => {
                failure = Some(range_err(e));
                break;
            }
        }
    }
    drop(rx);
    if fetcher.await.is_err() {
        return Err(ScanError::Reader);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let mut report = tally.finish();
    report.revision = revision;
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sampler_takes_exactly_n() {
        for (want, total) in [(0, 10), (3, 10), (10, 10), (20, 10), (1, 1000)] {
            let rng = rand::rngs::StdRng::seed_from_u64(want + total);
            let mut s = Sampler::new(Some(want), total, rng);
            let taken = (0..total).filter(|_| s.take()).count() as u64;
            assert_eq!(taken, want.min(total), "{want} of {total}");
        }
        let mut all = Sampler::new(None, 5, rand::rngs::StdRng::seed_from_u64(1));
        assert!((0..5).all(|_| all.take()));
    }

    #[test]
    fn sampler_is_spread_out() {
        let mut hits = [0u32; 10];
        for seed in 0..2000 {
            let mut s = Sampler::new(Some(1), 10, rand::rngs::StdRng::seed_from_u64(seed));
            for h in &mut hits {
                if s.take() {
                    *h += 1;
                }
            }
        }
        assert!(hits.iter().all(|h| (120..280).contains(h)), "{hits:?}");
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/registry/secrets/"), b"/registry/secrets0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn tally_bounds_lists_but_counts_everything() {
        let mut t = Tally::new("/p/", "secrets", 2);
        let v = Verdict {
            format: Format::Plaintext(crate::etcd::values::PlainFormat::Json),
            stale: false,
            problem: None,
            verified: false,
            not_verifiable: false,
        };
        for i in 0..5 {
            t.observe(format!("/p/{i}").as_bytes(), &v, true, 2);
        }
        let r = t.finish();
        assert_eq!(
            (r.total, r.counts.plaintext, r.plaintext.len(), r.truncated),
            (5, 5, 2, true)
        );
        assert_eq!(r.by_provider.identity, 5);
        assert_eq!(r.by_key["identity"], 5);
        assert_eq!(r.version_sum, 10);
    }
}
