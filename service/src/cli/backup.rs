//! `rekey backup run | encrypt | decrypt | list | prune | rewrap | verify`:
//! flags, defaults from `[backup]`, and what each prints.
//!
//! The operations are the backup capability's: [`backup::run_backup`],
//! [`crypt::encrypt`], [`crypt::decrypt`], [`backup::list_backups`],
//! [`pruner::prune`], [`rewrap::rewrap`] and [`verify::verify`] (the
//! restore drill). Human output goes to stdout (or stderr when stdout
//! carries backup data); `--json` prints the operation's report instead.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;
use uuid::Uuid;

use super::{
    db::DbArgs,
    output::{OnLength, print_json, print_line, progress_bar},
};
use crate::{
    backup::{
        self, BackupConfig, BackupError, BackupRecord, ListFilter,
        crypt::{self, CryptError, DecryptRequest, EncryptRequest},
        format,
        kek::Kek,
        location::{Destination, StoreSettings, Target},
        prune::Retention,
        pruner::{self, PruneError},
        rewrap::{self, RewrapEvent},
        verify::{self, VerifyRequest},
    },
    config::Config,
    error::{BadInput, ProblemFound},
    store::Store,
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
    /// Also decrypt N of the snapshot's Secrets (all if fewer) with the
    /// backup's escrowed keys only (no EncryptionConfiguration needed).
    #[arg(long, value_name = "N")]
    decrypt_secrets: Option<u64>,
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

/// Maps an operation's error to the process exit code: bad input is 2.
fn classify<E>(e: E, is_bad_input: fn(&E) -> bool) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    if is_bad_input(&e) {
        anyhow::Error::new(BadInput::new(e))
    } else {
        anyhow::Error::new(e)
    }
}

/// Maps a backup error to the process exit code: bad input is 2.
fn fail(e: BackupError) -> anyhow::Error {
    classify(e, BackupError::is_bad_input)
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

fn store_settings(config: &Option<Config>) -> StoreSettings {
    backup_section(config)
        .map(BackupConfig::store_settings)
        .unwrap_or_default()
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
    let (bar, progress) = progress_bar(a.json, "backup", OnLength::Spinner);
    let opts = backup::RunOptions {
        requested_by: CLI_ACTOR.into(),
        progress,
        audit: None,
    };
    let work = backup::run_backup(&store, &backup, &etcd, &opts);
    let result = match &recorder {
        Some((rec, _)) => {
            let _guard = metrics::set_default_local_recorder(rec);
            backup::describe_metrics();
            work.await
        }
        None => work.await,
    };
    bar.finish_and_clear();
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
    let settings = store_settings(&config);
    let input = Target::parse(&a.input, &settings).map_err(|e| fail(e.into()))?;
    if matches!(input, Target::Object { .. }) {
        return Err(BadInput::msg("--in takes a local file or `-`").into());
    }
    let output = Target::parse(&a.out, &settings).map_err(|e| fail(e.into()))?;
    let to_stderr = matches!(output, Target::Stdio);
    let (bar, progress) = progress_bar(a.json, "encrypt", OnLength::Bar);
    let request = EncryptRequest {
        input,
        output,
        kek,
        chunk_size,
        force: a.force,
        progress,
    };
    let result = crypt::encrypt(&request).await;
    bar.finish_and_clear();
    let report = result.map_err(|e| classify(e, CryptError::is_bad_input))?;
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
        print_line(&line, to_stderr);
    }
    Ok(ExitCode::SUCCESS)
}

