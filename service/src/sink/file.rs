//! The `file` sink: a directory with `tls.crt`, `tls.key`, `ca.crt` (or
//! `token`) and the version marker `.rekey-version`, laid out as the
//! kubelet's atomic writer lays out Secret and ConfigMap volumes, so that a
//! publish is **one atomic change**:
//!
//! ```text
//! dir/
//!   ..2026_01_02_03_04_05.123456789.v42/   a data directory per publish (0755):
//!       tls.crt  tls.key (0600)  ca.crt  .rekey-version
//!   ..data -> ..2026_01_02_03_04_05.123456789.v42     swapped by rename
//!   tls.crt -> ..data/tls.crt                          stable names, symlinks
//!   tls.key -> ..data/tls.key
//!   ca.crt  -> ..data/ca.crt
//!   .rekey-version -> ..data/.rekey-version
//! ```
//!
//! A publish writes a new data directory (each file fsynced, then the
//! directory), swaps `..data` to it by renaming a fresh symlink over it,
//! fsyncs the parent, and removes data directories other than the new one
//! and the one it replaced (kept so that a reader who resolved `..data`
//! just before the swap can still open its files). `..data` always names a
//! complete directory: the certificate, key, bundle and version marker it
//! shows always belong together, and no file is ever missing. A consumer
//! that reads several files consistently either resolves `..data` once and
//! reads inside that directory, or reads `.rekey-version` before and after
//! and reads again when it changed; watchers watch for `..data` being
//! replaced (README, "File sink").
//!
//! The crash point `sink-mid-publish` sits between writing the new data
//! directory and the swap: recovery reads `.rekey-version` through
//! `..data`, sees the old version, and the next publish removes the
//! unswapped directory. A directory written by the older layout (regular
//! files) is upgraded in place on the next publish: its current files are
//! copied into a first data directory and each regular file is replaced by
//! its symlink (same content, by rename: never missing, never torn) before
//! the new version is swapped in. Every write holds an exclusive `flock` on
//! the directory, so two writers never interleave.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::{
    blocking::{OwnedBundleUpdate, OwnedPublication},
    model::{BundleOutcome, BundleUpdate, Material, Publication, Sink, SinkError},
};
use crate::issue::bundle::fingerprint_of_pem;

/// Name of the marker file holding the published version id.
pub const VERSION_MARKER: &str = ".rekey-version";

/// The symlink naming the current data directory.
pub const DATA_LINK: &str = "..data";

/// The fresh symlink renamed over [`DATA_LINK`].
const DATA_LINK_TMP: &str = "..data_tmp";

/// Every name the sink publishes at the top level.
const NAMES: &[&str] = &["tls.crt", "tls.key", "ca.crt", "token", VERSION_MARKER];

/// Names holding secrets (mode 0600).
const SECRET_NAMES: &[&str] = &["tls.key", "token"];

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

fn mode_of(name: &str) -> u32 {
    if SECRET_NAMES.contains(&name) {
        0o600
    } else {
        0o644
    }
}

/// A data directory's name: `..<UTC time to the nanosecond>.v<version>`.
fn data_dir_name(version: i64) -> String {
    format!(
        "..{}.v{version}",
        chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%f")
    )
}

/// Whether `name` is one of this sink's data directories.
fn is_data_dir_name(name: &str) -> bool {
    name.strip_prefix("..")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// One file of a data directory.
struct Entry<'a> {
    name: &'static str,
    bytes: &'a [u8],
}

