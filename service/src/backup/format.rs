//! The backup object format, version 1: header, data-key envelope, STREAM chunks.
//!
//! Byte by byte in `docs/backup-format.md`. In short (all integers big-endian):
//!
//! ```text
//!  header (107 bytes)
//!   0   8  magic "REKEYBAK"                      ┐
//!   8   2  format version = 1                    │ stream header (39 bytes):
//!  10   2  header length = 107                   │ associated data of every
//!  12  16  backup id (UUID)                      │ chunk, so nothing in it can
//!  28   4  chunk size (plaintext bytes)          │ change without every chunk
//!  32   7  nonce prefix (random)                 ┘ failing
//!  39   8  KEK id                                ┐ key envelope: rewritten by
//!  47  12  wrap nonce (random)                   │ `rewrap`; the data key is
//!  59  32  wrapped data key                      │ AES-256-GCM under the KEK
//!  91  16  wrap tag                              ┘ with bytes 0..47 as AAD
//!  chunks, i = 0, 1, ...
//!       4  plaintext length L (= chunk size for every chunk but the last)
//!       L  AES-256-GCM ciphertext under the data key
//!      16  tag;  nonce = prefix ‖ i (u32) ‖ last (0x00 | 0x01),
//!                AAD   = stream header ‖ L
//! ```
//!
//! Everything here is pure: no I/O, so every failure class is unit-tested.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::kek::{KEK_ID_LEN, Kek, KekId};

/// The first bytes of every backup object.
pub const MAGIC: [u8; 8] = *b"REKEYBAK";
/// The first bytes of a backup's key escrow (the same format, another magic,
/// so neither can pass for the other: the magic is authenticated).
pub const ESCROW_MAGIC: [u8; 8] = *b"REKEYESC";

/// What an object in this format holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// An encrypted etcd snapshot (or file): `REKEYBAK`.
    Backup,
    /// The encryption-at-rest keys a backup needs, escrowed next to it: `REKEYESC`.
    KeyEscrow,
}

impl ObjectKind {
    /// Its magic bytes.
    pub fn magic(self) -> [u8; 8] {
        match self {
            Self::Backup => MAGIC,
            Self::KeyEscrow => ESCROW_MAGIC,
        }
    }
}
/// The format this build writes.
pub const VERSION: u16 = 1;
/// Bytes read before the version is known: magic, version, header length.
pub const PREAMBLE_LEN: usize = 12;
/// Total header bytes of version 1.
pub const HEADER_LEN: usize = 107;
/// Header bytes bound into every chunk as associated data.
pub const STREAM_HEADER_LEN: usize = 39;
/// Header bytes that are associated data of the key wrap.
pub const WRAP_AAD_LEN: usize = STREAM_HEADER_LEN + KEK_ID_LEN;
/// Random bytes that start every chunk nonce.
pub const PREFIX_LEN: usize = 7;
/// AES-GCM tag bytes.
pub const TAG_LEN: usize = 16;
/// The plaintext-length field in front of every chunk.
pub const LEN_FIELD: usize = 4;
/// Chunk overhead: length field and tag.
pub const CHUNK_OVERHEAD: usize = LEN_FIELD + TAG_LEN;
/// Smallest chunk size accepted.
pub const MIN_CHUNK: u32 = 1024;
/// Largest chunk size accepted (bounds memory when reading hostile input).
pub const MAX_CHUNK: u32 = 64 << 20;
/// The default chunk size (DESIGN.md).
pub const DEFAULT_CHUNK: u32 = 1 << 20;

const DATA_KEY_LEN: usize = 32;
const WRAP_NONCE_LEN: usize = 12;