async fn decrypt_cmd(a: DecryptArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(a.config.as_deref())?;
    let kek = load_kek(a.kek_file.as_deref(), &config, "--kek-file")?;
    let settings = store_settings(&config);
    let from = Target::parse(&a.from, &settings).map_err(|e| fail(e.into()))?;
    let out = Target::parse(&a.out, &settings).map_err(|e| fail(e.into()))?;
    if matches!(out, Target::Object { .. }) {
        return Err(BadInput::msg(
            "--out takes a local file or `-`: plaintext never goes to object storage",
        )
        .into());
    }
    let to_stderr = matches!(out, Target::Stdio);
    let (bar, progress) = progress_bar(a.json, "decrypt", OnLength::Bar);
    let request = DecryptRequest {
        from,
        out,
        kek,
        expect_id: a.backup_id,
        force: a.force,
        progress,
    };
    let result = crypt::decrypt(&request).await;
    bar.finish_and_clear();
    let report = result.map_err(|e| classify(e, CryptError::is_bad_input))?;
    if a.json {
        print_json(&report, to_stderr)?;
    } else {
        let line = format!(
            "decrypted backup {} ({} bytes, KEK {}) to {}",
            report.backup_id, report.plaintext_bytes, report.kek_id, report.output
        );
        print_line(&line, to_stderr);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct ListReport<'a> {
    backups: &'a [BackupRecord],
}

async fn list_cmd(a: ListArgs) -> anyhow::Result<ExitCode> {
    let store = a.db.connect().await?;
    let backups = backup::list_backups(
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
    let settings = store_settings(&config);
    let store = a.db.connect().await?;
    let report = pruner::prune(
        &store,
        retention,
        &settings,
        a.dry_run,
        CLI_ACTOR,
        chrono::Utc::now(),
    )
    .await
    .map_err(|e| classify(e, PruneError::is_bad_input))?;
    if a.json {
        print_json(&report, false)?;
    } else {
        let verb = if a.dry_run { "would delete" } else { "deleted" };
        for r in &report.pruned {
            println!("{verb} backup {} ({})", r.id, r.location);
        }
        let summary = if a.dry_run {
            "would be deleted"
        } else {
            "deleted"
        };
        println!(
            "{} backup(s) {summary}, {} completed backup(s) kept",
            report.pruned.len(),
            report.kept
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn rewrap_cmd(a: RewrapArgs) -> anyhow::Result<ExitCode> {
    let config = a.db.load_config()?;
    let old = Kek::load(&a.old_kek).map_err(|e| fail(e.into()))?;
    let new = Kek::load(&a.new_kek).map_err(|e| fail(e.into()))?;
    if old.id() == new.id() {
        return Err(BadInput::msg("--old-kek and --new-kek are the same key").into());
    }
    let settings = store_settings(&config);
    let store = maybe_connect(&a.db, &config).await?;
    let show = |event: RewrapEvent<'_>| {
        if a.json {
            return;
        }
        match event {
            RewrapEvent::Rewrapped(r) => println!(
                "re-wrapped backup {} ({}): KEK {} -> {}",
                r.backup_id, r.location, r.old_kek_id, r.new_kek_id
            ),
            RewrapEvent::Skipped(_) => {}
            RewrapEvent::Failed(f) => eprintln!("error: {}: {}", f.location, f.reason),
        }
    };
    let report = if a.from.is_empty() {
        let backup = require_backup(&config)?;
        let dest =
            Destination::parse(&backup.destination, &settings).map_err(|e| fail(e.into()))?;
        rewrap::rewrap_all(
            &dest,
            store.as_ref(),
            &old,
            &new,
            &settings,
            CLI_ACTOR,
            show,
        )
        .await
    } else {
        let targets = a
            .from
            .iter()
            .map(|f| Target::parse(f, &settings).map_err(|e| fail(e.into())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let targets = rewrap::with_escrows(targets, &settings)
            .await
            .map_err(fail)?;
        rewrap::rewrap(&targets, &old, &new, store.as_ref(), CLI_ACTOR, show).await
    }
    .map_err(fail)?;
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

async fn verify_cmd(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = a.db.load_config()?;
    let kek = load_kek(a.kek_file.as_deref(), &config, "--kek-file")?;
    let settings = store_settings(&config);
    let mut expect_id = a.backup_id;
    let mut expect_sha256 = None;
    let mut store = None;
    let location = match (&a.from, a.latest) {
        (Some(f), _) => f.clone(),
        (None, _) => {
            let s = a.db.connect().await?;
            let latest = verify::latest(&s)
                .await
                .map_err(fail)?
                .ok_or_else(|| ProblemFound("no completed backup is recorded".into()))?;
            expect_id = expect_id.or(Some(latest.id));
            expect_sha256 = latest.sha256.clone();
            store = Some(s);
            latest.location
        }
    };
    let from = Target::parse(&location, &settings).map_err(|e| fail(e.into()))?;
    let (bar, progress) = progress_bar(a.json, "verify", OnLength::Bar);
    let request = VerifyRequest {
        from,
        kek,
        expect_id,
        expect_sha256,
        temp_dir: a.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
        progress,
        decrypt_secrets: a.decrypt_secrets,
        settings: settings.clone(),
    };
    let result = verify::verify(&request, store.as_ref().map(|s| (s, CLI_ACTOR))).await;
    bar.finish_and_clear();
    let report = result.map_err(fail)?;
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
        if let Some(d) = &report.secrets {
            println!(
                "Secrets: {} found, {} decrypted with the escrowed keys ({}), {} in plaintext, {} KMS (not verifiable here), {} failed",
                d.found,
                d.decrypted,
                d.by_key
                    .iter()
                    .map(|(k, n)| format!("{n} under {k}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                d.plaintext,
                d.not_verifiable,
                d.failed
            );
        }
    }
    match report.error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            Err(ProblemFound(format!("verification of {} failed: {e}", report.location)).into())
        }
    }
}
