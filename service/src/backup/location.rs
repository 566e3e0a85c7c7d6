//! Where backups are read from and written to: local files, standard I/O,
//! and object stores (`s3://`, `gs://`, `az://`) through `object_store`.
//!
//! A string containing `://` is a URL; anything else is a local path, and
//! `-` is standard input or output. `file://` URLs are local paths too.
//!
//! Writes never leave a partial object under the final name: local files are
//! written under a temporary name in the same directory and renamed after
//! fsync; object-store writes are (multipart) uploads that only appear when
//! completed, and are aborted on failure. Object-store requests are retried
//! with exponential backoff ([`retry_config`]).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::TryStreamExt;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, RetryConfig,
    aws::AmazonS3Builder,
    azure::MicrosoftAzureBuilder,
    buffered::BufWriter,
    gcp::{GoogleCloudStorageBuilder, GoogleConfigKey},
    path::Path as ObjectPath,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::stream::Source;

/// Part size of multipart uploads (S3 needs at least 5 MiB per part).
const UPLOAD_PART: usize = 8 << 20;
/// Parts uploaded at once: bounds memory at about `UPLOAD_PART * UPLOAD_CONCURRENCY`.
const UPLOAD_CONCURRENCY: usize = 4;

/// Why a location cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// The string is not a usable location.
    #[error("`{location}`: {message}")]
    Invalid {
        /// The location as given.
        location: String,
        /// What is wrong with it.
        message: String,
    },
    /// The object or file does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An object-store request failed (after retries).
    #[error("{location}: {source}")]
    Store {
        /// The object or prefix.
        location: String,
        /// The store's error.
        source: object_store::Error,
    },
}

impl LocationError {
    /// True when the user named something unusable or missing: exit code 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::Invalid { .. } | Self::NotFound(_))
    }

    fn store(location: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => Self::NotFound(location.to_string()),
            source => Self::Store {
                location: location.to_string(),
                source,
            },
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::NotFound(path.display().to_string())
        } else {
            Self::Io {
                path: path.display().to_string(),
                source,
            }
        }
    }
}

/// The object-store settings of `[backup]`: where S3 and Google Cloud
/// Storage requests go and how S3 signs them. Each is optional; the stores
/// also read their usual environment (`AWS_*`, `GOOGLE_*`), which these
/// values override.
#[derive(Debug, Clone, Default)]
pub struct StoreSettings {
    /// Endpoint of an S3-compatible service, e.g. `http://127.0.0.1:9000`.
    pub s3_endpoint: Option<String>,
    /// S3 region (default `us-east-1` when an endpoint is given).
    pub s3_region: Option<String>,
    /// Path-style S3 requests (`endpoint/bucket/key`), as most S3-compatible services need.
    pub s3_path_style: bool,
    /// S3 access key id.
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key.
    pub s3_secret_access_key: Option<SecretString>,
    /// Base URL of the Google Cloud Storage (XML) API, e.g. a Private Service
    /// Connect endpoint or an emulator (default `https://storage.googleapis.com`).
    pub gcs_endpoint: Option<String>,
}

/// The retry policy of every object-store request: up to 10 retries with
/// exponential backoff from 100 ms to 15 s, giving up after 3 minutes.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(180),
    }
}

fn invalid(location: &str, message: impl Into<String>) -> LocationError {
    LocationError::Invalid {
        location: location.to_string(),
        message: message.into(),
    }
}

/// An object store and the path of a prefix or object in it.
fn object_store_for(
    location: &str,
    url: &url::Url,
    settings: &StoreSettings,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath), LocationError> {
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let mut b = AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .with_retry(retry_config());
            if let Some(e) = &settings.s3_endpoint {
                b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                if settings.s3_region.is_none() {
                    b = b.with_region("us-east-1");
                }
            }
            if let Some(r) = &settings.s3_region {
                b = b.with_region(r);
            }
            if settings.s3_path_style {
                b = b.with_virtual_hosted_style_request(false);
            }
            if let Some(k) = &settings.s3_access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &settings.s3_secret_access_key {
                b = b.with_secret_access_key(k.expose_secret());
            }
            Arc::new(
                b.build()
                    .map_err(|e| invalid(location, format!("S3: {e}")))?,
            )
        }
        "gs" => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry_config());
            if let Some(e) = &settings.gcs_endpoint {
                b = b.with_base_url(e.trim_end_matches('/'));
                if e.starts_with("http://") {
                    b = b.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
                }
            }
            Arc::new(
                b.build()
                    .map_err(|e| invalid(location, format!("Google Cloud Storage: {e}")))?,
            )
        }
        "az" | "azure" | "abfs" | "abfss" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry_config())
                .build()
                .map_err(|e| invalid(location, format!("Azure Blob Storage: {e}")))?,
        ),
        other => {
            return Err(invalid(
                location,
                format!(
                    "unsupported scheme `{other}://` (use a local path, file://, s3://, gs:// or az://)"
                ),
            ));
        }
    };
    let path = ObjectPath::from_url_path(url.path())
        .map_err(|e| invalid(location, format!("bad object path: {e}")))?;
    Ok((store, path))
}

