//! `rekey rotate NAME [--wait] [--reason TEXT]`: rotate a credential now,
//! through the admin API (the engine runs it like a scheduled rotation).

use std::{process::ExitCode, time::Duration};

use clap::Args;

use super::client::{ApiClient, ClientArgs};
use crate::{error::ProblemFound, units::HumanDuration};

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
    pub timeout: HumanDuration,
    /// Print the rotation as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `rekey rotate`.
pub async fn run(args: RotateArgs) -> anyhow::Result<ExitCode> {
    let RotateArgs {
        name,
        wait,
        reason,
        timeout,
        json,
        client,
    } = args;
    let timeout = timeout.get();
    // One key per invocation: a retried request never queues a second rotation.
    let key = uuid::Uuid::new_v4().to_string();
    let api = ApiClient::new(&client, timeout.max(Duration::from_secs(30)))?;
    let mut r = api
        .rotate(&name, reason.as_deref(), wait, Some(&key))
        .await?;
    if wait {
        let deadline = tokio::time::Instant::now() + timeout;
        while !r.finished {
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "rotation {} of `{name}` has not finished after {}; it is {} (check later: GET /v1/rotations/{})",
                    r.id,
                    humantime::format_duration(timeout),
                    r.status,
                    r.id
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            r = api.rotation(r.id).await?;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if r.finished {
        println!(
            "rotation {} of {}: {}{}",
            r.id,
            r.credential,
            r.status,
            r.version_id
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default()
        );
    } else {
        println!(
            "rotation {} of {} {} (see /v1/rotations/{})",
            r.id, r.credential, r.status, r.id
        );
    }
    if r.finished && r.status != "succeeded" {
        return Err(ProblemFound(format!(
            "rotation {} of `{name}` {}: {}",
            r.id,
            r.status,
            r.error.as_deref().unwrap_or("no error recorded")
        ))
        .into());
    }
    Ok(ExitCode::SUCCESS)
}
