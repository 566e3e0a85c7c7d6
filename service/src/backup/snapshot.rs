//! etcd snapshots: streaming one from etcd's maintenance API, and checking one
//! (integrity hash, then the bbolt database inside it).
//!
//! An etcd snapshot is the server's bbolt database file followed by the
//! SHA-256 of those bytes (etcd's `snapshot restore` recognises the hash by the
//! file length: a multiple of 512 plus 32). [`status`] reads the database the
//! way `etcdctl snapshot status` does — CRC-32C over every bucket name, key
//! and value; the revision is the main revision of the last key of the `key`
//! bucket — so both tools report the same hash, revision and key count.

use std::{fs::File, os::unix::fs::FileExt, path::Path};

use crate::etcd::{client::ConnectError, settings::EtcdConfig};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::stream::Source;

/// Bytes of the SHA-256 that ends a snapshot.
pub const HASH_LEN: usize = 32;

/// Why a snapshot could not be taken or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// etcd could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// etcd refused or failed the request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// Reading the snapshot file failed.
    #[error("reading the snapshot: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid etcd snapshot: the text says why.
    #[error("not a valid etcd snapshot: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(msg.into())
}

/// A snapshot being streamed from etcd.
pub struct EtcdSnapshot {
    /// The snapshot bytes (database, then its SHA-256). Yields an error at the
    /// end if the hash does not match, so an upload of it is never completed.
    pub reader: Source,
    /// etcd's revision when the snapshot was requested; the snapshot holds
    /// this revision or a later one (`backup verify` reads the exact one).
    pub revision: i64,
    /// The etcd member that served it.
    pub member_id: u64,
    /// Expected size in bytes, once the first message arrived (for progress).
    pub size_hint: Option<u64>,
}

/// Running SHA-256 over all bytes but the last 32.
#[derive(Default)]
struct TrailerCheck {
    hasher: Sha256,
    tail: Vec<u8>,
    total: u64,
}

