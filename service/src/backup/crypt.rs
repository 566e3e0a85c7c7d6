//! One-off encryption and decryption between locations (`rekey backup
//! encrypt | decrypt`), no database involved.
//!
//! An output file appears only once complete (the location's writer keeps it
//! under a temporary name until [`Writer::commit`](super::location::Writer::commit)); an existing
//! local file is replaced only when asked. When decryption to standard output
//! fails midway, the error says how many authenticated bytes already went
//! out, so nobody mistakes a cut-off stream for a whole one.

use std::{
    fmt,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use serde::Serialize;
use tokio::io::AsyncWrite;
use uuid::Uuid;

use super::{BackupError, kek::Kek, location::Target, progress::Progress, stream};

/// Why an encryption or decryption failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// The local output file exists and replacing it was not asked for.
    #[error("{} exists: pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// Opening, creating or committing a location failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Encrypting failed midway; the output was discarded.
    #[error("encrypting: nothing was written")]
    Encrypt(#[source] BackupError),
    /// Decrypting failed midway; what became of the output.
    #[error("decrypting {location}: {written}")]
    Decrypt {
        /// The backup being decrypted.
        location: String,
        /// What reached the output.
        written: Written,
        /// Why it failed.
        #[source]
        source: Box<BackupError>,
    },
}

impl CryptError {
    /// True when the user's input is at fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Exists(_) => true,
            Self::Backup(e) | Self::Encrypt(e) => e.is_bad_input(),
            Self::Decrypt { source, .. } => source.is_bad_input(),
        }
    }
}

/// What a failed decryption left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The output file was discarded.
    NoFile,
    /// Nothing reached standard output.
    NothingToStdout,
    /// This many authenticated bytes reached standard output: incomplete.
    IncompleteStdout(u64),
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoFile => f.write_str("no output file was written"),
            Self::NothingToStdout => f.write_str("nothing was written to standard output"),
            Self::IncompleteStdout(n) => write!(
                f,
                "the plaintext on standard output is INCOMPLETE — the stream \
                 was cut off after {n} authenticated bytes; discard it"
            ),
        }
    }
}

/// Refuses to replace an existing local file unless `force`.
pub fn check_overwrite(target: &Target, force: bool) -> Result<(), CryptError> {
    if let Target::File(p) = target
        && !force
        && std::fs::metadata(p).is_ok_and(|m| m.is_file())
    {
        return Err(CryptError::Exists(p.clone()));
    }
    Ok(())
}

/// What to encrypt, where to.
#[derive(Debug)]
pub struct EncryptRequest {
    /// The plaintext: a local file or standard input.
    pub input: Target,
    /// Where the backup object goes.
    pub output: Target,
    /// The key-encryption key.
    pub kek: Kek,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Replace an existing local output file.
    pub force: bool,
    /// Where progress goes (its length is set when the input's size is known).
    pub progress: Progress,
}

/// The result of `rekey backup encrypt` (its `--json` document).
#[derive(Debug, Clone, Serialize)]
pub struct EncryptReport {
    /// The new backup's id.
    pub backup_id: Uuid,
    /// The KEK that wraps its data key.
    pub kek_id: String,
    /// Where it was written.
    pub location: String,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Plaintext bytes read.
    pub plaintext_bytes: u64,
    /// Bytes written (ciphertext).
    pub size_bytes: u64,
    /// Chunks written.
    pub chunks: u64,
}

/// Encrypts `input` into a new backup object at `output`, which appears only
/// once complete.
pub async fn encrypt(req: &EncryptRequest) -> Result<EncryptReport, CryptError> {
    check_overwrite(&req.output, req.force)?;
    let (source, size) = req.input.open().await.map_err(BackupError::from)?;
    if let Some(n) = size {
        req.progress.set_length(n);
    }
    let mut writer = req.output.create().await.map_err(BackupError::from)?;
    let opts = stream::EncryptOptions {
        chunk_size: req.chunk_size,
        backup_id: Uuid::new_v4(),
        hash: false,
    };
    let result = stream::encrypt(source, writer.sink(), &req.kek, &opts, &req.progress).await;
    let enc = match result {
        Ok(enc) => {
            writer.commit().await.map_err(BackupError::from)?;
            enc
        }
        Err(e) => {
            writer.abort().await;
            return Err(CryptError::Encrypt(e.into()));
        }
    };
    Ok(EncryptReport {
        backup_id: enc.backup_id,
        kek_id: enc.kek_id.to_string(),
        location: req.output.display(),
        chunk_size: enc.chunk_size,
        plaintext_bytes: enc.plaintext_bytes,
        size_bytes: enc.ciphertext_bytes,
        chunks: enc.chunks,
    })
}

