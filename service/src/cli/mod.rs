//! The command line: one clap tree, each subcommand a thin call into the library.
//!
//! Exit codes (DESIGN.md): 0 success, 1 a problem was found or an operation
//! failed, 2 bad usage or bad input (see [`crate::error`]).

mod ca;
pub(crate) mod db;
pub(crate) mod status;

pub use status::{relative, table as status_table};

/// Prints the status table of everything tracked (used by `rekey dev`).
pub async fn print_status(store: &crate::store::Store) -> anyhow::Result<bool> {
    status::print(store, false).await
}

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::error::{exit_code, report};

/// rekey keeps a Kubernetes cluster's infrastructure credentials short-lived.
#[derive(Debug, Parser)]
#[command(name = "rekey", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `rekey=debug`
    /// [default: `info`; `warn` for `rekey dev`, which prints its own progress].
    #[arg(long, global = true, env = "REKEY_LOG")]
    log: Option<String>,
    /// Log format.
    #[arg(long, global = true, env = "REKEY_LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    log_format: crate::telemetry::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scheduler, watchers and admin API on a configuration file.
    Serve(ServeArgs),
    /// Run everything locally on embedded defaults: throwaway Postgres, dev CA, file sinks.
    Dev(crate::runtime::dev::DevArgs),
    /// Every tracked credential with its expiry (exit 1 if any has expired).
    Status(status::StatusArgs),
    /// Rotate a credential now, through the admin API.
    Rotate(RotateArgs),
    /// The internal certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Bootstrap tokens.
    #[command(subcommand)]
    Token(crate::k8s::cli::TokenCommand),
    /// etcd encryption at rest.
    #[command(subcommand)]
    Etcd(crate::etcd::cli::EtcdCommand),
    /// Encrypted etcd backups.
    #[command(subcommand)]
    Backup(crate::backup::cli::BackupCommand),
    /// Apply database migrations.
    Migrate(db::DbArgs),
}

/// `rekey serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(long, env = "REKEY_CONFIG")]
    pub config: PathBuf,
    /// How to reach Kubernetes (overrides `[kubernetes]` in the file).
    #[command(flatten)]
    pub kube: crate::k8s::cli::KubeArgs,
}

/// `rekey rotate`
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The credential, e.g. `cert/default/web-tls`.
    pub name: String,
    /// Wait until the rotation has finished.
    #[arg(long)]
    pub wait: bool,
    /// Why, for the audit record.
    #[arg(long)]
    pub reason: Option<String>,
    /// With --wait: give up waiting after this long (the rotation goes on).
    #[arg(long, default_value = "5m")]
    pub timeout: crate::units::HumanDuration,
    /// Print the rotation as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: crate::api::client::ClientArgs,
}

/// Entry point of the binary: parses arguments, runs, maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = if matches!(cli.command, Command::Dev(_)) {
        "warn"
    } else {
        "info"
    };
    if let Err(e) =
        crate::telemetry::init_logging(cli.log.as_deref().unwrap_or(default_filter), cli.log_format)
    {
        eprintln!("error: --log: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => crate::runtime::serve(&args.config, &args.kube).await,
        Command::Dev(args) => crate::runtime::dev::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Ca(cmd) => ca::run(cmd),
        Command::Migrate(args) => db::migrate(args).await,
        Command::Rotate(a) => {
            crate::api::client::rotate_command(
                &a.client,
                &a.name,
                a.wait,
                a.reason.as_deref(),
                a.json,
                a.timeout.get(),
            )
            .await
        }
        Command::Token(cmd) => crate::k8s::cli::run(cmd).await,
        Command::Etcd(cmd) => crate::etcd::cli::run(cmd).await,
        Command::Backup(cmd) => crate::backup::cli::run(cmd).await,
    }
}