impl FileSink {
    /// A sink writing into `dir` (created on first publish).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The sink's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the directory's exclusive lock (released when dropped).
    fn lock(&self) -> Result<nix::fcntl::Flock<File>, SinkError> {
        let d = File::open(&self.dir).map_err(io(&self.dir))?;
        nix::fcntl::Flock::lock(d, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            SinkError::Io {
                path: self.dir.display().to_string(),
                source: std::io::Error::from(e),
            }
        })
    }

    fn fsync_dir(path: &Path) -> Result<(), SinkError> {
        File::open(path)
            .and_then(|d| d.sync_all())
            .map_err(io(path))
    }

    /// The name of the data directory `..data` points at, if any.
    fn current_data_dir(&self) -> Result<Option<String>, SinkError> {
        let link = self.dir.join(DATA_LINK);
        match std::fs::read_link(&link) {
            Ok(t) => Ok(Some(t.to_string_lossy().into_owned())),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(io(&link)(e)),
        }
    }

    /// Writes a complete data directory (every file and the directory
    /// fsynced); returns its name.
    fn write_data_dir(&self, entries: &[Entry<'_>], version: i64) -> Result<String, SinkError> {
        let mut name = data_dir_name(version);
        let mut path = self.dir.join(&name);
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    name = format!("{}-{:08x}", data_dir_name(version), rand::random::<u32>());
                    path = self.dir.join(&name);
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&path))?;
        for e in entries {
            let file = path.join(e.name);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode_of(e.name))
                .open(&file)
                .map_err(io(&file))?;
            f.write_all(e.bytes).map_err(io(&file))?;
            f.sync_all().map_err(io(&file))?;
        }
        Self::fsync_dir(&path)?;
        Ok(name)
    }

    /// Points `..data` at `target` by renaming a fresh symlink over it.
    fn swap_data(&self, target: &str) -> Result<(), SinkError> {
        let tmp = self.dir.join(DATA_LINK_TMP);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(io(&tmp)(e)),
        }
        std::os::unix::fs::symlink(target, &tmp).map_err(io(&tmp))?;
        let link = self.dir.join(DATA_LINK);
        std::fs::rename(&tmp, &link).map_err(io(&link))
    }

    /// Makes each top-level name the data directory holds a symlink into
    /// `..data` (replacing a regular file or another link by rename, so the
    /// name never goes missing), and removes top-level links to names it
    /// does not hold.
    fn ensure_links(&self, data_dir: &str) -> Result<(), SinkError> {
        for name in NAMES {
            let top = self.dir.join(name);
            let wanted = Path::new(DATA_LINK).join(name);
            let held = self.dir.join(data_dir).join(name).exists();
            let current = std::fs::symlink_metadata(&top);
            let is_link = current.as_ref().is_ok_and(|m| m.file_type().is_symlink());
            let points = is_link && std::fs::read_link(&top).is_ok_and(|t| t == wanted);
            if held && !points {
                let tmp = self.dir.join(format!(".{name}.rekey-link"));
                match std::fs::remove_file(&tmp) {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(io(&tmp)(e)),
                }
                std::os::unix::fs::symlink(&wanted, &tmp).map_err(io(&tmp))?;
                std::fs::rename(&tmp, &top).map_err(io(&top))?;
            } else if !held && points {
                std::fs::remove_file(&top).map_err(io(&top))?;
            }
        }
        Ok(())
    }

    /// Upgrades a directory written by the older layout (regular files) in
    /// place, and finishes an upgrade a crash interrupted: the current files
    /// become the first data directory, then each regular file is replaced
    /// by its symlink. Content is unchanged throughout.
    fn adopt_layout(&self) -> Result<(), SinkError> {
        let regular: Vec<&'static str> = NAMES
            .iter()
            .copied()
            .filter(|n| {
                std::fs::symlink_metadata(self.dir.join(n)).is_ok_and(|m| m.file_type().is_file())
            })
            .collect();
        if regular.is_empty() {
            return Ok(());
        }
        let data = match self.current_data_dir()? {
            Some(d) => d,
            None => {
                let mut contents = Vec::with_capacity(regular.len());
                for n in &regular {
                    let p = self.dir.join(n);
                    contents.push((*n, Zeroizing::new(std::fs::read(&p).map_err(io(&p))?)));
                }
                let entries: Vec<Entry<'_>> = contents
                    .iter()
                    .map(|(name, bytes)| Entry {
                        name,
                        bytes: bytes.as_slice(),
                    })
                    .collect();
                let version = contents
                    .iter()
                    .find(|(n, _)| *n == VERSION_MARKER)
                    .and_then(|(_, b)| String::from_utf8_lossy(b).trim().parse().ok())
                    .unwrap_or(0);
                let name = self.write_data_dir(&entries, version)?;
                self.swap_data(&name)?;
                name
            }
        };
        self.ensure_links(&data)?;
        Self::fsync_dir(&self.dir)?;
        tracing::info!(dir = %self.dir.display(), "file sink upgraded in place to the atomic (..data) layout");
        Ok(())
    }

    /// Removes data directories other than `current` and `previous`, and
    /// temporary names a crash may have left.
    fn remove_old(&self, current: &str, previous: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let stale_dir = is_data_dir_name(&name)
                && name != current
                && Some(name.as_str()) != previous
                && e.file_type().is_ok_and(|t| t.is_dir());
            let stale_tmp = name == DATA_LINK_TMP
                || NAMES
                    .iter()
                    .any(|n| name == format!(".{n}.rekey-link") || name == format!(".{n}.tmp"));
            let result = if stale_dir {
                std::fs::remove_dir_all(&path)
            } else if stale_tmp {
                std::fs::remove_file(&path)
            } else {
                continue;
            };
            if let Err(err) = result {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove an old data directory of a file sink");
            }
        }
    }

    /// Writes `entries` as a new data directory and swaps it in.
    fn swap_in(&self, entries: &[Entry<'_>], version: i64, crash: bool) -> Result<(), SinkError> {
        let previous = self.current_data_dir()?;
        let new = self.write_data_dir(entries, version)?;
        if crash {
            crate::crash::point("sink-mid-publish");
        }
        self.swap_data(&new)?;
        self.ensure_links(&new)?;
        Self::fsync_dir(&self.dir)?;
        self.remove_old(&new, previous.as_deref());
        Ok(())
    }

    /// Publishes synchronously (the engine calls this on a blocking thread).
    pub fn publish_blocking(&self, p: &Publication<'_>) -> Result<(), SinkError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let _lock = self.lock()?;
        self.adopt_layout()?;
        let marker = format!("{}\n", p.version);
        let mut entries = Vec::with_capacity(4);
        match p.material {
            Material::Certificate {
                chain_pem,
                key_pem,
                ca_pem,
            } => {
                entries.push(Entry {
                    name: "tls.crt",
                    bytes: chain_pem.as_bytes(),
                });
                entries.push(Entry {
                    name: "tls.key",
                    bytes: key_pem.expose_secret().as_bytes(),
                });
                entries.push(Entry {
                    name: "ca.crt",
                    bytes: ca_pem.as_bytes(),
                });
            }
            Material::Token { token } => entries.push(Entry {
                name: "token",
                bytes: token.expose_secret().as_bytes(),
            }),
        }
        entries.push(Entry {
            name: VERSION_MARKER,
            bytes: marker.as_bytes(),
        });
        self.swap_in(&entries, p.version, true)
    }

    /// Reads a file of the current data directory (or, in the older layout,
    /// the top-level file); `None` when it does not exist.
    fn read_current(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, SinkError> {
        let path = match self.current_data_dir()? {
            Some(d) => self.dir.join(d).join(name),
            None => self.dir.join(name),
        };
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(Zeroizing::new(b))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Reads the marker synchronously.
    pub fn published_version_blocking(&self) -> Result<Option<i64>, SinkError> {
        Ok(self
            .read_current(VERSION_MARKER)?
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
    }

    /// The fingerprint of the bundle in `ca.crt`, synchronously.
    pub fn published_bundle_blocking(&self) -> Result<Option<String>, SinkError> {
        Ok(self
            .read_current("ca.crt")?
            .and_then(|b| fingerprint_of_pem(&String::from_utf8_lossy(&b))))
    }

    /// Republishes with a new `ca.crt`, synchronously.
    pub fn publish_bundle_blocking(
        &self,
        u: &BundleUpdate<'_>,
    ) -> Result<BundleOutcome, SinkError> {
        if !self.dir.is_dir() {
            return Ok(BundleOutcome::NotCurrent { found: None });
        }
        let _lock = self.lock()?;
        self.adopt_layout()?;
        let Some(data) = self.current_data_dir()? else {
            return Ok(BundleOutcome::NotCurrent { found: None });
        };
        let found = self.published_version_blocking()?;
        if found != Some(u.version) {
            return Ok(BundleOutcome::NotCurrent { found });
        }
        let read = |name: &str| -> Result<Option<Zeroizing<Vec<u8>>>, SinkError> {
            let p = self.dir.join(&data).join(name);
            match std::fs::read(&p) {
                Ok(b) => Ok(Some(Zeroizing::new(b))),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(io(&p)(e)),
            }
        };
        let (Some(crt), Some(key), Some(ca)) =
            (read("tls.crt")?, read("tls.key")?, read("ca.crt")?)
        else {
            return Ok(BundleOutcome::NotApplicable);
        };
        if fingerprint_of_pem(&String::from_utf8_lossy(&ca)).as_deref()
            == Some(u.bundle.fingerprint())
        {
            return Ok(BundleOutcome::Unchanged);
        }
        let marker = format!("{}\n", u.version);
        let entries = [
            Entry {
                name: "tls.crt",
                bytes: &crt,
            },
            Entry {
                name: "tls.key",
                bytes: &key,
            },
            Entry {
                name: "ca.crt",
                bytes: u.bundle.pem().as_bytes(),
            },
            Entry {
                name: VERSION_MARKER,
                bytes: marker.as_bytes(),
            },
        ];
        self.swap_in(&entries, u.version, false)?;
        Ok(BundleOutcome::Published)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(FileSink) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        super::blocking::run(self.clone(), &self.dir, f).await
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn publish(&self, publication: &Publication<'_>) -> Result<(), SinkError> {
        let p = OwnedPublication::of(publication);
        self.blocking(move |sink| sink.publish_blocking(&p.get()))
            .await
    }

    async fn published_version(&self) -> Result<Option<i64>, SinkError> {
        self.blocking(|sink| sink.published_version_blocking())
            .await
    }

    async fn publish_bundle(&self, update: &BundleUpdate<'_>) -> Result<BundleOutcome, SinkError> {
        let u = OwnedBundleUpdate::of(update);
        self.blocking(move |sink| sink.publish_bundle_blocking(&u.get()))
            .await
    }

    async fn published_bundle(&self) -> Result<Option<String>, SinkError> {
        self.blocking(|sink| sink.published_bundle_blocking()).await
    }

    fn describe(&self) -> String {
        format!("file:{}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::issue::{CertAuthority, KeyType, TrustBundle};

    fn material(tag: &str, ca: &str) -> Material {
        Material::Certificate {
            chain_pem: format!("CHAIN {tag}"),
            key_pem: SecretString::from(format!("KEY {tag}")),
            ca_pem: ca.into(),
        }
    }

    fn publish(sink: &FileSink, version: i64, m: &Material) {
        sink.publish_blocking(&Publication {
            credential: "c",
            version,
            number: version,
            not_after: chrono::Utc::now(),
            material: m,
            adopt: false,
        })
        .unwrap();
    }

    fn data_dirs(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_data_dir_name(n))
            .collect();
        v.sort();
        v
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    fn ca_pem(cn: &str) -> String {
        let (ca, _) = CertAuthority::generate(
            cn,
            KeyType::EcdsaP256,
            chrono::TimeDelta::days(1),
            chrono::Utc::now(),
        )
        .unwrap();
        ca.cert_pem().to_string()
    }

    #[test]
    fn publishes_through_a_data_directory_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web");
        let sink = FileSink::new(web.clone());
        assert_eq!(sink.published_version_blocking().unwrap(), None);
        publish(&sink, 7, &material("a", "CA"));
        assert_eq!(read(&web, "tls.crt"), "CHAIN a");
        assert_eq!(read(&web, "tls.key"), "KEY a");
        assert_eq!(read(&web, "ca.crt"), "CA");
        for n in ["tls.crt", "tls.key", "ca.crt", VERSION_MARKER] {
            assert_eq!(
                std::fs::read_link(web.join(n)).unwrap(),
                Path::new("..data").join(n)
            );
        }
        let data = std::fs::read_link(web.join(DATA_LINK)).unwrap();
        assert!(data.to_string_lossy().ends_with(".v7"), "{data:?}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&web.join(&data).join("tls.key")), 0o600);
        assert_eq!(mode(&web.join(&data).join("tls.crt")), 0o644);
        assert_eq!(sink.published_version_blocking().unwrap(), Some(7));

        publish(&sink, 8, &material("b", "CA"));
        publish(&sink, 9, &material("c", "CA"));
        assert_eq!(read(&web, "tls.key"), "KEY c");
        assert_eq!(sink.published_version_blocking().unwrap(), Some(9));
        let dirs = data_dirs(&web);
        assert_eq!(dirs.len(), 2, "the current and the previous: {dirs:?}");
        assert!(dirs.iter().any(|d| d.ends_with(".v8")) && dirs.iter().any(|d| d.ends_with(".v9")));

        // A token in the same place: the certificate names go, `token` comes.
        let t = Material::Token {
            token: SecretString::from("T"),
        };
        publish(&sink, 10, &t);
        assert_eq!(read(&web, "token"), "T");
        assert!(std::fs::symlink_metadata(web.join("tls.crt")).is_err());
    }

    #[test]
    fn upgrades_the_older_layout_in_place_and_cleans_up_after_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web");
        std::fs::create_dir(&web).unwrap();
        for (n, c) in [
            ("tls.crt", "OLD CHAIN"),
            ("tls.key", "OLD KEY"),
            ("ca.crt", "OLD CA"),
            (VERSION_MARKER, "5\n"),
            (".tls.crt.tmp", "left by a crash of the old sink"),
        ] {
            std::fs::write(web.join(n), c).unwrap();
        }
        let sink = FileSink::new(web.clone());
        assert_eq!(sink.published_version_blocking().unwrap(), Some(5));
        // A crash after writing a data directory, before the swap: left over.
        std::fs::create_dir(web.join("..2020_01_01_00_00_00.000000000.v99")).unwrap();
        std::os::unix::fs::symlink("nowhere", web.join(DATA_LINK_TMP)).unwrap();

        sink.adopt_layout().unwrap();
        assert_eq!(
            read(&web, "tls.key"),
            "OLD KEY",
            "same content after the upgrade"
        );
        assert!(
            std::fs::symlink_metadata(web.join("tls.key"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(sink.published_version_blocking().unwrap(), Some(5));

        publish(&sink, 6, &material("new", "CA"));
        assert_eq!(read(&web, "tls.crt"), "CHAIN new");
        let names: Vec<String> = std::fs::read_dir(&web)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.ends_with(".tmp") || n == DATA_LINK_TMP),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.ends_with(".v99")), "{names:?}");
        assert_eq!(
            data_dirs(&web).len(),
            2,
            "the upgrade's copy is the previous one"
        );
    }

    #[test]
    fn republishes_a_bundle_only_over_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web");
        let sink = FileSink::new(web.clone());
        let (a, b) = (ca_pem("a"), ca_pem("b"));
        let old = TrustBundle::from_pem(&a).unwrap();
        let both = TrustBundle::from_pem(&format!("{a}{b}")).unwrap();
        let update = |version, bundle| BundleUpdate {
            credential: "c",
            version,
            bundle,
        };
        assert_eq!(
            sink.publish_bundle_blocking(&update(1, &both)).unwrap(),
            BundleOutcome::NotCurrent { found: None }
        );
        publish(&sink, 3, &material("x", old.pem()));
        assert_eq!(
            sink.published_bundle_blocking().unwrap().as_deref(),
            Some(old.fingerprint())
        );
        assert_eq!(
            sink.publish_bundle_blocking(&update(2, &both)).unwrap(),
            BundleOutcome::NotCurrent { found: Some(3) }
        );
        assert_eq!(
            sink.publish_bundle_blocking(&update(3, &old)).unwrap(),
            BundleOutcome::Unchanged
        );
        assert_eq!(
            sink.publish_bundle_blocking(&update(3, &both)).unwrap(),
            BundleOutcome::Published
        );
        assert_eq!(read(&web, "ca.crt"), both.pem());
        assert_eq!(read(&web, "tls.crt"), "CHAIN x");
        assert_eq!(read(&web, "tls.key"), "KEY x");
        assert_eq!(sink.published_version_blocking().unwrap(), Some(3));
        assert_eq!(
            sink.published_bundle_blocking().unwrap().as_deref(),
            Some(both.fingerprint())
        );
        publish(
            &FileSink::new(dir.path().join("tok")),
            4,
            &Material::Token {
                token: SecretString::from("T"),
            },
        );
        assert_eq!(
            FileSink::new(dir.path().join("tok"))
                .publish_bundle_blocking(&update(4, &both))
                .unwrap(),
            BundleOutcome::NotApplicable
        );
    }
}
