//! `rekey backup run | encrypt | decrypt | list | prune | rewrap | verify`.
//!
//! Human output goes to stdout (or stderr when stdout carries backup data);
//! `--json` prints one stable JSON document instead. A progress bar with
//! throughput and ETA is drawn on stderr only when it is a terminal and
//! `--json` is not given.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    pin::Pin,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use super::{
    BackupConfig, BackupError, BackupRecord, ListFilter,
    format::{self, FormatError, HEADER_LEN, Header},
    kek::Kek,
    location::{self, Destination, S3Settings, Target},
    prune::{self, Retention},
    records, snapshot, stream,
};
use crate::{
    cli::db::DbArgs,
    config::Config,
    error::{BadInput, ProblemFound},
    store::{
        Store,
        audit::{NewEvent, Outcome},
    },
    units::{ByteSize, HumanDuration},
};

/// The audit actor of command-line operations.
const CLI_ACTOR: &str = "rekey/cli";

/// `rekey backup ...`
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Snapshot etcd, encrypt and upload to `backup.destination`; record it in Postgres.
    Run(RunArgs),
    /// Encrypt a file or standard input into a backup object (no database needed).
    Encrypt(EncryptArgs),
    /// Decrypt a backup object to a file or standard output (no database needed).
    Decrypt(DecryptArgs),
    /// List recorded backups, newest first.
    List(ListArgs),
    /// Delete old backups (objects and records) by count or age.
    Prune(PruneArgs),
    /// Re-wrap stored backups' data keys under a new KEK, without re-encrypting bodies.
    Rewrap(RewrapArgs),
    /// Restore drill: decrypt to a temporary file and check it is a valid etcd snapshot.
    Verify(VerifyArgs),
}

/// `rekey backup run`
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    db: DbArgs,
    /// KEK file (default: `backup.kek_file`).
    #[arg(long)]
    kek_file: Option<PathBuf>,
    /// Write the backup metrics in Prometheus text format to this file
    /// (for node-exporter's textfile collector).
    #[arg(long)]
    metrics_file: Option<PathBuf>,
    /// Machine-readable output: the backup record.
    #[arg(long)]
    json: bool,
}

/// `rekey backup encrypt`
#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// KEK file: 32 random bytes, raw or base64 (default: `backup.kek_file` of `--config`).
    #[arg(long)]
    kek_file: Option<PathBuf>,
    /// What to encrypt: a file, or `-` for standard input.
    #[arg(long = "in", value_name = "FILE|-")]
    input: String,
    /// Where to write the backup: a path, `-`, file://, s3://, gs:// or az:// URL.
    #[arg(long, value_name = "URL")]
    out: String,
    /// Plaintext bytes per chunk (1KiB..64MiB).
    #[arg(long, default_value = "1MiB")]
    chunk_size: ByteSize,
    /// Replace an existing local output file.
    #[arg(long)]
    force: bool,
    /// A config file for the KEK and S3 settings (`[backup]`).
    #[arg(long, env = "REKEY_CONFIG")]
    config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `rekey backup decrypt`