/// What to decrypt, where to.
#[derive(Debug)]
pub struct DecryptRequest {
    /// The backup object.
    pub from: Target,
    /// Where the plaintext goes: a local file or standard output (never
    /// object storage: the caller refuses that).
    pub out: Target,
    /// The key-encryption key.
    pub kek: Kek,
    /// Refuse the object unless it holds this backup id.
    pub expect_id: Option<Uuid>,
    /// Replace an existing output file.
    pub force: bool,
    /// Where progress goes (its length is set when the object's size is known).
    pub progress: Progress,
}

/// The result of `rekey backup decrypt` (its `--json` document).
#[derive(Debug, Clone, Serialize)]
pub struct DecryptReport {
    /// The backup's id.
    pub backup_id: Uuid,
    /// The KEK that wrapped its data key.
    pub kek_id: String,
    /// Where the backup was.
    pub location: String,
    /// Where the plaintext went.
    pub output: String,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Plaintext bytes written.
    pub plaintext_bytes: u64,
    /// Bytes read (ciphertext).
    pub size_bytes: u64,
    /// Chunks read.
    pub chunks: u64,
}

/// Decrypts a backup object; an output file appears only once the final
/// chunk authenticated.
pub async fn decrypt(req: &DecryptRequest) -> Result<DecryptReport, CryptError> {
    check_overwrite(&req.out, req.force)?;
    let (source, size) = req.from.open().await.map_err(BackupError::from)?;
    if let Some(n) = size {
        req.progress.set_length(n);
    }
    let mut writer = req.out.create().await.map_err(BackupError::from)?;
    let opts = stream::DecryptOptions {
        expect_id: req.expect_id,
        hash: false,
    };
    let written = Arc::new(AtomicU64::new(0));
    let result = {
        let mut counting = Counting {
            inner: writer.sink(),
            count: Arc::clone(&written),
        };
        stream::decrypt(source, &mut counting, &req.kek, &opts, &req.progress).await
    };
    let dec = match result {
        Ok(d) => {
            writer.commit().await.map_err(BackupError::from)?;
            d
        }
        Err(e) => {
            writer.abort().await;
            let n = written.load(Ordering::Relaxed);
            let written = match (&req.out, n) {
                (Target::Stdio, 0) => Written::NothingToStdout,
                (Target::Stdio, n) => Written::IncompleteStdout(n),
                _ => Written::NoFile,
            };
            return Err(CryptError::Decrypt {
                location: req.from.display(),
                written,
                source: Box::new(e.into()),
            });
        }
    };
    Ok(DecryptReport {
        backup_id: dec.backup_id,
        kek_id: dec.kek_id.to_string(),
        location: req.from.display(),
        output: req.out.display(),
        chunk_size: dec.chunk_size,
        plaintext_bytes: dec.plaintext_bytes,
        size_bytes: dec.ciphertext_bytes,
        chunks: dec.chunks,
    })
}

/// Counts the bytes written through it (to say where a stream was cut off).
struct Counting<'a, W: ?Sized> {
    inner: &'a mut W,
    count: Arc<AtomicU64>,
}

impl<W: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counting<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.count.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_off_output_is_described() {
        let e = |written| CryptError::Decrypt {
            location: "file:///b/x.rkb".into(),
            written,
            source: Box::new(BackupError::Io("boom".into())),
        };
        assert_eq!(
            e(Written::NoFile).to_string(),
            "decrypting file:///b/x.rkb: no output file was written"
        );
        assert_eq!(
            e(Written::NothingToStdout).to_string(),
            "decrypting file:///b/x.rkb: nothing was written to standard output"
        );
        assert!(e(Written::IncompleteStdout(42)).to_string().contains(
            "INCOMPLETE — the stream was cut off after 42 authenticated bytes; discard it"
        ));
    }

    #[test]
    fn existing_files_are_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let target = Target::File(path.clone());
        assert!(check_overwrite(&target, false).is_ok());
        std::fs::write(&path, b"x").unwrap();
        let e = check_overwrite(&target, false).unwrap_err();
        assert!(e.is_bad_input());
        assert!(
            e.to_string()
                .ends_with("exists: pass --force to replace it")
        );
        assert!(check_overwrite(&target, true).is_ok());
    }
}