enum Parsed {
    Stdio,
    Local(PathBuf),
    Url(url::Url),
}

fn parse(location: &str) -> Result<Parsed, LocationError> {
    if location.is_empty() {
        return Err(invalid(location, "empty location"));
    }
    if location == "-" {
        return Ok(Parsed::Stdio);
    }
    if !location.contains("://") {
        return Ok(Parsed::Local(PathBuf::from(location)));
    }
    let url = url::Url::parse(location).map_err(|e| invalid(location, format!("bad URL: {e}")))?;
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| invalid(location, "a file:// URL needs an absolute path"))?;
        return Ok(Parsed::Local(path));
    }
    if url.host_str().unwrap_or("").is_empty() {
        return Err(invalid(location, "the URL names no bucket or container"));
    }
    Ok(Parsed::Url(url))
}

/// URL text without user info, query or fragment (safe to log and record).
fn display_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// One object: something to read a backup from or write one to.
#[derive(Clone)]
pub enum Target {
    /// Standard input or output (`-`).
    Stdio,
    /// A local file.
    File(PathBuf),
    /// An object in a store.
    Object {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// The object's path in it.
        path: ObjectPath,
        /// The URL, for messages and records.
        url: String,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl Target {
    /// Parses `-`, a path, a `file://` URL or an object URL.
    pub fn parse(location: &str, settings: &StoreSettings) -> Result<Self, LocationError> {
        Ok(match parse(location)? {
            Parsed::Stdio => Self::Stdio,
            Parsed::Local(p) => Self::File(p),
            Parsed::Url(url) => {
                let (store, path) = object_store_for(location, &url, settings)?;
                if path.filename().is_none() {
                    return Err(invalid(location, "names a prefix, not an object"));
                }
                Self::Object {
                    store,
                    path,
                    url: display_url(&url),
                }
            }
        })
    }

    /// How the location is shown in messages and recorded.
    pub fn display(&self) -> String {
        match self {
            Self::Stdio => "-".into(),
            Self::File(p) => std::path::absolute(p)
                .ok()
                .and_then(|a| url::Url::from_file_path(a).ok())
                .map(|u| u.to_string())
                .unwrap_or_else(|| p.display().to_string()),
            Self::Object { url, .. } => url.clone(),
        }
    }

    /// Opens the object for reading; also returns its size when known.
    pub async fn open(&self) -> Result<(Source, Option<u64>), LocationError> {
        match self {
            Self::Stdio => Ok((Box::new(tokio::io::stdin()), None)),
            Self::File(p) => {
                let f = std::fs::File::open(p).map_err(|e| LocationError::io(p, e))?;
                let meta = f.metadata().map_err(|e| LocationError::io(p, e))?;
                if meta.is_dir() {
                    return Err(invalid(&p.display().to_string(), "is a directory"));
                }
                let size = meta.is_file().then_some(meta.len());
                Ok((Box::new(LocalFile::new(f)), size))
            }
            Self::Object { store, path, url } => {
                let got = store
                    .get(path)
                    .await
                    .map_err(|e| LocationError::store(url, e))?;
                let size = got.meta.size;
                let source: Source = match got.payload {
                    object_store::GetResultPayload::File(file, _) => Box::new(LocalFile::new(file)),
                    object_store::GetResultPayload::Stream(s) => {
                        let url = url.clone();
                        Box::new(tokio_util::io::StreamReader::new(
                            s.map_err(move |e| std::io::Error::other(format!("{url}: {e}"))),
                        ))
                    }
                };
                Ok((source, Some(size)))
            }
        }
    }

    /// Whether the object exists (standard input/output never does).
    pub async fn exists(&self) -> Result<bool, LocationError> {
        match self {
            Self::Stdio => Ok(false),
            Self::File(p) => tokio::fs::try_exists(p)
                .await
                .map_err(|e| LocationError::io(p, e)),
            Self::Object { store, path, url } => match store.head(path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(LocationError::store(url, e)),
            },
        }
    }

    /// Starts writing a new object; it appears under its name only on
    /// [`Writer::commit`].
    pub async fn create(&self) -> Result<Writer, LocationError> {
        match self {
            Self::Stdio => Ok(Writer::Stdout(tokio::io::stdout())),
            Self::File(p) => Writer::file(p).await,
            Self::Object { store, path, url } => Ok(Writer::Object {
                writer: BufWriter::with_capacity(Arc::clone(store), path.clone(), UPLOAD_PART)
                    .with_max_concurrency(UPLOAD_CONCURRENCY),
                url: url.clone(),
            }),
        }
    }

    /// Deletes the object (a missing one is not an error).
    pub async fn delete(&self) -> Result<(), LocationError> {
        match self {
            Self::Stdio => Ok(()),
            Self::File(p) => match tokio::fs::remove_file(p).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LocationError::io(p, e)),
                _ => Ok(()),
            },
            Self::Object { store, path, url } => match store.delete(path).await {
                Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
                Err(e) => Err(LocationError::store(url, e)),
            },
        }
    }
}