impl TrailerCheck {
    fn update(&mut self, blob: &[u8]) {
        self.total += blob.len() as u64;
        self.tail.extend_from_slice(blob);
        if self.tail.len() > HASH_LEN {
            let cut = self.tail.len() - HASH_LEN;
            self.hasher.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    fn finish(self) -> Result<(), String> {
        if self.tail.len() < HASH_LEN || self.total % 512 != HASH_LEN as u64 {
            return Err(format!(
                "the snapshot stream ({} bytes) does not end with its SHA-256",
                self.total
            ));
        }
        if self.hasher.finalize()[..] != self.tail[..] {
            return Err("the snapshot's SHA-256 does not match its content".into());
        }
        Ok(())
    }
}

/// Starts a snapshot of the etcd cluster in `config`.
pub async fn open_etcd(config: &EtcdConfig) -> Result<EtcdSnapshot, SnapshotError> {
    let mut client = crate::etcd::client::connect(config).await?;
    let status = client.status().await?;
    let header = status.header();
    let revision = header.map(|h| h.revision()).unwrap_or(0);
    let member_id = header.map(|h| h.member_id()).unwrap_or(0);
    let mut stream = client.snapshot().await?;
    // The first message tells the size (its blob plus what remains, plus the hash).
    let first = stream.message().await?;
    let size_hint = first
        .as_ref()
        .map(|m| m.blob().len() as u64 + m.remaining_bytes() + HASH_LEN as u64);
    let first_blob = first.map(|m| Bytes::copy_from_slice(m.blob()));
    struct State {
        stream: etcd_client::SnapshotStreaming,
        pending: Option<Bytes>,
        check: Option<TrailerCheck>,
        // Keeps the client (and its channel) alive while streaming.
        _client: etcd_client::Client,
    }
    let state = State {
        stream,
        pending: first_blob,
        check: Some(TrailerCheck::default()),
        _client: client,
    };
    let s = futures::stream::unfold(state, |mut st| async move {
        loop {
            let blob = match st.pending.take() {
                Some(b) => Some(b),
                None => match st.stream.message().await {
                    Ok(Some(m)) => Some(Bytes::copy_from_slice(m.blob())),
                    Ok(None) => None,
                    Err(e) => {
                        st.check = None;
                        return Some((
                            Err(std::io::Error::other(format!("etcd snapshot stream: {e}"))),
                            st,
                        ));
                    }
                },
            };
            match blob {
                Some(b) if b.is_empty() => continue,
                Some(b) => {
                    if let Some(c) = &mut st.check {
                        c.update(&b);
                    }
                    return Some((Ok(b), st));
                }
                None => {
                    let check = st.check.take()?;
                    return match check.finish() {
                        Ok(()) => None,
                        Err(m) => Some((Err(std::io::Error::other(m)), st)),
                    };
                }
            }
        }
    });
    let reader: Source = Box::new(tokio_util::io::StreamReader::new(Box::pin(s)));
    Ok(EtcdSnapshot {
        reader,
        revision,
        member_id,
        size_hint,
    })
}

/// What `backup verify` reports about a snapshot (the fields of `etcdctl snapshot status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStatus {
    /// CRC-32C over bucket names, keys and values (etcdctl's `hash`).
    pub hash: u32,
    /// The latest revision in the snapshot.
    pub revision: i64,
    /// Keys in all buckets (etcdctl's `totalKey`).
    pub total_keys: u64,
    /// Size of the database (etcdctl's `totalSize`).
    pub total_size: u64,
    /// Whether the snapshot ended with its SHA-256 and it matched.
    pub integrity_hash: bool,
}

/// Checks a snapshot file: its SHA-256 trailer, then its bbolt database.
pub fn status(path: &Path) -> Result<SnapshotStatus, SnapshotError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len % 512 != HASH_LEN as u64 || len < 2 * 512 + HASH_LEN as u64 {
        return Err(invalid(format!(
            "{len} bytes: an etcd snapshot is a database of whole pages followed by its \
             32-byte SHA-256 (the length would be a multiple of 512 plus 32)"
        )));
    }
    let db_len = len - HASH_LEN as u64;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < db_len {
        let n = ((db_len - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off)?;
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    let mut trailer = [0u8; HASH_LEN];
    file.read_exact_at(&mut trailer, db_len)?;
    if hasher.finalize()[..] != trailer {
        return Err(invalid(
            "the integrity hash (SHA-256 at the end) does not match the content",
        ));
    }
    let db = Bolt::open(file, db_len)?;
    let mut st = db.status()?;
    st.integrity_hash = true;
    Ok(st)
}

/// A visitor of `(key, value)` entries.
pub type EntryVisit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), SnapshotError> + 'a;

/// Calls `f(key, value)` for every entry of the `key` bucket (etcd's MVCC
/// store: the key is the revision, the value an `mvccpb.KeyValue`) of the
/// snapshot file at `path` (checked by [`status`] first).
pub fn for_each_revision(path: &Path, f: &mut EntryVisit<'_>) -> Result<(), SnapshotError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let db = Bolt::open(file, len.saturating_sub(HASH_LEN as u64))?;
    let root = db.page(db.root)?;
    let mut key_bucket = None;
    db.walk(&root, 0, &mut |flags, name, value| {
        if flags & BUCKET_LEAF != 0 && name == b"key" {
            key_bucket = Some(value.to_vec());
        }
        Ok(())
    })?;
    let bucket = key_bucket
        .ok_or_else(|| invalid("the database has no `key` bucket: not an etcd v3 store"))?;
    db.walk_bucket(&bucket, 0, &mut |flags, k, v| {
        if flags & BUCKET_LEAF == 0 {
            f(k, v)?;
        }
        Ok(())
    })
}

// bbolt layout (little-endian on every platform etcd ships for).
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;
const BOLT_MAGIC: u32 = 0xED0C_DAED;
const BOLT_VERSION: u32 = 2;
const MAX_DEPTH: usize = 64;
const MAX_PAGE_BYTES: u64 = 256 << 20;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Called with `(element flags, key, value)` for every leaf element.
type Visit<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<(), SnapshotError> + 'a;

/// A read-only view of a bbolt database file.
struct Bolt {
    file: File,
    len: u64,
    page_size: u64,
    root: u64,
    high_water: u64,
}

struct Meta {
    page_size: u32,
    root: u64,
    pgid: u64,
    txid: u64,
}

fn parse_meta(page: &[u8]) -> Option<Meta> {
    if page.len() < PAGE_HEADER + 64 || u16_at(page, 8) & META_PAGE == 0 {
        return None;
    }
    let m = &page[PAGE_HEADER..PAGE_HEADER + 64];
    if u32_at(m, 0) != BOLT_MAGIC || u32_at(m, 4) != BOLT_VERSION {
        return None;
    }
    // FNV-1a 64 over the meta fields before the checksum.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &m[..56] {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    if h != u64_at(m, 56) {
        return None;
    }
    Some(Meta {
        page_size: u32_at(m, 8),
        root: u64_at(m, 16),
        pgid: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

impl Bolt {
    fn open(file: File, len: u64) -> Result<Self, SnapshotError> {
        let mut first = vec![0u8; PAGE_HEADER + 64];
        file.read_exact_at(&mut first, 0)?;
        let m0 = parse_meta(&first);
        let page_size = match &m0 {
            Some(m) => u64::from(m.page_size),
            None => 4096,
        };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(invalid(format!("bad bbolt page size {page_size}")));
        }
        let mut second = vec![0u8; first.len()];
        file.read_exact_at(&mut second, page_size)?;
        let m1 = parse_meta(&second);
        let meta = match (m0, m1) {
            (Some(a), Some(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => {
                return Err(invalid(
                    "no valid bbolt meta page (bad magic, version or checksum)",
                ));
            }
        };
        if u64::from(meta.page_size) != page_size {
            return Err(invalid("the bbolt meta pages disagree on the page size"));
        }
        if meta.pgid.saturating_mul(page_size) > len {
            return Err(invalid(format!(
                "the database claims {} pages of {page_size} bytes but the file holds {len} bytes",
                meta.pgid
            )));
        }
        Ok(Self {
            file,
            len,
            page_size,
            root: meta.root,
            high_water: meta.pgid,
        })
    }

    fn page(&self, id: u64) -> Result<Vec<u8>, SnapshotError> {
        if id < 2 || id >= self.high_water {
            return Err(invalid(format!(
                "page {id} is outside the database (2..{})",
                self.high_water
            )));
        }
        let off = id * self.page_size;
        let mut head = [0u8; PAGE_HEADER];
        self.file.read_exact_at(&mut head, off)?;
        if u64_at(&head, 0) != id {
            return Err(invalid(format!("page {id} has id {}", u64_at(&head, 0))));
        }
        let size = (u64::from(u32_at(&head, 12)) + 1) * self.page_size;
        if size > MAX_PAGE_BYTES || off + size > self.len {
            return Err(invalid(format!("page {id} overflows the database")));
        }
        let mut page = vec![0u8; size as usize];
        self.file.read_exact_at(&mut page, off)?;
        Ok(page)
    }

    /// Calls `f(flags, key, value)` for every leaf element under `page`, in key order.
    fn walk(&self, page: &[u8], depth: usize, f: &mut Visit<'_>) -> Result<(), SnapshotError> {
        if depth > MAX_DEPTH {
            return Err(invalid("the B+tree is deeper than any real database"));
        }
        if page.len() < PAGE_HEADER {
            return Err(invalid("a page is shorter than its header"));
        }
        let flags = u16_at(page, 8);
        let count = u16_at(page, 10) as usize;
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return Err(invalid("a page's elements overflow it"));
        }
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            if flags & LEAF_PAGE != 0 {
                let eflags = u32_at(page, at);
                let pos = at + u32_at(page, at + 4) as usize;
                let ksize = u32_at(page, at + 8) as usize;
                let vsize = u32_at(page, at + 12) as usize;
                let end = pos
                    .checked_add(ksize)
                    .and_then(|k| k.checked_add(vsize))
                    .filter(|&e| e <= page.len())
                    .ok_or_else(|| invalid("a leaf element points outside its page"))?;
                f(eflags, &page[pos..pos + ksize], &page[pos + ksize..end])?;
            } else if flags & BRANCH_PAGE != 0 {
                let child = u64_at(page, at + 8);
                let child_page = self.page(child)?;
                self.walk(&child_page, depth + 1, f)?;
            } else {
                return Err(invalid(format!(
                    "a page of the tree has flags {flags:#x} (neither branch nor leaf)"
                )));
            }
        }
        Ok(())
    }

    /// Walks the bucket whose header (`root pgid`, `sequence`, inline page) is `value`.
    fn walk_bucket(
        &self,
        value: &[u8],
        depth: usize,
        f: &mut Visit<'_>,
    ) -> Result<(), SnapshotError> {
        if value.len() < 16 {
            return Err(invalid("a bucket header is too short"));
        }
        match u64_at(value, 0) {
            0 => self.walk(&value[16..], depth + 1, f),
            root => {
                let page = self.page(root)?;
                self.walk(&page, depth + 1, f)
            }
        }
    }

    fn status(&self) -> Result<SnapshotStatus, SnapshotError> {
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
        let mut digest = crc.digest();
        let mut revision = 0i64;
        let mut total_keys = 0u64;
        let root = self.page(self.root)?;
        let mut buckets: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.walk(&root, 0, &mut |flags, name, value| {
            if flags & BUCKET_LEAF == 0 {
                return Err(invalid(format!(
                    "the root holds a plain key `{}`, not a bucket",
                    String::from_utf8_lossy(name)
                )));
            }
            buckets.push((name.to_vec(), value.to_vec()));
            Ok(())
        })?;
        for (name, value) in &buckets {
            digest.update(name);
            let is_key = name.as_slice() == b"key";
            self.walk_bucket(value, 0, &mut |flags, k, v| {
                digest.update(k);
                if flags & BUCKET_LEAF == 0 {
                    digest.update(v);
                }
                if is_key {
                    if k.len() < 8 {
                        return Err(invalid("a key in the `key` bucket is not a revision"));
                    }
                    revision = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
                }
                total_keys += 1;
                Ok(())
            })?;
        }
        if !buckets.iter().any(|(n, _)| n.as_slice() == b"key") {
            return Err(invalid(
                "the database has no `key` bucket: not an etcd v3 store",
            ));
        }
        Ok(SnapshotStatus {
            hash: digest.finalize(),
            revision,
            total_keys,
            total_size: self.high_water * self.page_size,
            integrity_hash: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_check_accepts_only_the_right_hash() {
        let body = vec![7u8; 1024];
        let mut good = body.clone();
        good.extend_from_slice(&Sha256::digest(&body));
        let mut c = TrailerCheck::default();
        for part in good.chunks(100) {
            c.update(part);
        }
        assert!(c.finish().is_ok());
        let mut bad = good.clone();
        bad[10] ^= 1;
        let mut c = TrailerCheck::default();
        c.update(&bad);
        assert!(c.finish().is_err());
        let mut c = TrailerCheck::default();
        c.update(&body);
        assert!(c.finish().is_err());
    }

    #[test]
    fn status_rejects_files_that_are_not_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"not a snapshot").unwrap();
        assert!(matches!(status(&p), Err(SnapshotError::Invalid(_))));
        // Right length and a matching hash, but no bbolt database inside.
        let body = vec![0u8; 4 * 4096];
        let mut data = body.clone();
        data.extend_from_slice(&Sha256::digest(&body));
        std::fs::write(&p, &data).unwrap();
        let e = status(&p).unwrap_err().to_string();
        assert!(e.contains("meta page"), "{e}");
        // A flipped byte breaks the integrity hash.
        data[100] ^= 1;
        std::fs::write(&p, &data).unwrap();
        let e = status(&p).unwrap_err().to_string();
        assert!(e.contains("integrity hash"), "{e}");
    }
}
