//! Streaming encryption and decryption of whole backups.
//!
//! ```text
//!   source ──► reader task ──► crypto workers (spawn_blocking, ≤ DEPTH chunks) ──► writer (in order)
//!              (reads chunks,   seal / open one chunk each,                          (writes records or
//!               looks ahead      in parallel)                                        authenticated
//!               for the end)                                                         plaintext)
//! ```
//!
//! Memory is bounded by the chunk size times a small constant, whatever the
//! stream's length. The decryptor writes a chunk's plaintext only after that
//! chunk authenticated; callers that write files keep them under a temporary
//! name until [`decrypt`] returns `Ok` (the final chunk authenticated and
//! nothing follows it).

use std::sync::Arc;

use super::progress::Progress as ProgressBar;
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
    task::JoinHandle,
};
use uuid::Uuid;

use super::{
    format::{
        After, CHUNK_OVERHEAD, ChunkCipher, FormatError, HEADER_LEN, Header, LEN_FIELD, MAGIC,
        Opened, PREAMBLE_LEN, parse_preamble,
    },
    kek::{Kek, KekId},
};

/// Chunks in flight between the reader and the writer (each at most one chunk size).
const DEPTH: usize = 4;

/// Recycled chunk buffers: a stream at several GB/s must not allocate and
/// zero a fresh megabyte per chunk.
#[derive(Clone, Default)]
struct Pool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Pool {
    /// Buffers kept for reuse (a few more than can be in flight).
    const KEEP: usize = 2 * DEPTH + 4;

    /// A buffer of exactly `len` bytes (contents unspecified).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self
            .0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        v.resize(len, 0);
        v
    }

    fn give(&self, v: Vec<u8>) {
        if let Ok(mut p) = self.0.lock()
            && p.len() < Self::KEEP
        {
            p.push(v);
        }
    }
}

/// A byte source: a file, standard input, an object download, an etcd snapshot.
pub type Source = Box<dyn AsyncRead + Send + Unpin>;

/// Why a stream could not be encrypted or decrypted.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The ciphertext is not an authentic backup (wrong key, tampered, truncated...).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    Read(std::io::Error),
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Write(std::io::Error),
    /// More than 2^32 chunks.
    #[error("the input is too large for chunk size {0}: it would need more than 2^32 chunks")]
    TooLarge(usize),
    /// A crypto worker died.
    #[error("a crypto worker failed: {0}")]
    Worker(String),
}

impl StreamError {
    /// True when the input itself is at fault (bad ciphertext): exit code 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::Format(_))
    }
}

/// Settings of one encryption.
#[derive(Debug, Clone)]
pub struct EncryptOptions {
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The backup's id (bound into every chunk).
    pub backup_id: Uuid,
    /// Compute the SHA-256 of the ciphertext (costs a core at ~0.5 GB/s).
    pub hash: bool,
}

/// What an encryption produced.
#[derive(Debug, Clone)]
pub struct Encrypted {
    /// The backup's id.
    pub backup_id: Uuid,
    /// The KEK that wraps its data key.
    pub kek_id: KekId,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Bytes read.
    pub plaintext_bytes: u64,
    /// Bytes written.
    pub ciphertext_bytes: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Hex SHA-256 of the ciphertext, when asked for.
    pub sha256: Option<String>,
}

/// Settings of one decryption.
#[derive(Debug, Clone, Default)]
pub struct DecryptOptions {
    /// Refuse the object unless it holds this backup.
    pub expect_id: Option<Uuid>,
    /// Compute the SHA-256 of the ciphertext.
    pub hash: bool,
}

/// What a decryption produced.
#[derive(Debug, Clone)]
pub struct Decrypted {
    /// The backup's id.
    pub backup_id: Uuid,
    /// The KEK that opened it.
    pub kek_id: KekId,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Authentic plaintext bytes written.
    pub plaintext_bytes: u64,
    /// Ciphertext bytes read.
    pub ciphertext_bytes: u64,
    /// Chunks read.
    pub chunks: u64,
    /// Hex SHA-256 of the ciphertext, when asked for.
    pub sha256: Option<String>,
}

fn worker_error(e: tokio::task::JoinError) -> StreamError {
    StreamError::Worker(e.to_string())
}