/// Runs blocking file I/O: in place on a multi-thread runtime (the scheduler
/// moves other tasks away), directly elsewhere.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A local file read and written with blocking calls straight into and out of
/// the caller's buffers: no intermediate copy, unlike `tokio::fs::File`
/// (which matters at several GB/s).
pub struct LocalFile(std::fs::File);

impl LocalFile {
    /// Wraps an open file.
    pub fn new(file: std::fs::File) -> Self {
        Self(file)
    }
}

impl tokio::io::AsyncRead for LocalFile {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let dst = buf.initialize_unfilled();
        let r = blocking(|| std::io::Read::read(&mut self.0, dst));
        std::task::Poll::Ready(r.map(|n| buf.advance(n)))
    }
}

impl AsyncWrite for LocalFile {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(blocking(|| std::io::Write::write(&mut self.0, buf)))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// An object being written.
pub enum Writer {
    /// Standard output.
    Stdout(tokio::io::Stdout),
    /// A device or pipe (e.g. `/dev/null`), written in place.
    Direct(LocalFile),
    /// A regular file, written under a temporary name in its directory.
    Temp {
        /// The open temporary file.
        file: LocalFile,
        /// Its handle (removes it when dropped unless persisted).
        temp: tempfile::TempPath,
        /// The final name.
        path: PathBuf,
    },
    /// A (multipart) upload.
    Object {
        /// The upload.
        writer: BufWriter,
        /// The object's URL.
        url: String,
    },
}

impl Writer {
    async fn file(path: &Path) -> Result<Self, LocationError> {
        if let Ok(meta) = tokio::fs::metadata(path).await {
            if meta.is_dir() {
                return Err(invalid(&path.display().to_string(), "is a directory"));
            }
            if !meta.is_file() {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| LocationError::io(path, e))?;
                return Ok(Self::Direct(LocalFile::new(f)));
            }
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| invalid(&path.display().to_string(), "names no file"))?
            .to_string_lossy()
            .into_owned();
        let dir2 = dir.clone();
        let temp = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix(&format!(".{name}."))
                .suffix(".partial")
                .tempfile_in(&dir2)
        })
        .await
        .map_err(|e| LocationError::io(&dir, std::io::Error::other(e)))?
        .map_err(|e| LocationError::io(&dir, e))?;
        let (file, temp) = temp.into_parts();
        Ok(Self::Temp {
            file: LocalFile::new(file),
            temp,
            path: path.to_path_buf(),
        })
    }

    /// The sink to write bytes into.
    pub fn sink(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin) {
        match self {
            Self::Stdout(s) => s,
            Self::Direct(f) => f,
            Self::Temp { file, .. } => file,
            Self::Object { writer, .. } => writer,
        }
    }

    /// Makes the object appear under its name: fsync and rename, or complete the upload.
    pub async fn commit(self) -> Result<(), LocationError> {
        match self {
            Self::Stdout(mut s) => s
                .flush()
                .await
                .map_err(|e| LocationError::io(Path::new("(standard output)"), e)),
            Self::Direct(_) => Ok(()),
            Self::Temp { file, temp, path } => {
                let synced = tokio::task::spawn_blocking(move || file.0.sync_all())
                    .await
                    .map_err(|e| LocationError::io(&path, std::io::Error::other(e)))?;
                synced.map_err(|e| LocationError::io(&path, e))?;
                let p = path.clone();
                tokio::task::spawn_blocking(move || {
                    temp.persist(&p).map_err(|e| e.error)?;
                    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::File::open(dir)?.sync_all()?;
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await
                .map_err(|e| LocationError::io(&path, std::io::Error::other(e)))?
                .map_err(|e| LocationError::io(&path, e))
            }
            Self::Object { mut writer, url } => writer.shutdown().await.map_err(|e| {
                LocationError::store(
                    &url,
                    object_store::Error::Generic {
                        store: "upload",
                        source: Box::new(e),
                    },
                )
            }),
        }
    }

    /// Discards what was written: removes the temporary file or aborts the upload.
    pub async fn abort(self) {
        match self {
            Self::Stdout(_) | Self::Direct(_) => {}
            Self::Temp { file, temp, .. } => {
                drop(file);
                let _ = tokio::task::spawn_blocking(move || temp.close()).await;
            }
            Self::Object { mut writer, url } => {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(object = %url, error = %e, "aborting the upload failed");
                }
            }
        }
    }
}