/// Why a backup object was rejected. The first word says which class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The object does not start with the magic bytes.
    #[error("not a rekey backup: the object does not start with the magic bytes `REKEYBAK`")]
    NotABackup,
    /// The object is a backup's key escrow, not a backup (or the reverse).
    #[error("not a rekey {expected}: the object is a {found}")]
    WrongKind {
        /// What was asked for (`backup` or `key escrow`).
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// A version this build cannot read.
    #[error(
        "unsupported backup format version {0} (this build reads version {VERSION}); \
         use a newer rekey, or the object is damaged"
    )]
    UnsupportedVersion(u16),
    /// The KEK given is not the one the backup's data key is wrapped with.
    #[error(
        "wrong key: the backup's data key is wrapped with KEK {header}, but the key given has id {given}"
    )]
    WrongKey {
        /// The KEK id in the header.
        header: KekId,
        /// The id of the key given.
        given: KekId,
    },
    /// Something was altered: the text says what.
    #[error("tampered: {0}")]
    Tampered(String),
    /// The object ends early: the text says where.
    #[error("truncated: {0}")]
    Truncated(String),
    /// The backup is authentic but not the one asked for.
    #[error(
        "unexpected backup: the object holds backup {found}, not {expected} \
         (an older backup may have been put in its place)"
    )]
    UnexpectedId {
        /// The id asked for.
        expected: Uuid,
        /// The id in the object.
        found: Uuid,
    },
}

/// A parsed version-1 header (authenticity is checked by [`Header::unwrap`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// Backup or key escrow (the magic).
    pub kind: ObjectKind,
    /// The backup's id; bound into every chunk.
    pub backup_id: Uuid,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Random start of every chunk nonce.
    pub nonce_prefix: [u8; PREFIX_LEN],
    /// Which KEK wraps the data key.
    pub kek_id: KekId,
    /// Nonce of the key wrap.
    pub wrap_nonce: [u8; WRAP_NONCE_LEN],
    /// The wrapped data key: ciphertext and tag.
    pub wrapped_key: [u8; DATA_KEY_LEN + TAG_LEN],
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("backup_id", &self.backup_id)
            .field("chunk_size", &self.chunk_size)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// A backup's data key. Never printed, zeroized on drop.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

impl DataKey {
    fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; DATA_KEY_LEN]);
        rand::fill(&mut k[..]);
        Self(k)
    }
}

fn aead_key(bytes: &[u8; 32]) -> LessSafeKey {
    // AES-256 accepts any 32 bytes: this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key"))
}

/// Reads the first [`PREAMBLE_LEN`] bytes: checks magic and version, returns
/// the header length to read in all.
pub fn parse_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<usize, FormatError> {
    match parse_preamble_of(bytes)? {
        (len, ObjectKind::Backup) => Ok(len),
        (_, ObjectKind::KeyEscrow) => Err(FormatError::WrongKind {
            expected: "backup",
            found: "backup's key escrow (it holds encryption-at-rest keys, not a snapshot)",
        }),
    }
}

/// Like [`parse_preamble`], for either kind of object; returns which.
pub fn parse_preamble_of(bytes: &[u8; PREAMBLE_LEN]) -> Result<(usize, ObjectKind), FormatError> {
    let kind = match <[u8; 8]>::try_from(&bytes[..8]).expect("8 bytes") {
        MAGIC => ObjectKind::Backup,
        ESCROW_MAGIC => ObjectKind::KeyEscrow,
        _ => return Err(FormatError::NotABackup),
    };
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let len = u16::from_be_bytes([bytes[10], bytes[11]]) as usize;
    if len != HEADER_LEN {
        return Err(FormatError::Tampered(format!(
            "the header length field says {len} bytes; version {VERSION} headers are {HEADER_LEN}"
        )));
    }
    Ok((len, kind))
}

impl Header {
    /// A new header for a backup under `kek`, and its fresh data key.
    pub fn new(kek: &Kek, chunk_size: u32, backup_id: Uuid) -> (Self, DataKey) {
        Self::new_of(ObjectKind::Backup, kek, chunk_size, backup_id)
    }

    /// A new header of `kind` under `kek`, and its fresh data key.
    pub fn new_of(
        kind: ObjectKind,
        kek: &Kek,
        chunk_size: u32,
        backup_id: Uuid,
    ) -> (Self, DataKey) {
        let key = DataKey::generate();
        let mut nonce_prefix = [0u8; PREFIX_LEN];
        rand::fill(&mut nonce_prefix[..]);
        let mut header = Self {
            kind,
            backup_id,
            chunk_size,
            nonce_prefix,
            kek_id: kek.id(),
            wrap_nonce: [0; WRAP_NONCE_LEN],
            wrapped_key: [0; DATA_KEY_LEN + TAG_LEN],
        };
        header.wrap(kek, &key);
        (header, key)
    }

