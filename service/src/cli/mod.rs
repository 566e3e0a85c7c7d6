//! The command line: the root of the clap tree, `main()` and dispatch.
//!
//! Every command group has its own file (flags, defaults, printing) and
//! calls the capabilities' operations, which take typed inputs and return
//! typed reports; nothing below `cli` prints or knows about flags:
//!
//! ```text
//!   serve  dev  status  rotate  ca  token  etcd  backup  migrate  (completions)
//!     │     │      │       │          │      │      │
//!     ▼     ▼      ├───────┴─► client (admin API: paged lists, rotate)
//!   runtime        ▼                  ▼      ▼      ▼
//!            store / scan       k8s::bootstrap  etcd  backup
//! ```
//!
//! Shared pieces: `db` (`--config`/`--database-url`), `kube`
//! (`--kubeconfig`/`--context`), `output` (JSON, relative times, progress).
//! Exit codes (DESIGN.md): 0 success, 1 a problem was found or an operation
//! failed, 2 bad usage or bad input (see [`crate::error`]).

pub mod backup;
pub mod ca;
pub mod client;
pub mod completions;
pub mod db;
pub mod dev;
pub mod etcd;
pub mod etcd_flags;
pub mod etcd_migrate;
pub mod etcd_retire;
pub mod kube;
pub mod migrate;
pub mod output;
pub mod rotate;
pub mod serve;
pub mod status;
pub mod token;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

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
    #[arg(long, global = true, env = "REKEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the scheduler, watchers and admin API on a configuration file.
    Serve(serve::ServeArgs),
    /// Run everything locally on embedded defaults: throwaway Postgres, dev CA, file sinks.
    Dev(dev::DevArgs),
    /// Every tracked credential with its expiry (exit 1 if any has expired).
    Status(status::StatusArgs),
    /// Rotate a credential now, through the admin API.
    Rotate(rotate::RotateArgs),
    /// Certificate authorities: create one, rotate an issuer's CA, show issuers.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Bootstrap tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// etcd encryption at rest.
    #[command(subcommand)]
    Etcd(etcd::EtcdCommand),
    /// Encrypted etcd backups.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Apply database migrations.
    Migrate(db::DbArgs),
    // The help text (with how to install the script) is `CompletionsArgs`'s.
    Completions(completions::CompletionsArgs),
}

/// Log line format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormat> for crate::telemetry::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
}

/// Entry point of the binary: parses arguments, runs, maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = if matches!(cli.command, Command::Dev(_)) {
        "warn"
    } else {
        "info"
    };
    if let Err(e) = crate::telemetry::init_logging(
        cli.log.as_deref().unwrap_or(default_filter),
        cli.log_format.into(),
    ) {
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
        Command::Serve(args) => serve::run(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Rotate(args) => rotate::run(args).await,
        Command::Ca(cmd) => ca::run(cmd).await,
        Command::Token(cmd) => token::run(cmd).await,
        Command::Etcd(cmd) => etcd::run(cmd).await,
        Command::Backup(cmd) => backup::run(cmd).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Completions(args) => completions::run(args, Cli::command()),
    }
}