/// Encrypts `input` into `out` as one backup under `kek`. On error, `out`
/// holds an incomplete object: the caller must discard it.
pub async fn encrypt<W>(
    input: Source,
    out: &mut W,
    kek: &Kek,
    opts: &EncryptOptions,
    progress: &ProgressBar,
) -> Result<Encrypted, StreamError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let (header, key) = Header::new(kek, opts.chunk_size, opts.backup_id);
    let cipher = Arc::new(ChunkCipher::new(&header, &key));
    drop(key);
    let mut hasher = opts.hash.then(Sha256::new);
    let head = header.encode();
    out.write_all(&head).await.map_err(StreamError::Write)?;
    if let Some(h) = &mut hasher {
        h.update(head);
    }
    let (tx, mut rx) = mpsc::channel::<JoinHandle<Vec<u8>>>(DEPTH);
    let pool = Pool::default();
    let reader = tokio::spawn(encrypt_reader(
        input,
        cipher,
        tx,
        progress.clone(),
        pool.clone(),
    ));
    let mut written = HEADER_LEN as u64;
    let mut chunks = 0u64;
    let result = async {
        while let Some(job) = rx.recv().await {
            let record = job.await.map_err(worker_error)?;
            out.write_all(&record).await.map_err(StreamError::Write)?;
            if let Some(h) = &mut hasher {
                h.update(&record);
            }
            written += record.len() as u64;
            chunks += 1;
            pool.give(record);
            if chunks == 2 {
                crate::crash::point("backup-mid-stream");
            }
        }
        out.flush().await.map_err(StreamError::Write)
    }
    .await;
    if let Err(e) = result {
        reader.abort();
        return Err(e);
    }
    let plaintext_bytes = reader.await.map_err(worker_error)??;
    Ok(Encrypted {
        backup_id: header.backup_id,
        kek_id: header.kek_id,
        chunk_size: header.chunk_size,
        plaintext_bytes,
        ciphertext_bytes: written,
        chunks,
        sha256: hasher.map(|h| hex::encode(h.finalize())),
    })
}

