//! `[backup]`: where encrypted etcd backups go, under which key, how many
//! are kept, and when `rekey serve` takes one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{format, location};
use crate::{
    secret::{SecretString, serialize_redacted},
    units::ByteSize,
};

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
    /// When `serve` takes a backup (cron, `sec min hour dom mon dow`); none: only on request.
    pub schedule: Option<String>,
    /// S3-compatible endpoint, e.g. `http://minio.backup:9000` (default: AWS, or `AWS_ENDPOINT_URL`).
    pub s3_endpoint: Option<String>,
    /// S3 region (default `AWS_REGION`, else `us-east-1` with a custom endpoint).
    pub s3_region: Option<String>,
    /// Path-style S3 requests (`endpoint/bucket/key`), needed by most S3-compatible services.
    #[serde(default)]
    pub s3_path_style: bool,
    /// S3 access key id (default `AWS_ACCESS_KEY_ID`).
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key (default `AWS_SECRET_ACCESS_KEY`); never printed.
    #[serde(default, serialize_with = "serialize_redacted")]
    pub s3_secret_access_key: Option<SecretString>,
    /// Google Cloud Storage endpoint, e.g. a Private Service Connect endpoint
    /// or an emulator (default `https://storage.googleapis.com`, or `GOOGLE_BASE_URL`).
    pub gcs_endpoint: Option<String>,
}

fn default_chunk() -> ByteSize {
    ByteSize(format::DEFAULT_CHUNK.into())
}

impl BackupConfig {
    /// A config for `destination` and `kek_file` with every other field at its default.
    pub fn new(destination: impl Into<String>, kek_file: impl Into<PathBuf>) -> Self {
        Self {
            destination: destination.into(),
            kek_file: kek_file.into(),
            chunk_size: default_chunk(),
            keep: None,
            schedule: None,
            s3_endpoint: None,
            s3_region: None,
            s3_path_style: false,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            gcs_endpoint: None,
        }
    }

    /// Checks field values; errors are `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.destination.is_empty() {
            return Err(("destination".into(), "must not be empty".into()));
        }
        location::Destination::parse(&self.destination, &location::StoreSettings::default())
            .map_err(|e| ("destination".into(), e.to_string()))?;
        if self.kek_file.as_os_str().is_empty() {
            return Err(("kek_file".into(), "must not be empty".into()));
        }
        let range = u64::from(format::MIN_CHUNK)..=u64::from(format::MAX_CHUNK);
        if !range.contains(&self.chunk_size.0) {
            return Err((
                "chunk_size".into(),
                format!("{} is outside 1KiB..64MiB", self.chunk_size),
            ));
        }
        if self.keep == Some(0) {
            return Err((
                "keep".into(),
                "must be at least 1 (prune never deletes the newest backup)".into(),
            ));
        }
        if let Some(s) = &self.schedule {
            crate::schedule::parse_cron(s).map_err(|m| ("schedule".into(), m))?;
        }
        for (field, value) in [
            ("s3_endpoint", &self.s3_endpoint),
            ("gcs_endpoint", &self.gcs_endpoint),
        ] {
            if let Some(e) = value {
                let ok = url::Url::parse(e)
                    .map(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                    .unwrap_or(false);
                if !ok {
                    return Err((
                        field.into(),
                        format!("`{e}` is not an http:// or https:// URL"),
                    ));
                }
            }
        }
        if self.s3_access_key_id.is_some() != self.s3_secret_access_key.is_some() {
            return Err((
                "s3_secret_access_key".into(),
                "s3_access_key_id and s3_secret_access_key go together".into(),
            ));
        }
        Ok(())
    }

    /// The object-store settings of this section (S3, Google Cloud Storage).
    pub fn store_settings(&self) -> location::StoreSettings {
        location::StoreSettings {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_path_style: self.s3_path_style,
            s3_access_key_id: self.s3_access_key_id.clone(),
            s3_secret_access_key: self.s3_secret_access_key.clone(),
            gcs_endpoint: self.gcs_endpoint.clone(),
        }
    }

    /// The chunk size as the format stores it.
    pub fn chunk_size_u32(&self) -> u32 {
        u32::try_from(self.chunk_size.0).unwrap_or(format::DEFAULT_CHUNK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_fields() {
        let good = BackupConfig::new("s3://bucket/etcd/", "/etc/rekey/kek");
        assert!(good.validate().is_ok());
        let mut c = good.clone();
        c.destination = "ftp://x/y".into();
        assert_eq!(c.validate().unwrap_err().0, "destination");
        let mut c = good.clone();
        c.chunk_size = ByteSize(100);
        assert_eq!(c.validate().unwrap_err().0, "chunk_size");
        let mut c = good.clone();
        c.schedule = Some("every day".into());
        assert_eq!(c.validate().unwrap_err().0, "schedule");
        let mut c = good.clone();
        c.s3_endpoint = Some("localhost:9000".into());
        assert_eq!(c.validate().unwrap_err().0, "s3_endpoint");
        let mut c = good.clone();
        c.gcs_endpoint = Some("storage.example:443".into());
        assert_eq!(c.validate().unwrap_err().0, "gcs_endpoint");
        let mut c = good.clone();
        c.gcs_endpoint = Some("https://storage-psc.p.googleapis.com".into());
        assert!(c.validate().is_ok());
        let mut c = good.clone();
        c.keep = Some(0);
        assert_eq!(c.validate().unwrap_err().0, "keep");
        let mut c = good;
        c.s3_access_key_id = Some("AKIA".into());
        assert_eq!(c.validate().unwrap_err().0, "s3_secret_access_key");
    }

    #[test]
    fn secret_key_never_prints() {
        let mut c = BackupConfig::new("s3://b/p/", "/k");
        c.s3_access_key_id = Some("AKIA".into());
        c.s3_secret_access_key = Some(SecretString::from("very-secret"));
        assert!(!format!("{c:?}").contains("very-secret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("very-secret"));
    }
}
