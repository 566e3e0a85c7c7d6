//! Re-wrapping backups under a new KEK (`rekey backup rewrap`).
//!
//! Only the header's key envelope changes: the data key is unwrapped with
//! the old KEK and wrapped with the new one; the body is copied byte for
//! byte, hashed on the way, and the object replaced only once fully written.
//! The `backups` record then gets the new KEK id, hash and size, and the
//! change is audited. An object already under the new KEK is skipped (and
//! its record fixed, should an earlier run have stopped between the two).
//!
//! ```text
//!  discover (destination listing + records under the old KEK)
//!      └─► for each object: rewrap_one ─► db::update_envelope ─► audit
//!                               └─ already new: hash_object ─► update_envelope
//! ```

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::{
    BackupError, ListFilter, OBJECT_SUFFIX, db,
    escrow::{self, ESCROW_SUFFIX},
    format::{FormatError, HEADER_LEN, Header},
    kek::Kek,
    location::{self, Destination, StoreSettings, Target},
    stream,
};
use crate::store::{
    Store,
    audit::{NewEvent, Outcome},
};

/// One object re-wrapped.
#[derive(Debug, Clone, Serialize)]
pub struct Rewrapped {
    /// The backup's id (from its header).
    pub backup_id: Uuid,
    /// Where the object is.
    pub location: String,
    /// The KEK it was wrapped with.
    pub old_kek_id: String,
    /// The KEK it is wrapped with now.
    pub new_kek_id: String,
    /// Hex SHA-256 of the new object.
    pub sha256: String,
    /// Bytes of the new object.
    pub size_bytes: u64,
}

/// An object left alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Where the object is.
    pub location: String,
    /// Why it was skipped or failed.
    pub reason: String,
}

/// What a rewrap did (the `--json` document of `rekey backup rewrap`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RewrapReport {
    /// Objects re-wrapped.
    pub rewrapped: Vec<Rewrapped>,
    /// Objects already under the new KEK.
    pub skipped: Vec<Skipped>,
    /// Objects that could not be re-wrapped (they still open with the old KEK).
    pub failed: Vec<Skipped>,
}