/// Reads up to one chunk of plaintext into a record buffer
/// (`[len][plaintext][tag]`, length field and tag still zero).
async fn read_plain_record(
    input: &mut Source,
    chunk: usize,
    pool: &Pool,
) -> Result<Vec<u8>, StreamError> {
    let mut rec = pool.take(chunk + CHUNK_OVERHEAD);
    let mut filled = 0;
    while filled < chunk {
        let n = input
            .read(&mut rec[LEN_FIELD + filled..LEN_FIELD + chunk])
            .await
            .map_err(StreamError::Read)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    rec.truncate(filled + CHUNK_OVERHEAD);
    Ok(rec)
}

async fn encrypt_reader(
    mut input: Source,
    cipher: Arc<ChunkCipher>,
    tx: mpsc::Sender<JoinHandle<Vec<u8>>>,
    progress: ProgressBar,
    pool: Pool,
) -> Result<u64, StreamError> {
    let chunk = cipher.chunk_size();
    let mut total = 0u64;
    let mut index: u32 = 0;
    let mut current = read_plain_record(&mut input, chunk, &pool).await?;
    loop {
        let n = current.len() - CHUNK_OVERHEAD;
        total += n as u64;
        progress.inc(n as u64);
        // A short chunk means the input ended; a full one is last only if nothing follows.
        let (last, next) = if n < chunk {
            (true, None)
        } else {
            let next = read_plain_record(&mut input, chunk, &pool).await?;
            if next.len() == CHUNK_OVERHEAD {
                (true, None)
            } else {
                (false, Some(next))
            }
        };
        let c = Arc::clone(&cipher);
        let mut record = current;
        let job = tokio::task::spawn_blocking(move || {
            c.seal(index, last, &mut record);
            record
        });
        if tx.send(job).await.is_err() {
            // The writer stopped; its error is the one to report.
            return Ok(total);
        }
        match next {
            None => return Ok(total),
            Some(next) => {
                index = index.checked_add(1).ok_or(StreamError::TooLarge(chunk))?;
                current = next;
            }
        }
    }
}

/// Reads as much of `buf` as the source holds; returns the bytes read.
async fn read_full(input: &mut Source, buf: &mut [u8]) -> Result<usize, StreamError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = input
            .read(&mut buf[filled..])
            .await
            .map_err(StreamError::Read)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Reads and parses a backup header (authenticity is checked by unwrapping).
pub async fn read_header(input: &mut Source) -> Result<Header, StreamError> {
    let mut head = [0u8; HEADER_LEN];
    let got = read_full(input, &mut head[..PREAMBLE_LEN]).await?;
    if got < PREAMBLE_LEN {
        let n = got.min(MAGIC.len());
        if head[..n] != MAGIC[..n] || got == 0 {
            return Err(if got == 0 {
                FormatError::Truncated("the object is empty".into())
            } else {
                FormatError::NotABackup
            }
            .into());
        }
        return Err(FormatError::Truncated(format!(
            "the object ends inside the header ({got} of {HEADER_LEN} bytes)"
        ))
        .into());
    }
    let mut pre = [0u8; PREAMBLE_LEN];
    pre.copy_from_slice(&head[..PREAMBLE_LEN]);
    parse_preamble(&pre)?;
    let rest = read_full(input, &mut head[PREAMBLE_LEN..]).await?;
    if PREAMBLE_LEN + rest < HEADER_LEN {
        return Err(FormatError::Truncated(format!(
            "the object ends inside the header ({} of {HEADER_LEN} bytes)",
            PREAMBLE_LEN + rest
        ))
        .into());
    }
    Ok(Header::parse(&head)?)
}

/// A chunk's outcome, sent from a crypto worker to the writer.
type Opening = Result<(Vec<u8>, Opened), FormatError>;

/// Decrypts one backup from `input` into `out` with `kek`. Only authenticated
/// plaintext is written; `Ok` means the final chunk authenticated and nothing
/// followed it. On error, `out` may hold a prefix of the plaintext: callers
/// writing files must discard it, callers writing a stream must say it was cut.
pub async fn decrypt<W>(
    mut input: Source,
    out: &mut W,
    kek: &Kek,
    opts: &DecryptOptions,
    progress: &ProgressBar,
) -> Result<Decrypted, StreamError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let header = read_header(&mut input).await?;
    let key = header.unwrap(kek)?;
    header.check_chunk_size()?;
    if let Some(expected) = opts.expect_id
        && expected != header.backup_id
    {
        return Err(FormatError::UnexpectedId {
            expected,
            found: header.backup_id,
        }
        .into());
    }
    let cipher = Arc::new(ChunkCipher::new(&header, &key));
    drop(key);
    progress.inc(HEADER_LEN as u64);
    let mut hasher = opts.hash.then(Sha256::new);
    if let Some(h) = &mut hasher {
        h.update(header.encode());
    }
    let (tx, mut rx) = mpsc::channel::<JoinHandle<Opening>>(DEPTH);
    let pools = (Pool::default(), Pool::default());
    let reader = tokio::spawn(decrypt_reader(
        input,
        cipher,
        tx,
        progress.clone(),
        hasher,
        pools.clone(),
    ));
    let mut plaintext_bytes = 0u64;
    let mut chunks = 0u64;
    let mut finished = false;
    let result = async {
        while let Some(job) = rx.recv().await {
            let (plain, opened) = job.await.map_err(worker_error)??;
            out.write_all(&plain).await.map_err(StreamError::Write)?;
            plaintext_bytes += plain.len() as u64;
            chunks += 1;
            finished = opened == Opened::Last;
            pools.1.give(plain);
        }
        out.flush().await.map_err(StreamError::Write)
    }
    .await;
    if let Err(e) = result {
        reader.abort();
        return Err(e);
    }
    let (ciphertext_bytes, sha256) = reader.await.map_err(worker_error)??;
    if !finished {
        // The reader only stops cleanly after handing over the final chunk.
        return Err(StreamError::Worker(
            "the stream ended without a final chunk".into(),
        ));
    }
    Ok(Decrypted {
        backup_id: header.backup_id,
        kek_id: header.kek_id,
        chunk_size: header.chunk_size,
        plaintext_bytes,
        ciphertext_bytes,
        chunks,
        sha256,
    })
}

/// A chunk length field as read.
enum LenField {
    Len(u32),
    End,
    Stray(usize),
}

async fn read_len(input: &mut Source) -> Result<LenField, StreamError> {
    let mut b = [0u8; LEN_FIELD];
    Ok(match read_full(input, &mut b).await? {
        0 => LenField::End,
        LEN_FIELD => LenField::Len(u32::from_be_bytes(b)),
        n => LenField::Stray(n),
    })
}