    /// Wraps `key` under `kek`: sets the KEK id, a fresh wrap nonce and the wrapped key.
    fn wrap(&mut self, kek: &Kek, key: &DataKey) {
        self.kek_id = kek.id();
        rand::fill(&mut self.wrap_nonce[..]);
        let mut out = [0u8; DATA_KEY_LEN + TAG_LEN];
        out[..DATA_KEY_LEN].copy_from_slice(&key.0[..]);
        let aad = self.wrap_aad(self.kek_id);
        let tag = aead_key(kek.expose())
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(self.wrap_nonce),
                Aad::from(&aad[..]),
                &mut out[..DATA_KEY_LEN],
            )
            .expect("sealing 32 bytes cannot fail");
        out[DATA_KEY_LEN..].copy_from_slice(tag.as_ref());
        self.wrapped_key = out;
    }

    /// Unwraps the data key with `kek`, which authenticates the whole header.
    ///
    /// A KEK whose id differs from the header's is the wrong key — unless the
    /// data key unwraps with the header's KEK id replaced by the given key's,
    /// in which case the KEK id field itself was altered.
    pub fn unwrap(&self, kek: &Kek) -> Result<DataKey, FormatError> {
        if let Some(key) = self.try_unwrap(kek, self.kek_id) {
            return Ok(key);
        }
        if self.kek_id != kek.id() {
            if self.try_unwrap(kek, kek.id()).is_some() {
                return Err(FormatError::Tampered(
                    "the header's KEK id field was altered".into(),
                ));
            }
            return Err(FormatError::WrongKey {
                header: self.kek_id,
                given: kek.id(),
            });
        }
        Err(FormatError::Tampered(
            "the header does not authenticate under its KEK: its backup id, chunk size, \
             nonce prefix, wrap nonce or wrapped key was altered"
                .into(),
        ))
    }

    fn try_unwrap(&self, kek: &Kek, kek_id: KekId) -> Option<DataKey> {
        let aad = self.wrap_aad(kek_id);
        let mut out = Zeroizing::new([0u8; DATA_KEY_LEN]);
        aead_key(kek.expose())
            .open_separate_gather(
                Nonce::assume_unique_for_key(self.wrap_nonce),
                Aad::from(&aad[..]),
                &self.wrapped_key[..DATA_KEY_LEN],
                &self.wrapped_key[DATA_KEY_LEN..],
                &mut out[..],
            )
            .ok()?;
        Some(DataKey(out))
    }

    /// The same backup with its data key re-wrapped under `new` (body unchanged).
    pub fn rewrap(&self, old: &Kek, new: &Kek) -> Result<Self, FormatError> {
        let key = self.unwrap(old)?;
        let mut out = self.clone();
        out.wrap(new, &key);
        Ok(out)
    }

    /// Checks that the chunk size is one this build accepts (after [`Header::unwrap`],
    /// a bad value here means the writer was not rekey).
    pub fn check_chunk_size(&self) -> Result<(), FormatError> {
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size) {
            return Err(FormatError::Tampered(format!(
                "chunk size {} is outside {MIN_CHUNK}..={MAX_CHUNK}",
                self.chunk_size
            )));
        }
        Ok(())
    }

    /// The bytes bound into every chunk.
    pub fn stream_header(&self) -> [u8; STREAM_HEADER_LEN] {
        let mut b = [0u8; STREAM_HEADER_LEN];
        b[..8].copy_from_slice(&self.kind.magic());
        b[8..10].copy_from_slice(&VERSION.to_be_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_be_bytes());
        b[12..28].copy_from_slice(self.backup_id.as_bytes());
        b[28..32].copy_from_slice(&self.chunk_size.to_be_bytes());
        b[32..39].copy_from_slice(&self.nonce_prefix);
        b
    }

    fn wrap_aad(&self, kek_id: KekId) -> [u8; WRAP_AAD_LEN] {
        let mut b = [0u8; WRAP_AAD_LEN];
        b[..STREAM_HEADER_LEN].copy_from_slice(&self.stream_header());
        b[STREAM_HEADER_LEN..].copy_from_slice(&kek_id.0);
        b
    }

    /// The header as stored.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..WRAP_AAD_LEN].copy_from_slice(&self.wrap_aad(self.kek_id));
        b[47..59].copy_from_slice(&self.wrap_nonce);
        b[59..107].copy_from_slice(&self.wrapped_key);
        b
    }

    /// Parses a stored header of either kind (magic, version and length are
    /// checked again).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self, FormatError> {
        let mut pre = [0u8; PREAMBLE_LEN];
        pre.copy_from_slice(&b[..PREAMBLE_LEN]);
        let (_, kind) = parse_preamble_of(&pre)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[12..28]);
        let mut nonce_prefix = [0u8; PREFIX_LEN];
        nonce_prefix.copy_from_slice(&b[32..39]);
        let mut kek_id = [0u8; KEK_ID_LEN];
        kek_id.copy_from_slice(&b[39..47]);
        let mut wrap_nonce = [0u8; WRAP_NONCE_LEN];
        wrap_nonce.copy_from_slice(&b[47..59]);
        let mut wrapped_key = [0u8; DATA_KEY_LEN + TAG_LEN];
        wrapped_key.copy_from_slice(&b[59..107]);
        Ok(Self {
            kind,
            backup_id: Uuid::from_bytes(id),
            chunk_size: u32::from_be_bytes([b[28], b[29], b[30], b[31]]),
            nonce_prefix,
            kek_id: KekId(kek_id),
            wrap_nonce,
            wrapped_key,
        })
    }
}