/// What happened to one object, as it happens (for a running account).
#[derive(Debug, Clone, Copy)]
pub enum RewrapEvent<'a> {
    /// It was re-wrapped (and its record updated).
    Rewrapped(&'a Rewrapped),
    /// It was already under the new KEK.
    Skipped(&'a Skipped),
    /// It could not be re-wrapped.
    Failed(&'a Skipped),
}

/// What [`rewrap_one`] found.
#[derive(Debug, Clone)]
pub enum RewrapOutcome {
    /// The object was re-wrapped.
    Done(Rewrapped),
    /// The object (this backup id) was already under the new KEK.
    AlreadyNew(Uuid),
}

/// The objects to re-wrap when none are named: every backup object under
/// `destination`, and every completed backup recorded under the old KEK.
pub async fn discover(
    destination: &Destination,
    store: Option<&Store>,
    old: &Kek,
    settings: &StoreSettings,
) -> Result<Vec<Target>, BackupError> {
    let mut targets: Vec<Target> = destination
        .list(OBJECT_SUFFIX)
        .await?
        .into_iter()
        .map(|l| l.target)
        .collect();
    // Key escrows are re-wrapped like backups.
    targets.extend(
        destination
            .list(&format!("{OBJECT_SUFFIX}{ESCROW_SUFFIX}"))
            .await?
            .into_iter()
            .map(|l| l.target),
    );
    if let Some(store) = store {
        for r in db::list(store, ListFilter::default()).await? {
            if r.status == "completed"
                && r.kek_id == old.id().to_string()
                && !targets.iter().any(|t| t.display() == r.location)
            {
                targets.push(Target::parse(&r.location, settings)?);
                if r.encryption_keys
                    .as_ref()
                    .is_some_and(|k| k.iter().any(|u| u.escrowed))
                {
                    targets.push(Target::parse(&escrow::location_of(&r.location), settings)?);
                }
            }
        }
    }
    Ok(targets)
}

/// `targets` and, after each backup among them, its key escrow where there
/// is one (an escrow is sealed under the same KEK: re-wrapping a backup
/// without it would leave its keys unreadable with the new KEK).
pub async fn with_escrows(
    targets: Vec<Target>,
    settings: &StoreSettings,
) -> Result<Vec<Target>, BackupError> {
    let mut out: Vec<Target> = Vec::with_capacity(targets.len());
    for t in targets {
        let location = t.display();
        if out.iter().any(|o| o.display() == location) {
            continue;
        }
        let escrow = (!location.ends_with(ESCROW_SUFFIX) && !matches!(t, Target::Stdio))
            .then(|| Target::parse(&escrow::location_of(&location), settings))
            .transpose()?;
        out.push(t);
        if let Some(e) = escrow
            && !out.iter().any(|o| o.display() == e.display())
            && e.exists().await?
        {
            out.push(e);
        }
    }
    Ok(out)
}

/// Re-wraps every backup object under `destination` and every completed
/// backup recorded under `old` (see [`discover`] and [`rewrap`]).
pub async fn rewrap_all(
    destination: &Destination,
    store: Option<&Store>,
    old: &Kek,
    new: &Kek,
    settings: &StoreSettings,
    actor: &str,
    on_event: impl FnMut(RewrapEvent<'_>),
) -> Result<RewrapReport, BackupError> {
    let targets = discover(destination, store, old, settings).await?;
    rewrap(&targets, old, new, store, actor, on_event).await
}

/// Re-wraps `targets` from `old` to `new`, in order. With a store, each
/// re-wrapped backup's record is updated and audited as `actor`. An object
/// that cannot be re-wrapped is reported and the others go on; `Err` is a
/// failure of the database or of re-reading an object to fix its record.
pub async fn rewrap(
    targets: &[Target],
    old: &Kek,
    new: &Kek,
    store: Option<&Store>,
    actor: &str,
    mut on_event: impl FnMut(RewrapEvent<'_>),
) -> Result<RewrapReport, BackupError> {
    let mut report = RewrapReport::default();
    for t in targets {
        // A key escrow has no record of its own: its backup's is left alone.
        let is_escrow = t.display().ends_with(ESCROW_SUFFIX);
        match rewrap_one(t, old, new).await {
            Ok(RewrapOutcome::Done(r)) => {
                if let Some(store) = store.filter(|_| !is_escrow) {
                    db::update_envelope(
                        store,
                        r.backup_id,
                        &r.new_kek_id,
                        &r.sha256,
                        r.size_bytes as i64,
                    )
                    .await?;
                    let mut event =
                        NewEvent::new(actor, "backup.rewrap", &r.location, Outcome::Success);
                    event.details = serde_json::json!({
                        "backup_id": r.backup_id, "old_kek_id": r.old_kek_id, "new_kek_id": r.new_kek_id,
                    });
                    store.audit(event).await?;
                }
                on_event(RewrapEvent::Rewrapped(&r));
                report.rewrapped.push(r);
            }
            Ok(RewrapOutcome::AlreadyNew(id)) => {
                // A previous run may have rewritten the object but not the record.
                if let Some(store) = store.filter(|_| !is_escrow)
                    && db::get(store, id)
                        .await?
                        .is_some_and(|r| r.kek_id != new.id().to_string())
                {
                    let (sha256, size) = hash_object(t).await?;
                    db::update_envelope(store, id, &new.id().to_string(), &sha256, size as i64)
                        .await?;
                }
                let skipped = Skipped {
                    location: t.display(),
                    reason: "already wrapped with the new KEK".into(),
                };
                on_event(RewrapEvent::Skipped(&skipped));
                report.skipped.push(skipped);
            }
            Err(e) => {
                let failed = Skipped {
                    location: t.display(),
                    reason: e.to_string(),
                };
                on_event(RewrapEvent::Failed(&failed));
                report.failed.push(failed);
            }
        }
    }
    Ok(report)
}

/// Re-wraps one object: a new header, then the body copied byte for byte.
pub async fn rewrap_one(
    target: &Target,
    old: &Kek,
    new: &Kek,
) -> Result<RewrapOutcome, BackupError> {
    let head = location::read_prefix(target, HEADER_LEN as u64).await?;
    let head: [u8; HEADER_LEN] = head.try_into().map_err(|h: Vec<u8>| {
        FormatError::Truncated(format!(
            "the object ends inside the header ({} of {HEADER_LEN} bytes)",
            h.len()
        ))
    })?;
    let header = Header::parse(&head)?;
    if header.kek_id == new.id() {
        header.unwrap(new)?;
        return Ok(RewrapOutcome::AlreadyNew(header.backup_id));
    }
    let rewrapped = header.rewrap(old, new)?;
    let new_head = rewrapped.encode();
    let body = location::open_from(target, HEADER_LEN as u64).await?;
    let mut writer = target.create().await?;
    let copied = async {
        let sink = writer.sink();
        let mut hasher = Sha256::new();
        sink.write_all(&new_head)
            .await
            .map_err(stream::StreamError::Write)?;
        hasher.update(new_head);
        let mut hashing = HashingReader {
            inner: body,
            hasher: &mut hasher,
            count: 0,
        };
        tokio::io::copy(&mut hashing, sink)
            .await
            .map_err(stream::StreamError::Write)?;
        let n = hashing.count;
        sink.flush().await.map_err(stream::StreamError::Write)?;
        Ok::<_, BackupError>((hex::encode(hasher.finalize()), HEADER_LEN as u64 + n))
    }
    .await;
    match copied {
        Ok((sha256, size)) => {
            writer.commit().await?;
            Ok(RewrapOutcome::Done(Rewrapped {
                backup_id: header.backup_id,
                location: target.display(),
                old_kek_id: header.kek_id.to_string(),
                new_kek_id: new.id().to_string(),
                sha256,
                size_bytes: size,
            }))
        }
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

/// SHA-256 and size of a whole object.
pub async fn hash_object(target: &Target) -> Result<(String, u64), BackupError> {
    let (source, _) = target.open().await?;
    let mut hasher = Sha256::new();
    let mut reader = HashingReader {
        inner: source,
        hasher: &mut hasher,
        count: 0,
    };
    tokio::io::copy(&mut reader, &mut tokio::io::sink())
        .await
        .map_err(stream::StreamError::Read)?;
    let n = reader.count;
    Ok((hex::encode(hasher.finalize()), n))
}

/// Hashes and counts what is read through it.
pub struct HashingReader<'a> {
    inner: stream::Source,
    hasher: &'a mut Sha256,
    count: u64,
}

impl<'a> HashingReader<'a> {
    /// Reads `inner`, feeding every byte to `hasher`.
    pub fn new(inner: stream::Source, hasher: &'a mut Sha256) -> Self {
        Self {
            inner,
            hasher,
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl tokio::io::AsyncRead for HashingReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        let n = new.len() as u64;
        self.hasher.update(new);
        self.count += n;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashing_reader_hashes_and_counts_what_passes() {
        let data = b"backup bytes".to_vec();
        let mut hasher = Sha256::new();
        let mut r = HashingReader::new(Box::new(std::io::Cursor::new(data.clone())), &mut hasher);
        let mut out = Vec::new();
        tokio::io::copy(&mut r, &mut out).await.unwrap();
        assert_eq!(r.count(), data.len() as u64);
        assert_eq!(out, data);
        assert_eq!(hasher.finalize(), Sha256::digest(&data));
    }
}
