//! `rekey status`: every tracked credential with its expiry.

use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::db::DbArgs;
use crate::store::{
    Store,
    credentials::{Credential, State},
};

/// `rekey status`
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Machine-readable output (`{"credentials": [...]}`, RFC 3339 times).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
    /// Ask a running server's admin API (`--server URL`) instead of the database.
    #[command(flatten)]
    pub client: crate::api::client::ClientArgs,
}

/// One row of `rekey status --json`.
#[derive(Debug, Serialize)]
pub struct StatusRow {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Validity start.
    pub not_before: Option<String>,
    /// Expiry (null: never expires).
    pub not_after: Option<String>,
    /// Next rotation (null: not rotated by rekey).
    pub next_rotation_at: Option<String>,
    /// `valid`, `expired`, `failing`, `pending`, `no-expiry`, `revoked`.
    pub state: State,
}

/// The `--json` document.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    /// Every tracked credential, by name.
    pub credentials: Vec<StatusRow>,
}

fn rfc3339(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Builds the status document from credentials at `now`.
pub fn document(credentials: &[Credential], now: DateTime<Utc>) -> StatusDoc {
    StatusDoc {
        credentials: credentials
            .iter()
            .map(|c| StatusRow {
                name: c.name.clone(),
                kind: c.kind.clone(),
                not_before: rfc3339(c.not_before),
                not_after: rfc3339(c.not_after),
                next_rotation_at: if c.managed {
                    rfc3339(c.next_rotation_at)
                } else {
                    None
                },
                state: c.state(now),
            })
            .collect(),
    }
}

/// "in 3m 20s" / "5h ago" / "-".
pub fn relative(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else { return "-".into() };
    let d = t - now;
    let secs = d.num_seconds().unsigned_abs();
    let human = if secs >= 2 * 86_400 {
        format!("{}d", secs / 86_400)
    } else if secs >= 3_600 {
        format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    };
    if d.num_seconds() >= 0 {
        format!("in {human}")
    } else {
        format!("{human} ago")
    }
}

/// Renders the human table.
pub fn table(credentials: &[Credential], now: DateTime<Utc>) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "KIND".to_string(),
        "STATE".to_string(),
        "EXPIRES".to_string(),
        "NEXT ROTATION".to_string(),
    ]];
    for c in credentials {
        let expires = match c.not_after {
            Some(t) => format!(
                "{} ({})",
                t.format("%Y-%m-%d %H:%M:%S"),
                relative(Some(t), now)
            ),
            None => "never".into(),
        };
        let next = if c.managed {
            relative(c.next_rotation_at, now)
        } else {
            "not managed".into()
        };
        rows.push([
            c.name.clone(),
            c.kind.clone(),
            c.state(now).as_str().to_string(),
            expires,
            next,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Lists, prints, and returns whether any credential has expired.
pub async fn print(store: &Store, json: bool) -> anyhow::Result<bool> {
    let now = Utc::now();
    let credentials = store.list_credentials().await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&document(&credentials, now))?
        );
    } else {
        print!("{}", table(&credentials, now));
        let legacy = credentials
            .iter()
            .filter(|c| c.state(now) == State::NoExpiry)
            .count();
        if legacy > 0 {
            eprintln!(
                "warning: {legacy} credential(s) never expire (legacy long-lived tokens): replace them with short-lived ones"
            );
        }
    }
    Ok(credentials.iter().any(|c| c.state(now) == State::Expired))
}

/// Runs `rekey status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.client.server.is_some() {
        return crate::api::client::status_command(&args.client, args.json).await;
    }
    let config = args.db.load_config()?;
    let store = args.db.connect().await?;
    if let Some(c) = &config
        && !c.scans.is_empty()
    {
        let dirs: Vec<_> = c.scans.iter().map(|s| s.dir.clone()).collect();
        crate::scan::record(&store, &dirs).await?;
    }
    let expired = print(&store, args.json).await?;
    Ok(if expired {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
