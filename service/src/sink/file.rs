//! The `file` sink: a directory with `tls.crt`, `tls.key`, `ca.crt` (or `token`).
//!
//! Each file is replaced atomically: written to a temp file in the same
//! directory, fsynced, renamed over the old one; the directory is fsynced
//! after the renames. The marker `.rekey-version` is written last: it is the
//! commit point that recovery reads. `tls.key` and `token` are mode 0600.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use secrecy::ExposeSecret;

use super::model::{Material, Publication, Sink, SinkError};

/// Name of the marker file holding the published version id.
pub const VERSION_MARKER: &str = ".rekey-version";

/// A directory sink.
#[derive(Debug, Clone)]
pub struct FileSink {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Stages `bytes` as a temp file next to `path` (fsynced), to be renamed into place.
fn stage(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(PathBuf, PathBuf), SinkError> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    Ok((tmp, target))
}

impl FileSink {
    /// A sink writing into `dir` (created on first publish).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Publishes synchronously (the engine calls this on a blocking thread).
    pub fn publish_blocking(&self, p: &Publication<'_>) -> Result<(), SinkError> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut staged = Vec::with_capacity(3);
        match p.material {
            Material::Certificate {
                chain_pem,
                key_pem,
                ca_pem,
            } => {
                // Key first: a consumer that sees the new tls.crt must find its key.
                staged.push(stage(
                    dir,
                    "tls.key",
                    key_pem.expose_secret().as_bytes(),
                    0o600,
                )?);
                staged.push(stage(dir, "tls.crt", chain_pem.as_bytes(), 0o644)?);
                staged.push(stage(dir, "ca.crt", ca_pem.as_bytes(), 0o644)?);
            }
            Material::Token { token } => {
                staged.push(stage(
                    dir,
                    "token",
                    token.expose_secret().as_bytes(),
                    0o600,
                )?);
            }
        }
        staged.push(stage(
            dir,
            VERSION_MARKER,
            format!("{}\n", p.version).as_bytes(),
            0o644,
        )?);
        for (i, (tmp, target)) in staged.iter().enumerate() {
            std::fs::rename(tmp, target).map_err(io(target))?;
            if i == 0 {
                crate::crash::point("sink-mid-publish");
            }
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }

    /// Reads the marker synchronously.
    pub fn published_version_blocking(&self) -> Result<Option<i64>, SinkError> {
        let path = self.dir.join(VERSION_MARKER);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn publish(&self, publication: &Publication<'_>) -> Result<(), SinkError> {
        let sink = self.clone();
        let (credential, version, not_after, material, adopt) = (
            publication.credential.to_string(),
            publication.version,
            publication.not_after,
            publication.material.clone(),
            publication.adopt,
        );
        tokio::task::spawn_blocking(move || {
            sink.publish_blocking(&Publication {
                credential: &credential,
                version,
                not_after,
                material: &material,
                adopt,
            })
        })
        .await
        .map_err(|e| SinkError::Io {
            path: self.dir.display().to_string(),
            source: std::io::Error::other(e),
        })?
    }

    async fn published_version(&self) -> Result<Option<i64>, SinkError> {
        let sink = self.clone();
        tokio::task::spawn_blocking(move || sink.published_version_blocking())
            .await
            .map_err(|e| SinkError::Io {
                path: self.dir.display().to_string(),
                source: std::io::Error::other(e),
            })?
    }

    fn describe(&self) -> String {
        format!("file:{}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use secrecy::SecretString;

    use super::*;

    #[test]
    fn publishes_files_with_modes_and_marker() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path().join("web"));
        assert_eq!(sink.published_version_blocking().unwrap(), None);
        let m = Material::Certificate {
            chain_pem: "CHAIN".into(),
            key_pem: SecretString::from("KEY"),
            ca_pem: "CA".into(),
        };
        let p = Publication {
            credential: "c",
            version: 7,
            not_after: chrono::Utc::now(),
            material: &m,
            adopt: false,
        };
        sink.publish_blocking(&p).unwrap();
        let web = dir.path().join("web");
        assert_eq!(
            std::fs::read_to_string(web.join("tls.crt")).unwrap(),
            "CHAIN"
        );
        assert_eq!(
            std::fs::metadata(web.join("tls.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(sink.published_version_blocking().unwrap(), Some(7));
        let leftovers: Vec<_> = std::fs::read_dir(&web)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