async fn decrypt_reader(
    mut input: Source,
    cipher: Arc<ChunkCipher>,
    tx: mpsc::Sender<JoinHandle<Opening>>,
    progress: ProgressBar,
    mut hasher: Option<Sha256>,
    (records, plains): (Pool, Pool),
) -> Result<(u64, Option<String>), StreamError> {
    let chunk = cipher.chunk_size();
    let mut total = HEADER_LEN as u64;
    let mut index: u32 = 0;
    let mut len = match read_len(&mut input).await? {
        LenField::Len(l) => l,
        LenField::End => {
            return Err(FormatError::Truncated(
                "the object ends right after the header: every chunk is missing".into(),
            )
            .into());
        }
        LenField::Stray(n) => {
            return Err(FormatError::Truncated(format!(
                "the object ends {n} bytes after the header, inside the first chunk"
            ))
            .into());
        }
    };
    loop {
        if len as usize > chunk {
            return Err(FormatError::Tampered(format!(
                "chunk #{index} declares {len} bytes, more than the chunk size {chunk}"
            ))
            .into());
        }
        let mut record = records.take(len as usize + CHUNK_OVERHEAD);
        record[..LEN_FIELD].copy_from_slice(&len.to_be_bytes());
        let got = read_full(&mut input, &mut record[LEN_FIELD..]).await?;
        if LEN_FIELD + got < record.len() {
            return Err(cipher
                .classify_short_record(index, len, &record[..LEN_FIELD + got])
                .into());
        }
        let (after, next) = match read_len(&mut input).await? {
            LenField::Len(l) => (After::More, Some(l)),
            LenField::End => (After::End, None),
            LenField::Stray(n) => (After::Stray(n), None),
        };
        total += record.len() as u64;
        progress.inc(record.len() as u64);
        if let Some(h) = &mut hasher {
            h.update(&record);
        }
        let short = (len as usize) < chunk;
        let c = Arc::clone(&cipher);
        let (records2, plains2) = (records.clone(), plains.clone());
        let job = tokio::task::spawn_blocking(move || {
            let mut plain = plains2.take(record.len() - CHUNK_OVERHEAD);
            let opened = c.open(index, &record, after, &mut plain);
            records2.give(record);
            opened.map(|opened| (plain, opened))
        });
        if tx.send(job).await.is_err() {
            return Ok((total, None));
        }
        match next {
            // A short chunk must be the last: the worker reports what follows it.
            Some(l) if !short => {
                index = index
                    .checked_add(1)
                    .ok_or_else(|| FormatError::Tampered("more than 2^32 chunks".into()))?;
                len = l;
            }
            _ => return Ok((total, hasher.map(|h| hex::encode(h.finalize())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::format::{CHUNK_OVERHEAD, HEADER_LEN};

    const C: usize = 1024;

    fn source(data: Vec<u8>) -> Source {
        Box::new(std::io::Cursor::new(data))
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    async fn enc(kek: &Kek, data: &[u8]) -> (Vec<u8>, Encrypted) {
        let mut out = Vec::new();
        let opts = EncryptOptions {
            chunk_size: C as u32,
            backup_id: Uuid::new_v4(),
            hash: true,
        };
        let e = encrypt(
            source(data.to_vec()),
            &mut out,
            kek,
            &opts,
            &ProgressBar::hidden(),
        )
        .await
        .unwrap();
        (out, e)
    }

    async fn dec(kek: &Kek, data: &[u8]) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        decrypt(
            source(data.to_vec()),
            &mut out,
            kek,
            &DecryptOptions {
                hash: true,
                ..Default::default()
            },
            &ProgressBar::hidden(),
        )
        .await
        .map(|_| out)
    }

    fn record_len(plain: usize) -> usize {
        plain + CHUNK_OVERHEAD
    }

    #[tokio::test]
    async fn round_trips_at_every_size_class() {
        let kek = Kek::generate();
        for size in [0, 1, C - 1, C, C + 1, 2 * C, 3 * C + 7, 50 * C + 3] {
            let data = pattern(size);
            let (ct, e) = enc(&kek, &data).await;
            assert_eq!(e.plaintext_bytes, size as u64);
            assert_eq!(e.ciphertext_bytes, ct.len() as u64);
            let full = size / C;
            let rest = size % C;
            let chunks = if size == 0 {
                1
            } else if rest == 0 {
                full
            } else {
                full + 1
            };
            assert_eq!(e.chunks, chunks as u64, "size {size}");
            assert_eq!(
                ct.len(),
                HEADER_LEN + chunks * CHUNK_OVERHEAD + size,
                "size {size}"
            );
            assert_eq!(
                e.sha256.as_deref(),
                Some(hex::encode(Sha256::digest(&ct)).as_str())
            );
            assert_eq!(dec(&kek, &ct).await.unwrap(), data, "size {size}");
        }
    }

    fn class(r: Result<Vec<u8>, StreamError>) -> &'static str {
        match r {
            Ok(_) => "accepted",
            Err(StreamError::Format(FormatError::Truncated(_))) => "truncated",
            Err(StreamError::Format(FormatError::Tampered(_))) => "tampered",
            Err(StreamError::Format(FormatError::WrongKey { .. })) => "wrong key",
            Err(StreamError::Format(FormatError::NotABackup)) => "not a backup",
            Err(StreamError::Format(FormatError::UnsupportedVersion(_))) => "version",
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[tokio::test]
    async fn every_flipped_byte_is_rejected() {
        let kek = Kek::generate();
        let data = pattern(2 * C + 100);
        let (ct, _) = enc(&kek, &data).await;
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x80;
            let got = class(dec(&kek, &bad).await);
            assert_ne!(got, "accepted", "flipped byte {i} accepted");
            if i >= HEADER_LEN {
                // Body bytes: tampered, except a length field made larger, which reads as truncation.
                assert!(got == "tampered" || got == "truncated", "byte {i}: {got}");
            }
        }
    }

    #[tokio::test]
    async fn truncation_is_named_at_and_between_boundaries() {
        let kek = Kek::generate();
        let data = pattern(3 * C + 7);
        let (ct, _) = enc(&kek, &data).await;
        let r = record_len(C);
        let mut cuts = vec![0, 5, HEADER_LEN - 1, HEADER_LEN, HEADER_LEN + 2];
        for k in 1..=3 {
            cuts.push(HEADER_LEN + k * r); // exactly at a chunk boundary
            cuts.push(HEADER_LEN + k * r - 1); // one byte short of it
            cuts.push(HEADER_LEN + k * r + 2); // inside the next length field
            cuts.push(HEADER_LEN + k * r - r / 2); // mid-chunk
        }
        cuts.push(ct.len() - 1);
        for cut in cuts {
            let got = class(dec(&kek, &ct[..cut]).await);
            assert_eq!(got, "truncated", "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn reordering_splicing_and_extension_are_rejected() {
        let kek = Kek::generate();
        let data = pattern(3 * C + 7);
        let (ct, _) = enc(&kek, &data).await;
        let r = record_len(C);
        let chunk = |i: usize| HEADER_LEN + i * r..HEADER_LEN + (i + 1) * r;
        // Swap chunks 0 and 1.
        let mut swapped = ct.clone();
        swapped[chunk(0)].copy_from_slice(&ct[chunk(1)]);
        swapped[chunk(1)].copy_from_slice(&ct[chunk(0)]);
        assert_eq!(class(dec(&kek, &swapped).await), "tampered");
        // Chunk 1 from another backup under the same KEK.
        let (other, _) = enc(&kek, &data).await;
        let mut spliced = ct.clone();
        spliced[chunk(1)].copy_from_slice(&other[chunk(1)]);
        assert_eq!(class(dec(&kek, &spliced).await), "tampered");
        // Drop a middle chunk.
        let mut dropped = ct[..chunk(1).start].to_vec();
        dropped.extend_from_slice(&ct[chunk(2).start..]);
        assert_eq!(class(dec(&kek, &dropped).await), "tampered");
        // Extension: junk, a copy of the last chunk, stray bytes.
        for tail in [vec![0u8; 100], ct[chunk(3).start..].to_vec(), vec![1, 2]] {
            let mut ext = ct.clone();
            ext.extend_from_slice(&tail);
            assert_eq!(class(dec(&kek, &ext).await), "tampered");
        }
        // Exactly full last chunk, then extension with a whole copy of it.
        let data = pattern(2 * C);
        let (ct, _) = enc(&kek, &data).await;
        let mut ext = ct.clone();
        ext.extend_from_slice(&ct[chunk(1)]);
        assert_eq!(class(dec(&kek, &ext).await), "tampered");
        let mut ext = ct.clone();
        ext.extend_from_slice(&[0u8; 3]);
        assert_eq!(class(dec(&kek, &ext).await), "tampered");
    }

    #[tokio::test]
    async fn wrong_key_and_wrong_id_are_named() {
        let kek = Kek::generate();
        let (ct, e) = enc(&kek, &pattern(10)).await;
        assert_eq!(class(dec(&Kek::generate(), &ct).await), "wrong key");
        let mut out = Vec::new();
        let r = decrypt(
            source(ct.clone()),
            &mut out,
            &kek,
            &DecryptOptions {
                expect_id: Some(Uuid::new_v4()),
                hash: false,
            },
            &ProgressBar::hidden(),
        )
        .await;
        assert!(matches!(
            r,
            Err(StreamError::Format(FormatError::UnexpectedId { found, .. })) if found == e.backup_id
        ));
        assert!(out.is_empty());
        assert_eq!(
            class(dec(&kek, b"hello world, not a backup").await),
            "not a backup"
        );
        assert_eq!(class(dec(&kek, b"").await), "truncated");
    }
}