/// A prefix under which `backup run` writes and `rewrap` looks for backups.
#[derive(Clone)]
pub enum Destination {
    /// A local directory.
    Dir(PathBuf),
    /// A prefix in an object store.
    Prefix {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// The prefix path.
        prefix: ObjectPath,
        /// The URL of the prefix, ending in `/`.
        url: String,
    },
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// A backup object found under a destination.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The object.
    pub target: Target,
    /// Its size.
    pub size: u64,
}

impl Destination {
    /// Parses a destination: a local directory, `file://`, `s3://`, `gs://` or `az://` prefix.
    pub fn parse(location: &str, settings: &StoreSettings) -> Result<Self, LocationError> {
        Ok(match parse(location)? {
            Parsed::Stdio => return Err(invalid(location, "a destination cannot be `-`")),
            Parsed::Local(p) => Self::Dir(p),
            Parsed::Url(url) => {
                let (store, prefix) = object_store_for(location, &url, settings)?;
                let mut shown = display_url(&url);
                if !shown.ends_with('/') {
                    shown.push('/');
                }
                Self::Prefix {
                    store,
                    prefix,
                    url: shown,
                }
            }
        })
    }

    /// The destination as shown.
    pub fn display(&self) -> String {
        match self {
            Self::Dir(d) => std::path::absolute(d)
                .ok()
                .and_then(|a| url::Url::from_directory_path(a).ok())
                .map(|u| u.to_string())
                .unwrap_or_else(|| d.display().to_string()),
            Self::Prefix { url, .. } => url.clone(),
        }
    }

    /// Creates a local directory if needed.
    pub async fn prepare(&self) -> Result<(), LocationError> {
        if let Self::Dir(d) = self {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| LocationError::io(d, e))?;
        }
        Ok(())
    }

    /// The object `name` directly under the destination.
    pub fn object(&self, name: &str) -> Target {
        match self {
            Self::Dir(d) => Target::File(std::path::absolute(d).unwrap_or(d.clone()).join(name)),
            Self::Prefix { store, prefix, url } => Target::Object {
                store: Arc::clone(store),
                path: prefix.clone().join(name),
                url: format!("{url}{name}"),
            },
        }
    }

    /// Objects directly under the destination whose names end in `suffix`.
    pub async fn list(&self, suffix: &str) -> Result<Vec<Listed>, LocationError> {
        match self {
            Self::Dir(d) => {
                let mut out = Vec::new();
                let mut entries = match tokio::fs::read_dir(d).await {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(LocationError::io(d, e)),
                };
                while let Some(entry) = entries
                    .next_entry()
                    .await
                    .map_err(|e| LocationError::io(d, e))?
                {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let meta = entry
                        .metadata()
                        .await
                        .map_err(|e| LocationError::io(d, e))?;
                    if meta.is_file() && name.ends_with(suffix) && !name.starts_with('.') {
                        out.push(Listed {
                            target: self.object(&name),
                            size: meta.len(),
                        });
                    }
                }
                out.sort_by_key(|l| l.target.display());
                Ok(out)
            }
            Self::Prefix { store, prefix, url } => {
                let metas: Vec<_> = store
                    .list(Some(prefix))
                    .try_collect()
                    .await
                    .map_err(|e| LocationError::store(url, e))?;
                let mut out: Vec<Listed> = metas
                    .into_iter()
                    .filter(|m| m.location.parts_count() == prefix.parts_count() + 1)
                    .filter_map(|m| {
                        let name = m.location.filename()?.to_string();
                        name.ends_with(suffix).then(|| Listed {
                            target: self.object(&name),
                            size: m.size,
                        })
                    })
                    .collect();
                out.sort_by_key(|l| l.target.display());
                Ok(out)
            }
        }
    }
}