#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// KEK file (default: `backup.kek_file` of `--config`).
    #[arg(long)]
    kek_file: Option<PathBuf>,
    /// The backup: a path, `-`, file://, s3://, gs:// or az:// URL.
    #[arg(long, value_name = "URL")]
    from: String,
    /// Where to write the plaintext: a file (appears only once fully authenticated), or `-`.
    #[arg(long, value_name = "FILE|-")]
    out: String,
    /// Refuse the object unless it holds this backup id.
    #[arg(long)]
    backup_id: Option<Uuid>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
    /// A config file for the KEK and S3 settings (`[backup]`).
    #[arg(long, env = "REKEY_CONFIG")]
    config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `rekey backup list`
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Include pruned backups.
    #[arg(long)]
    all: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `rekey backup prune`
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Keep the newest N completed backups (default, when neither flag is
    /// given: `backup.keep`). With both flags, a backup is deleted only when
    /// both allow it.
    #[arg(long)]
    keep: Option<u32>,
    /// Delete completed backups older than this (e.g. `30d`).
    #[arg(long)]
    older_than: Option<HumanDuration>,
    /// Only say what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `rekey backup rewrap`
#[derive(Debug, Args)]
pub struct RewrapArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The KEK the backups are wrapped with now.
    #[arg(long)]
    old_kek: PathBuf,
    /// The KEK to wrap them with.
    #[arg(long)]
    new_kek: PathBuf,
    /// Only these objects (default: every backup under `backup.destination`
    /// and every recorded backup wrapped with the old KEK).
    #[arg(long, value_name = "URL")]
    from: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `rekey backup verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The backup to check: a path, file://, s3://, gs:// or az:// URL.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "latest",
        conflicts_with = "latest"
    )]
    from: Option<String>,
    /// Check the newest completed backup recorded in Postgres.
    #[arg(long)]
    latest: bool,
    /// KEK file (default: `backup.kek_file`).
    #[arg(long)]
    kek_file: Option<PathBuf>,
    /// Refuse the object unless it holds this backup id.
    #[arg(long)]
    backup_id: Option<Uuid>,
    /// Directory for the temporary plaintext (default: `TMPDIR`).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Runs `rekey backup ...`.
pub async fn run(cmd: BackupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BackupCommand::Run(a) => with_interrupt(run_cmd(a)).await,
        BackupCommand::Encrypt(a) => with_interrupt(encrypt_cmd(a)).await,
        BackupCommand::Decrypt(a) => with_interrupt(decrypt_cmd(a)).await,
        BackupCommand::List(a) => list_cmd(a).await,
        BackupCommand::Prune(a) => prune_cmd(a).await,
        BackupCommand::Rewrap(a) => with_interrupt(rewrap_cmd(a)).await,
        BackupCommand::Verify(a) => with_interrupt(verify_cmd(a)).await,
    }
}

/// Runs `work` until done or SIGINT/SIGTERM; on a signal the work is dropped,
/// which removes temporary files.
async fn with_interrupt(
    work: impl Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let signal = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = async { match &mut term { Some(t) => { t.recv().await; } None => std::future::pending().await } } => "SIGTERM",
        }
    };
    tokio::select! {
        r = work => r,
        sig = signal => anyhow::bail!("interrupted by {sig}: nothing was committed"),
    }
}

/// Maps a backup error to the process exit code: bad input is 2.
fn fail(e: BackupError) -> anyhow::Error {
    if e.is_bad_input() {
        anyhow::Error::new(BadInput::new(e))
    } else {
        anyhow::Error::new(e)
    }
}

fn progress_bar(json: bool, total: Option<u64>, verb: &str) -> ProgressBar {
    if !show_progress(json, std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
    } else {
        "{msg} {spinner} {bytes} {binary_bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(verb.to_string());
    bar
}

/// A progress bar only on a terminal, and never with `--json`.
pub fn show_progress(json: bool, stderr_is_terminal: bool) -> bool {
    !json && stderr_is_terminal
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Option<Config>> {
    path.map(|p| Config::load(p).map_err(|e| anyhow::Error::new(BadInput::new(e))))
        .transpose()
}

fn backup_section(config: &Option<Config>) -> Option<&BackupConfig> {
    config.as_ref().and_then(|c| c.backup.as_ref())
}

fn require_backup(config: &Option<Config>) -> anyhow::Result<&BackupConfig> {
    backup_section(config).ok_or_else(|| {
        BadInput::msg("no [backup] section: pass --config FILE with a [backup] section").into()
    })
}

fn load_kek(flag: Option<&Path>, config: &Option<Config>, flag_name: &str) -> anyhow::Result<Kek> {
    let path = match (flag, backup_section(config)) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(b)) => b.kek_file.clone(),
        (None, None) => {
            return Err(BadInput::msg(format!(
                "no key-encryption key: pass {flag_name} FILE (or --config with backup.kek_file)"
            ))
            .into());
        }
    };
    Kek::load(&path).map_err(|e| fail(e.into()))
}

fn s3_settings(config: &Option<Config>) -> S3Settings {
    backup_section(config)
        .map(BackupConfig::s3)
        .unwrap_or_default()
}

fn print_json<T: Serialize>(value: &T, to_stderr: bool) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if to_stderr {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Connects to the database only when one is configured.
async fn maybe_connect(db: &DbArgs, config: &Option<Config>) -> anyhow::Result<Option<Store>> {
    let configured =
        db.database_url.is_some() || config.as_ref().is_some_and(|c| c.database.url().is_ok());
    if configured {
        Ok(Some(db.connect().await?))
    } else {
        Ok(None)
    }
}

async fn run_cmd(a: RunArgs) -> anyhow::Result<ExitCode> {
    let config = a.db.load_config()?;
    let mut backup = require_backup(&config)?.clone();
    if let Some(k) = &a.kek_file {
        backup.kek_file = k.clone();
    }
    let etcd = config
        .as_ref()
        .and_then(|c| c.etcd.clone())
        .ok_or_else(|| BadInput::msg("no [etcd] section: `backup run` snapshots etcd"))?;
    let store = a.db.connect().await?;
    let recorder = a.metrics_file.as_ref().map(|_| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        (recorder, handle)
    });
    let opts = super::RunOptions {
        requested_by: CLI_ACTOR.into(),
        progress: progress_bar(a.json, None, "backup"),
    };
    let work = super::run_backup(&store, &backup, &etcd, &opts);
    let result = match &recorder {
        Some((rec, _)) => {
            let _guard = metrics::set_default_local_recorder(rec);
            super::describe_metrics();
            work.await
        }
        None => work.await,
    };
    opts.progress.finish_and_clear();
    if let (Some(path), Some((_, handle))) = (&a.metrics_file, &recorder) {
        write_atomically(path, handle.render().as_bytes())
            .with_context(|| format!("writing metrics to {}", path.display()))?;
    }
    let record = result.map_err(fail)?;
    if a.json {
        print_json(&record, false)?;
    } else {
        println!(
            "backup {} completed: {} ({} bytes, sha256 {}, KEK {}, etcd revision {})",
            record.id,
            record.location,
            record.size_bytes.unwrap_or(0),
            record.sha256.as_deref().unwrap_or("-"),
            record.kek_id,
            record
                .etcd_revision
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Refuses to replace an existing local file unless `--force`.
fn check_overwrite(target: &Target, force: bool) -> anyhow::Result<()> {
    if let Target::File(p) = target
        && !force
        && std::fs::metadata(p).is_ok_and(|m| m.is_file())
    {
        return Err(BadInput::msg(format!(
            "{} exists: pass --force to replace it",
            p.display()
        ))
        .into());
    }
    Ok(())
}

#[derive(Serialize)]
struct EncryptReport {
    backup_id: Uuid,
    kek_id: String,
    location: String,
    chunk_size: u32,
    plaintext_bytes: u64,
    size_bytes: u64,
    chunks: u64,
}

async fn encrypt_cmd(a: EncryptArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(a.config.as_deref())?;
    let kek = load_kek(a.kek_file.as_deref(), &config, "--kek-file")?;
    let chunk_size = u32::try_from(a.chunk_size.0)
        .ok()
        .filter(|c| (format::MIN_CHUNK..=format::MAX_CHUNK).contains(c))
        .ok_or_else(|| {
            BadInput::msg(format!(
                "--chunk-size {} is outside 1KiB..64MiB",
                a.chunk_size
            ))
        })?;
    let s3 = s3_settings(&config);
    let input = Target::parse(&a.input, &s3).map_err(|e| fail(e.into()))?;
    if matches!(input, Target::Object { .. }) {
        return Err(BadInput::msg("--in takes a local file or `-`").into());
    }
    let output = Target::parse(&a.out, &s3).map_err(|e| fail(e.into()))?;
    check_overwrite(&output, a.force)?;
    let (source, size) = input.open().await.map_err(|e| fail(e.into()))?;
    let progress = progress_bar(a.json, size, "encrypt");
    let mut writer = output.create().await.map_err(|e| fail(e.into()))?;
    let opts = stream::EncryptOptions {
        chunk_size,
        backup_id: Uuid::new_v4(),
        hash: false,
    };
    let result = stream::encrypt(source, writer.sink(), &kek, &opts, &progress).await;
    progress.finish_and_clear();
    let enc = match result {
        Ok(enc) => {
            writer.commit().await.map_err(|e| fail(e.into()))?;
            enc
        }
        Err(e) => {
            writer.abort().await;
            return Err(fail(e.into())).context("encrypting: nothing was written");
        }
    };
    let report = EncryptReport {
        backup_id: enc.backup_id,
        kek_id: enc.kek_id.to_string(),
        location: output.display(),
        chunk_size: enc.chunk_size,
        plaintext_bytes: enc.plaintext_bytes,
        size_bytes: enc.ciphertext_bytes,
        chunks: enc.chunks,
    };
    let to_stderr = matches!(output, Target::Stdio);
    if a.json {
        print_json(&report, to_stderr)?;
    } else {
        let line = format!(
            "encrypted {} bytes into backup {} at {} ({} bytes, KEK {})",
            report.plaintext_bytes,
            report.backup_id,
            report.location,
            report.size_bytes,
            report.kek_id
        );
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
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

#[derive(Serialize)]
struct DecryptReport {
    backup_id: Uuid,
    kek_id: String,
    location: String,
    output: String,
    chunk_size: u32,
    plaintext_bytes: u64,
    size_bytes: u64,
    chunks: u64,
}

async fn decrypt_cmd(a: DecryptArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(a.config.as_deref())?;
    let kek = load_kek(a.kek_file.as_deref(), &config, "--kek-file")?;
    let s3 = s3_settings(&config);
    let from = Target::parse(&a.from, &s3).map_err(|e| fail(e.into()))?;
    let out = Target::parse(&a.out, &s3).map_err(|e| fail(e.into()))?;
    if matches!(out, Target::Object { .. }) {
        return Err(BadInput::msg(
            "--out takes a local file or `-`: plaintext never goes to object storage",
        )
        .into());
    }
    check_overwrite(&out, a.force)?;
    let (source, size) = from.open().await.map_err(|e| fail(e.into()))?;
    let progress = progress_bar(a.json, size, "decrypt");
    let mut writer = out.create().await.map_err(|e| fail(e.into()))?;
    let opts = stream::DecryptOptions {
        expect_id: a.backup_id,
        hash: false,
    };
    let written = Arc::new(AtomicU64::new(0));
    let result = {
        let mut counting = Counting {
            inner: writer.sink(),
            count: Arc::clone(&written),
        };
        stream::decrypt(source, &mut counting, &kek, &opts, &progress).await
    };
    progress.finish_and_clear();
    let dec = match result {
        Ok(d) => {
            writer.commit().await.map_err(|e| fail(e.into()))?;
            d
        }
        Err(e) => {
            let stdout = matches!(out, Target::Stdio);
            writer.abort().await;
            let n = written.load(Ordering::Relaxed);
            let err = fail(e.into());
            return Err(if stdout {
                if n > 0 {
                    err.context(format!(
                        "decrypting {}: the plaintext on standard output is INCOMPLETE — the stream \
                         was cut off after {n} authenticated bytes; discard it",
                        from.display()
                    ))
                } else {
                    err.context(format!(
                        "decrypting {}: nothing was written to standard output",
                        from.display()
                    ))
                }
            } else {
                err.context(format!(
                    "decrypting {}: no output file was written",
                    from.display()
                ))
            });
        }
    };
    let report = DecryptReport {
        backup_id: dec.backup_id,
        kek_id: dec.kek_id.to_string(),
        location: from.display(),
        output: out.display(),
        chunk_size: dec.chunk_size,
        plaintext_bytes: dec.plaintext_bytes,
        size_bytes: dec.ciphertext_bytes,
        chunks: dec.chunks,
    };
    let to_stderr = matches!(out, Target::Stdio);
    if a.json {
        print_json(&report, to_stderr)?;
    } else {
        let line = format!(
            "decrypted backup {} ({} bytes, KEK {}) to {}",
            report.backup_id, report.plaintext_bytes, report.kek_id, report.output
        );
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct ListReport<'a> {
    backups: &'a [BackupRecord],
}

async fn list_cmd(a: ListArgs) -> anyhow::Result<ExitCode> {
    let store = a.db.connect().await?;
    let backups = super::list_backups(
        &store,
        ListFilter {
            include_pruned: a.all,
            ..Default::default()
        },
    )
    .await
    .map_err(fail)?;
    if a.json {
        print_json(&ListReport { backups: &backups }, false)?;
        return Ok(ExitCode::SUCCESS);
    }
    if backups.is_empty() {
        println!("no backups recorded");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:<20}  {:<9}  {:>12}  {:>9}  {:<16}  LOCATION",
        "ID", "STARTED", "STATUS", "BYTES", "REVISION", "KEK"
    );
    for b in &backups {
        println!(
            "{:<36}  {:<20}  {:<9}  {:>12}  {:>9}  {:<16}  {}",
            b.id,
            b.started_at.format("%Y-%m-%dT%H:%M:%SZ"),
            b.status,
            b.size_bytes.map(|s| s.to_string()).unwrap_or_default(),
            b.etcd_revision.map(|r| r.to_string()).unwrap_or_default(),
            b.kek_id,
            b.location
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct PruneReport {
    dry_run: bool,
    pruned: Vec<BackupRecord>,
    kept: usize,
}

async fn prune_cmd(a: PruneArgs) -> anyhow::Result<ExitCode> {
    let config = a.db.load_config()?;
    // Flags replace the configured `keep`; without flags, `backup.keep` applies.
    let retention = if a.keep.is_some() || a.older_than.is_some() {
        Retention {
            keep: a.keep,
            older_than: a.older_than.map(HumanDuration::chrono),
        }
    } else {
        Retention {
            keep: backup_section(&config).and_then(|b| b.keep),
            older_than: None,
        }
    };
    if retention.keep.is_none() && retention.older_than.is_none() {
        return Err(BadInput::msg(
            "nothing to prune by: pass --keep N or --older-than DURATION (or set backup.keep)",
        )
        .into());
    }
    if retention.keep == Some(0) {
        return Err(BadInput::msg("--keep must be at least 1").into());
    }
    let s3 = s3_settings(&config);
    let store = a.db.connect().await?;
    let all = records::list(&store, ListFilter::default())
        .await
        .map_err(|e| fail(e.into()))?;
    let doomed = prune::plan(&all, retention, chrono::Utc::now());
    let completed = all.iter().filter(|r| r.status == "completed").count();
    let mut pruned = Vec::new();
    for id in doomed {
        let Some(rec) = all.iter().find(|r| r.id == id) else {
            continue;
        };
        if !a.dry_run {
            let target = Target::parse(&rec.location, &s3).map_err(|e| fail(e.into()))?;
            target
                .delete()
                .await
                .map_err(|e| fail(e.into()))
                .with_context(|| format!("deleting backup {id}"))?;
            records::mark_pruned(&store, id)
                .await
                .map_err(|e| fail(e.into()))?;
            let mut event =
                NewEvent::new(CLI_ACTOR, "backup.prune", &rec.location, Outcome::Success);
            event.details = serde_json::json!({ "backup_id": id });
            store.audit(event).await?;
        }
        pruned.push(rec.clone());
    }
    let report = PruneReport {
        dry_run: a.dry_run,
        kept: completed - pruned.len(),
        pruned,
    };
    if a.json {
        print_json(&report, false)?;
    } else {
        let verb = if a.dry_run { "would delete" } else { "deleted" };
        for r in &report.pruned {
            println!("{verb} backup {} ({})", r.id, r.location);
        }
        println!(
            "{} backup(s) {verb}, {} completed backup(s) kept",
            report.pruned.len(),
            report.kept
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Clone, Serialize)]
struct Rewrapped {
    backup_id: Uuid,
    location: String,
    old_kek_id: String,
    new_kek_id: String,
    sha256: String,
    size_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Skipped {
    location: String,
    reason: String,
}

#[derive(Serialize, Default)]
struct RewrapReport {
    rewrapped: Vec<Rewrapped>,
    skipped: Vec<Skipped>,
    failed: Vec<Skipped>,
}

enum RewrapOutcome {
    Done(Rewrapped),
    AlreadyNew(Uuid),
}

/// Re-wraps one object: a new header, then the body copied byte for byte.
async fn rewrap_one(target: &Target, old: &Kek, new: &Kek) -> Result<RewrapOutcome, BackupError> {
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
async fn hash_object(target: &Target) -> Result<(String, u64), BackupError> {
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
struct HashingReader<'a> {
    inner: stream::Source,
    hasher: &'a mut Sha256,
    count: u64,
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

async fn rewrap_cmd(a: RewrapArgs) -> anyhow::Result<ExitCode> {
    let config = a.db.load_config()?;
    let old = Kek::load(&a.old_kek).map_err(|e| fail(e.into()))?;
    let new = Kek::load(&a.new_kek).map_err(|e| fail(e.into()))?;
    if old.id() == new.id() {
        return Err(BadInput::msg("--old-kek and --new-kek are the same key").into());
    }
    let s3 = s3_settings(&config);
    let store = maybe_connect(&a.db, &config).await?;
    let mut targets: Vec<Target> = Vec::new();
    if a.from.is_empty() {
        let backup = require_backup(&config)?;
        let dest = Destination::parse(&backup.destination, &s3).map_err(|e| fail(e.into()))?;
        for l in dest
            .list(super::OBJECT_SUFFIX)
            .await
            .map_err(|e| fail(e.into()))?
        {
            targets.push(l.target);
        }
        if let Some(store) = &store {
            for r in records::list(store, ListFilter::default())
                .await
                .map_err(|e| fail(e.into()))?
            {
                if r.status == "completed"
                    && r.kek_id == old.id().to_string()
                    && !targets.iter().any(|t| t.display() == r.location)
                {
                    targets.push(Target::parse(&r.location, &s3).map_err(|e| fail(e.into()))?);
                }
            }
        }
    } else {
        for f in &a.from {
            targets.push(Target::parse(f, &s3).map_err(|e| fail(e.into()))?);
        }
    }
    let mut report = RewrapReport::default();
    for t in &targets {
        match rewrap_one(t, &old, &new).await {
            Ok(RewrapOutcome::Done(r)) => {
                if let Some(store) = &store {
                    records::update_envelope(
                        store,
                        r.backup_id,
                        &r.new_kek_id,
                        &r.sha256,
                        r.size_bytes as i64,
                    )
                    .await?;
                    let mut event =
                        NewEvent::new(CLI_ACTOR, "backup.rewrap", &r.location, Outcome::Success);
                    event.details = serde_json::json!({
                        "backup_id": r.backup_id, "old_kek_id": r.old_kek_id, "new_kek_id": r.new_kek_id,
                    });
                    store.audit(event).await?;
                }
                if !a.json {
                    println!(
                        "re-wrapped backup {} ({}): KEK {} -> {}",
                        r.backup_id, r.location, r.old_kek_id, r.new_kek_id
                    );
                }
                report.rewrapped.push(r);
            }
            Ok(RewrapOutcome::AlreadyNew(id)) => {
                // A previous run may have rewritten the object but not the record.
                if let Some(store) = &store
                    && records::get(store, id)
                        .await?
                        .is_some_and(|r| r.kek_id != new.id().to_string())
                {
                    let (sha256, size) = hash_object(t).await.map_err(fail)?;
                    records::update_envelope(
                        store,
                        id,
                        &new.id().to_string(),
                        &sha256,
                        size as i64,
                    )
                    .await?;
                }
                report.skipped.push(Skipped {
                    location: t.display(),
                    reason: "already wrapped with the new KEK".into(),
                });
            }
            Err(e) => {
                if !a.json {
                    eprintln!("error: {}: {e}", t.display());
                }
                report.failed.push(Skipped {
                    location: t.display(),
                    reason: e.to_string(),
                });
            }
        }
    }
    if a.json {
        print_json(&report, false)?;
    } else {
        println!(
            "{} re-wrapped, {} already under the new KEK, {} failed",
            report.rewrapped.len(),
            report.skipped.len(),
            report.failed.len()
        );
    }
    if !report.failed.is_empty() {
        return Err(ProblemFound(format!(
            "{} backup(s) could not be re-wrapped (they still open with their old key)",
            report.failed.len()
        ))
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct VerifyReport {
    ok: bool,
    location: String,
    backup_id: Option<Uuid>,
    kek_id: Option<String>,
    size_bytes: Option<u64>,
    sha256: Option<String>,
    plaintext_bytes: Option<u64>,
    snapshot: Option<snapshot::SnapshotStatus>,
    error: Option<String>,
}

async fn verify_cmd(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = a.db.load_config()?;
    let kek = load_kek(a.kek_file.as_deref(), &config, "--kek-file")?;
    let s3 = s3_settings(&config);
    let mut expect_id = a.backup_id;
    let mut expect_sha = None;
    let mut store = None;
    let location = match (&a.from, a.latest) {
        (Some(f), _) => f.clone(),
        (None, _) => {
            let s = a.db.connect().await?;
            let latest = records::list(
                &s,
                ListFilter {
                    completed_only: true,
                    limit: 1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| fail(e.into()))?
            .into_iter()
            .next()
            .ok_or_else(|| ProblemFound("no completed backup is recorded".into()))?;
            expect_id = expect_id.or(Some(latest.id));
            expect_sha = latest.sha256.clone();
            store = Some(s);
            latest.location
        }
    };
    let from = Target::parse(&location, &s3).map_err(|e| fail(e.into()))?;
    let temp_dir = match &a.temp_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let (source, size) = from.open().await.map_err(|e| fail(e.into()))?;
    let progress = progress_bar(a.json, size, "verify");
    let mut report = VerifyReport {
        ok: false,
        location: from.display(),
        backup_id: None,
        kek_id: None,
        size_bytes: None,
        sha256: None,
        plaintext_bytes: None,
        snapshot: None,
        error: None,
    };
    let checked = async {
        let temp = tempfile::Builder::new()
            .prefix("rekey-verify-")
            .tempfile_in(&temp_dir)
            .map_err(|e| {
                BackupError::Io(format!("temporary file in {}: {e}", temp_dir.display()))
            })?;
        let mut file = tokio::fs::File::from_std(
            temp.reopen()
                .map_err(|e| BackupError::Io(format!("temporary file: {e}")))?,
        );
        let opts = stream::DecryptOptions {
            expect_id,
            hash: true,
        };
        let dec = stream::decrypt(source, &mut file, &kek, &opts, &progress).await?;
        report.backup_id = Some(dec.backup_id);
        report.kek_id = Some(dec.kek_id.to_string());
        report.size_bytes = Some(dec.ciphertext_bytes);
        report.sha256 = dec.sha256.clone();
        report.plaintext_bytes = Some(dec.plaintext_bytes);
        if let (Some(want), Some(got)) = (&expect_sha, &dec.sha256)
            && want != got
        {
            return Err(BackupError::Io(format!(
                "the object's SHA-256 is {got}, but {want} was recorded"
            )));
        }
        drop(file);
        let path = temp.path().to_path_buf();
        let st = tokio::task::spawn_blocking(move || snapshot::status(&path))
            .await
            .map_err(|e| BackupError::Io(e.to_string()))??;
        drop(temp);
        Ok::<_, BackupError>(st)
    }
    .await;
    progress.finish_and_clear();
    let outcome = match checked {
        Ok(st) => {
            report.ok = true;
            report.snapshot = Some(st);
            Outcome::Success
        }
        Err(e) => {
            report.error = Some(e.to_string());
            Outcome::Failure
        }
    };
    if let Some(s) = &store {
        let mut event = NewEvent::new(CLI_ACTOR, "backup.verify", &report.location, outcome);
        event.details = serde_json::json!({ "backup_id": report.backup_id, "error": report.error });
        s.audit(event).await?;
    }
    if a.json {
        print_json(&report, false)?;
    } else if let Some(st) = &report.snapshot {
        println!(
            "backup {} verified: a valid etcd snapshot at revision {} ({} keys, {} bytes, hash {:08x})",
            report.backup_id.map(|i| i.to_string()).unwrap_or_default(),
            st.revision,
            st.total_keys,
            st.total_size,
            st.hash
        );
    }
    match report.error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            Err(ProblemFound(format!("verification of {} failed: {e}", report.location)).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_on_a_terminal_without_json() {
        assert!(show_progress(false, true));
        assert!(!show_progress(true, true));
        assert!(!show_progress(false, false));
        assert!(!show_progress(true, false));
    }
}
