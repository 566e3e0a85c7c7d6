//! [`BackupError`]: why a backup operation failed, and whether the user's
//! input is at fault.

use super::{escrow, format, kek, location, snapshot, stream};
use crate::store::StoreError;

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The KEK could not be loaded.
    #[error(transparent)]
    Kek(#[from] kek::KekError),
    /// A location is unusable, or an object-store request failed.
    #[error(transparent)]
    Location(#[from] location::LocationError),
    /// Encrypting or decrypting failed (the text says whether the input was bad).
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    /// The object is not an authentic backup.
    #[error(transparent)]
    Format(#[from] format::FormatError),
    /// The etcd snapshot could not be taken or is invalid.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file operation failed.
    #[error("{0}")]
    Io(String),
    /// The encryption-at-rest keys could not be counted (the
    /// EncryptionConfiguration is unreadable or invalid, or etcd failed).
    #[error("encryption keys: {message}")]
    Keys {
        /// What went wrong.
        message: String,
        /// The configuration file is at fault.
        bad_input: bool,
    },
    /// The key escrow could not be written or read.
    #[error(transparent)]
    Escrow(#[from] escrow::EscrowError),
}

impl BackupError {
    /// True when the user's input is at fault (key file, location, ciphertext): exit 2.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Kek(_) | Self::Format(_) => true,
            Self::Location(e) => e.is_bad_input(),
            Self::Stream(e) => e.is_bad_input(),
            Self::Keys { bad_input, .. } => *bad_input,
            _ => false,
        }
    }
}