/// Seals and opens the chunks of one backup (shared by the crypto workers).
pub struct ChunkCipher {
    key: LessSafeKey,
    stream_header: [u8; STREAM_HEADER_LEN],
    prefix: [u8; PREFIX_LEN],
    chunk_size: u32,
}

impl std::fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCipher")
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

/// What follows a chunk in the object, as seen by the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Another chunk's length field.
    More,
    /// The end of the object.
    End,
    /// 1..=3 stray bytes, then the end.
    Stray(usize),
}

/// The verdict on one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Authentic, and more chunks follow.
    Middle,
    /// Authentic, and it is the final chunk.
    Last,
}

impl ChunkCipher {
    /// The cipher for a header and its (unwrapped or fresh) data key.
    pub fn new(header: &Header, key: &DataKey) -> Self {
        Self {
            key: aead_key(&key.0),
            stream_header: header.stream_header(),
            prefix: header.nonce_prefix,
            chunk_size: header.chunk_size,
        }
    }

    /// Plaintext bytes per full chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size as usize
    }

    fn nonce(&self, index: u32, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        n[..PREFIX_LEN].copy_from_slice(&self.prefix);
        n[PREFIX_LEN..11].copy_from_slice(&index.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::assume_unique_for_key(n)
    }

    fn aad(&self, len: u32) -> [u8; STREAM_HEADER_LEN + LEN_FIELD] {
        let mut a = [0u8; STREAM_HEADER_LEN + LEN_FIELD];
        a[..STREAM_HEADER_LEN].copy_from_slice(&self.stream_header);
        a[STREAM_HEADER_LEN..].copy_from_slice(&len.to_be_bytes());
        a
    }

    /// Seals a chunk record in place. `record` is `[4 bytes][plaintext][16 bytes]`:
    /// the length field and the tag are filled in.
    pub fn seal(&self, index: u32, last: bool, record: &mut [u8]) {
        let plain_len = record.len() - CHUNK_OVERHEAD;
        debug_assert!(plain_len <= self.chunk_size as usize);
        debug_assert!(last || plain_len == self.chunk_size as usize);
        let len = plain_len as u32;
        record[..LEN_FIELD].copy_from_slice(&len.to_be_bytes());
        let aad = self.aad(len);
        let (body, tag_out) = record[LEN_FIELD..].split_at_mut(plain_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(index, last), Aad::from(&aad[..]), body)
            .expect("a chunk within the size limit always seals");
        tag_out.copy_from_slice(tag.as_ref());
    }

    fn open_as(&self, index: u32, last: bool, record: &[u8], out: &mut [u8]) -> bool {
        let len = u32::from_be_bytes([record[0], record[1], record[2], record[3]]);
        let (body, tag) = record[LEN_FIELD..].split_at(record.len() - CHUNK_OVERHEAD);
        let aad = self.aad(len);
        self.key
            .open_separate_gather(self.nonce(index, last), Aad::from(&aad[..]), body, tag, out)
            .is_ok()
    }

    /// Authenticates and decrypts one complete record (`[len][ciphertext][tag]`)
    /// into `out` (`len` bytes), given what the reader saw after it.
    ///
    /// Failures are classified: a complete chunk that is really a middle chunk
    /// followed by the end is truncation; a final chunk followed by more data
    /// is extension; anything else that does not authenticate is tampering
    /// (altered, reordered, or spliced from another backup).
    pub fn open(
        &self,
        index: u32,
        record: &[u8],
        after: After,
        out: &mut [u8],
    ) -> Result<Opened, FormatError> {
        let len = record.len() - CHUNK_OVERHEAD;
        let full = len == self.chunk_size as usize;
        // A short chunk is always the last; a full one is last when nothing follows.
        let expect_last = !full || after != After::More;
        if self.open_as(index, expect_last, record, out) {
            return match (expect_last, after) {
                (false, _) => Ok(Opened::Middle),
                (true, After::End) => Ok(Opened::Last),
                (true, After::More) => Err(FormatError::Tampered(format!(
                    "data follows the final chunk (#{index}): the object was extended"
                ))),
                (true, After::Stray(n)) => Err(FormatError::Tampered(format!(
                    "{n} stray bytes follow the final chunk (#{index}): the object was extended"
                ))),
            };
        }
        if full && self.open_as(index, !expect_last, record, out) {
            return Err(if expect_last {
                match after {
                    After::Stray(n) => FormatError::Truncated(format!(
                        "the object ends {n} bytes into chunk #{}: the end of the backup is missing",
                        index as u64 + 1
                    )),
                    _ => FormatError::Truncated(format!(
                        "the object ends after chunk #{index}, which is not the final chunk: \
                         the end of the backup is missing"
                    )),
                }
            } else {
                FormatError::Tampered(format!(
                    "data follows the final chunk (#{index}): the object was extended"
                ))
            });
        }
        Err(FormatError::Tampered(format!(
            "chunk #{index} does not authenticate: it was altered, moved, or taken from another backup"
        )))
    }

    /// A record cut short: `present` is what was read of a chunk whose length
    /// field says `declared` plaintext bytes. If the bytes present authenticate
    /// as a complete final chunk, the length field was altered; otherwise the
    /// object was truncated.
    pub fn classify_short_record(&self, index: u32, declared: u32, present: &[u8]) -> FormatError {
        if present.len() >= CHUNK_OVERHEAD {
            let real_len = (present.len() - CHUNK_OVERHEAD) as u32;
            let mut record = present.to_vec();
            record[..LEN_FIELD].copy_from_slice(&real_len.to_be_bytes());
            let mut out = vec![0u8; real_len as usize];
            if self.open_as(index, true, &record, &mut out) {
                return FormatError::Tampered(format!(
                    "the length field of chunk #{index} was altered (says {declared} bytes, holds {real_len})"
                ));
            }
        }
        FormatError::Truncated(format!(
            "the object ends inside chunk #{index}: {} of its {} bytes are present",
            present.len(),
            declared as usize + CHUNK_OVERHEAD
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kek: &Kek) -> (Header, DataKey) {
        Header::new(kek, 1024, Uuid::new_v4())
    }

    #[test]
    fn header_round_trips_and_unwraps() {
        let kek = Kek::generate();
        let (h, key) = header(&kek);
        let bytes = h.encode();
        assert_eq!(&bytes[..8], b"REKEYBAK");
        let mut pre = [0u8; PREAMBLE_LEN];
        pre.copy_from_slice(&bytes[..PREAMBLE_LEN]);
        assert_eq!(parse_preamble(&pre).unwrap(), HEADER_LEN);
        let parsed = Header::parse(&bytes).unwrap();
        assert_eq!(parsed, h);
        let unwrapped = parsed.unwrap(&kek).unwrap();
        assert_eq!(*unwrapped.0, *key.0);
    }

    #[test]
    fn every_header_byte_is_authenticated() {
        let kek = Kek::generate();
        let (h, _) = header(&kek);
        let bytes = h.encode();
        for i in 0..HEADER_LEN {
            let mut b = bytes;
            b[i] ^= 0x01;
            let result = Header::parse(&b).and_then(|h| h.unwrap(&kek).map(|_| ()));
            let err = result.expect_err(&format!("flipped header byte {i} accepted"));
            let expected_class = match i {
                0..=7 => matches!(err, FormatError::NotABackup),
                8..=9 => matches!(err, FormatError::UnsupportedVersion(_)),
                _ => matches!(err, FormatError::Tampered(_)),
            };
            assert!(expected_class, "byte {i}: {err}");
        }
    }

    #[test]
    fn wrong_kek_is_named_as_such() {
        let kek = Kek::generate();
        let (h, _) = header(&kek);
        let other = Kek::generate();
        match h.unwrap(&other) {
            Err(FormatError::WrongKey { header, given }) => {
                assert_eq!(header, kek.id());
                assert_eq!(given, other.id());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rewrap_changes_only_the_envelope() {
        let a = Kek::generate();
        let b = Kek::generate();
        let (h, key) = header(&a);
        let r = h.rewrap(&a, &b).unwrap();
        assert_eq!(r.stream_header(), h.stream_header());
        assert_eq!(r.kek_id, b.id());
        assert_eq!(*r.unwrap(&b).unwrap().0, *key.0);
        assert!(matches!(r.unwrap(&a), Err(FormatError::WrongKey { .. })));
        assert!(matches!(
            h.rewrap(&b, &a),
            Err(FormatError::WrongKey { .. })
        ));
    }

    fn sealed(c: &ChunkCipher, index: u32, last: bool, plain: &[u8]) -> Vec<u8> {
        let mut rec = vec![0u8; plain.len() + CHUNK_OVERHEAD];
        rec[LEN_FIELD..LEN_FIELD + plain.len()].copy_from_slice(plain);
        c.seal(index, last, &mut rec);
        rec
    }

    #[test]
    fn chunks_classify_truncation_extension_and_tampering() {
        let kek = Kek::generate();
        let (h, key) = header(&kek);
        let c = ChunkCipher::new(&h, &key);
        let full = vec![9u8; 1024];
        let mut out = vec![0u8; 1024];

        let mid = sealed(&c, 0, false, &full);
        assert_eq!(c.open(0, &mid, After::More, &mut out), Ok(Opened::Middle));
        assert_eq!(out, full);
        assert!(matches!(
            c.open(0, &mid, After::End, &mut out),
            Err(FormatError::Truncated(_))
        ));
        assert!(matches!(
            c.open(0, &mid, After::Stray(2), &mut out),
            Err(FormatError::Truncated(_))
        ));
        // Wrong position: reordered.
        assert!(matches!(
            c.open(1, &mid, After::More, &mut out),
            Err(FormatError::Tampered(_))
        ));

        let last_full = sealed(&c, 1, true, &full);
        assert_eq!(
            c.open(1, &last_full, After::End, &mut out),
            Ok(Opened::Last)
        );
        assert!(matches!(
            c.open(1, &last_full, After::More, &mut out),
            Err(FormatError::Tampered(m)) if m.contains("extended")
        ));

        let short = sealed(&c, 2, true, b"tail");
        let mut o = vec![0u8; 4];
        assert_eq!(c.open(2, &short, After::End, &mut o), Ok(Opened::Last));
        assert_eq!(&o, b"tail");
        assert!(matches!(
            c.open(2, &short, After::Stray(1), &mut o),
            Err(FormatError::Tampered(m)) if m.contains("extended")
        ));

        // Same key material, another backup's stream header: rejected.
        let (h2, _) = header(&kek);
        let c2 = ChunkCipher::new(&h2, &key);
        assert!(matches!(
            c2.open(0, &mid, After::More, &mut out),
            Err(FormatError::Tampered(_))
        ));
    }

    #[test]
    fn short_records_tell_truncation_from_an_altered_length() {
        let kek = Kek::generate();
        let (h, key) = header(&kek);
        let c = ChunkCipher::new(&h, &key);
        let rec = sealed(&c, 0, true, &[5u8; 100]);
        assert!(matches!(
            c.classify_short_record(0, 100, &rec[..50]),
            FormatError::Truncated(_)
        ));
        assert!(matches!(
            c.classify_short_record(0, 300, &rec),
            FormatError::Tampered(m) if m.contains("length field")
        ));
    }
}
