//! `rekey dev`: the main job on embedded defaults, and what it prints.
//!
//! The environment (throwaway Postgres, dev CA, generated configuration) is
//! set up by [`runtime::dev::prepare`]; this file starts the service on it
//! and shows what happens: a line per rotation from the engine's events and
//! the status table every [`STATUS_EVERY`].

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use chrono::Utc;
use clap::Args;

use super::{output::relative, status};
use crate::{
    error::BadInput,
    rotate::{EventOutcome, RotationEvent},
    runtime::{
        self,
        dev::{DEMO_CERTIFICATES, DevOptions, DevStep},
    },
};

/// How often the status table is printed.
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// `rekey dev`
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where everything it creates lives.
    #[arg(long, default_value = ".rekey-dev")]
    pub state_dir: PathBuf,
    /// Use this Postgres instead of starting a throwaway one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the admin API listens (mutual TLS; certificates under STATE_DIR/api).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub api_listen: SocketAddr,
}

/// Runs `rekey dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| BadInput::msg(format!("--state-dir {}: {e}", args.state_dir.display())))?;
    let state = std::fs::canonicalize(&args.state_dir)?;
    let shutdown = runtime::shutdown_on_signals();
    let opts = DevOptions {
        state: state.clone(),
        database_url: args.database_url,
        api_listen: args.api_listen,
    };
    let env = runtime::dev::prepare(&opts, |step| match step {
        DevStep::StartingPostgres(dir) => {
            println!("starting a throwaway Postgres in {}", dir.display());
        }
        DevStep::CreatedCa(dir) => println!("created a dev CA in {}", dir.display()),
    })
    .await?;
    let running = runtime::start(env.config, shutdown.clone()).await?;
    println!(
        "rekey dev is running: {} demo certificates under {}",
        DEMO_CERTIFICATES,
        state.join("certs").display()
    );
    println!(
        "  state: {}   (config: {})",
        state.display(),
        state.join("rekey.toml").display()
    );
    println!(
        "  status from another shell: rekey status --database-url '{}'",
        env.database_url
    );
    print!("  {}", env.api.usage(args.api_listen));
    println!("  Ctrl-C stops everything, Postgres included.\n");

    let store = running.store.clone();
    let pool = running.store.clone();
    let mut events = running.engine.subscribe();
    let printer = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // First table once the initial issuance is done, then every STATUS_EVERY.
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(3),
                STATUS_EVERY,
            );
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        println!();
                        let _ = status::print(&store, false).await;
                        println!();
                    }
                    ev = events.recv() => match ev {
                        Ok(e) => println!("{}", rotation_line(e, Utc::now())),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => println!("({n} rotations not shown)"),
                        Err(_) => break,
                    }
                }
            }
        })
    };
    let result = running.wait().await;
    let _ = printer.await;
    // Close the connections before Postgres stops under them (else sqlx
    // warns about each one it finds closed).
    pool.close().await;
    println!("\nstopped.");
    drop(env.postgres);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The line printed for one engine event.
fn rotation_line(e: RotationEvent, now: chrono::DateTime<Utc>) -> String {
    match e.outcome {
        EventOutcome::Succeeded | EventOutcome::Recovered => format!(
            "{}  rotated  {:<24} {:<6} trigger={:<8} expires {} next {}{}",
            now.format("%H:%M:%S"),
            e.credential,
            e.number
                .map_or_else(|| "v?".to_string(), |n| format!("v{n}")),
            e.trigger,
            e.not_after
                .map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_default(),
            relative(e.next_rotation_at, now),
            if e.outcome == EventOutcome::Recovered {
                " (recovered)"
            } else {
                ""
            },
        ),
        EventOutcome::Failed => format!(
            "{}  FAILED   {:<24} {} (retry {})",
            now.format("%H:%M:%S"),
            e.credential,
            e.error.unwrap_or_default(),
            relative(e.next_rotation_at, now),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotate::EventOutcome;

    #[test]
    fn a_rotation_line_shows_the_credentials_own_version_number() {
        let now = Utc::now();
        let e = RotationEvent {
            credential: "cert/dev/web".into(),
            kind: "certificate".into(),
            trigger: "startup".into(),
            rotation_id: None,
            outcome: EventOutcome::Succeeded,
            version: Some(987_654),
            number: Some(3),
            not_after: Some(now),
            next_rotation_at: Some(now),
            error: None,
            duration_ms: 1,
        };
        let line = rotation_line(e, now);
        assert!(line.contains(" v3 "), "{line}");
        assert!(
            !line.contains("987654"),
            "the global id is not shown: {line}"
        );
    }
}