/// Reads the first `n` bytes of an object (fewer if it is shorter): the header, for `rewrap`.
pub async fn read_prefix(target: &Target, n: u64) -> Result<Vec<u8>, LocationError> {
    let mut buf = Vec::new();
    match target {
        Target::Object { store, path, url } => {
            let opts = object_store::GetOptions {
                range: Some(object_store::GetRange::Bounded(0..n)),
                ..Default::default()
            };
            let got = store
                .get_opts(path, opts)
                .await
                .map_err(|e| LocationError::store(url, e))?;
            buf.extend_from_slice(
                &got.bytes()
                    .await
                    .map_err(|e| LocationError::store(url, e))?,
            );
        }
        other => {
            let (src, _) = other.open().await?;
            let mut limited = tokio::io::AsyncReadExt::take(src, n);
            tokio::io::AsyncReadExt::read_to_end(&mut limited, &mut buf)
                .await
                .map_err(|e| LocationError::io(Path::new(&other.display()), e))?;
        }
    }
    Ok(buf)
}

/// The bytes of an object from `offset` on, as a stream (for `rewrap`'s copy).
pub async fn open_from(target: &Target, offset: u64) -> Result<Source, LocationError> {
    match target {
        Target::Object { store, path, url } => {
            let opts = object_store::GetOptions {
                range: Some(object_store::GetRange::Offset(offset)),
                ..Default::default()
            };
            let got = store
                .get_opts(path, opts)
                .await
                .map_err(|e| LocationError::store(url, e))?;
            let url = url.clone();
            Ok(match got.payload {
                object_store::GetResultPayload::File(file, _) => {
                    let mut f = tokio::fs::File::from_std(file);
                    tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(offset))
                        .await
                        .map_err(|e| LocationError::io(Path::new(&url), e))?;
                    Box::new(f)
                }
                object_store::GetResultPayload::Stream(s) => {
                    Box::new(tokio_util::io::StreamReader::new(
                        s.map_err(move |e| std::io::Error::other(format!("{url}: {e}"))),
                    ))
                }
            })
        }
        other => {
            let (mut src, _) = other.open().await?;
            let mut skip = tokio::io::AsyncReadExt::take(&mut src, offset);
            tokio::io::copy(&mut skip, &mut tokio::io::sink())
                .await
                .map_err(|e| LocationError::io(Path::new(&other.display()), e))?;
            Ok(src)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let s3 = StoreSettings::default();
        assert!(matches!(Target::parse("-", &s3).unwrap(), Target::Stdio));
        assert!(
            matches!(Target::parse("a/b.rkb", &s3).unwrap(), Target::File(p) if p == Path::new("a/b.rkb"))
        );
        assert!(
            matches!(Target::parse("file:///x/y.rkb", &s3).unwrap(), Target::File(p) if p == Path::new("/x/y.rkb"))
        );
        let t = Target::parse("s3://bucket/etcd/x.rkb", &s3).unwrap();
        assert_eq!(t.display(), "s3://bucket/etcd/x.rkb");
        let e = Target::parse("ftp://host/x", &s3).unwrap_err();
        assert!(e.to_string().contains("unsupported scheme"), "{e}");
        assert!(e.is_bad_input());
        assert!(Target::parse("s3:///x", &s3).is_err());
        assert!(Target::parse("", &s3).is_err());
        let d = Destination::parse("s3://bucket/etcd", &s3).unwrap();
        assert_eq!(d.display(), "s3://bucket/etcd/");
        assert_eq!(d.object("a.rkb").display(), "s3://bucket/etcd/a.rkb");
        let d = Destination::parse("/var/backups", &s3).unwrap();
        assert_eq!(d.object("a.rkb").display(), "file:///var/backups/a.rkb");
        assert!(Destination::parse("-", &s3).is_err());
    }

    #[test]
    fn credentials_never_show() {
        let url = url::Url::parse("s3://key:secret@bucket/p?token=abc").unwrap();
        let shown = display_url(&url);
        assert!(
            !shown.contains("secret") && !shown.contains("abc"),
            "{shown}"
        );
    }
}
