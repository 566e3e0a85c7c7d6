//! Encrypted etcd backups: stream format, snapshot source, upload.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::units::ByteSize;

/// `[backup]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// `file:///...`, `s3://bucket/prefix/`, `gs://`, `az://`, or a local path.
    pub destination: String,
    /// Key-encryption key: 32 random bytes, raw or base64.
    pub kek_file: PathBuf,
    /// Plaintext bytes per encrypted chunk.
    #[serde(default = "default_chunk")]
    pub chunk_size: ByteSize,
    /// How many backups `prune` keeps.
    pub keep: Option<u32>,
}

fn default_chunk() -> ByteSize {
    ByteSize(1 << 20)
}

impl BackupConfig {
    /// Checks field values; errors are `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.destination.is_empty() {
            return Err(("destination".into(), "must not be empty".into()));
        }
        if self.chunk_size.0 < 1024 || self.chunk_size.0 > (64 << 20) {
            return Err((
                "chunk_size".into(),
                format!("{} is outside 1KiB..64MiB", self.chunk_size),
            ));
        }
        Ok(())
    }
}
