//! `rekey status`: every tracked credential with its expiry.

use std::{io::Write, process::ExitCode, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::{
    client::{ApiClient, ClientArgs, PAGE_LIMIT, follow_pages},
    db::DbArgs,
    output::relative,
};
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
    pub client: ClientArgs,
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
    /// `valid`, `expired`, `failing`, `stale-consumer`, `pending`, `no-expiry`, `revoked`,
    /// `awaiting-approval`.
    pub state: State,
    /// sha256 (hex) of the leaf the probed consumer served at the last
    /// probe (null without `probe`, or before the first answer).
    pub served_fingerprint: Option<String>,
    /// When the probe saw it.
    pub served_checked_at: Option<String>,
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
                served_fingerprint: c.observed.served_fingerprint.clone(),
                served_checked_at: rfc3339(c.observed.served_checked_at),
            })
            .collect(),
    }
}

/// The human table, printed a page at a time: the header comes with the
/// first page, and a column only ever widens (rows already printed stay as
/// they are). One page renders exactly as the whole list would.
#[derive(Debug, Default)]
pub struct StatusTable {
    widths: [usize; 5],
    header_done: bool,
}

const HEADER: [&str; 5] = ["NAME", "KIND", "STATE", "EXPIRES", "NEXT ROTATION"];

impl StatusTable {
    /// The lines of the next page of credentials.
    pub fn page(&mut self, credentials: &[Credential], now: DateTime<Utc>) -> String {
        let mut rows: Vec<[String; 5]> = Vec::with_capacity(credentials.len() + 1);
        if !self.header_done {
            rows.push(HEADER.map(String::from));
            self.header_done = true;
        }
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
        for (i, w) in self.widths.iter_mut().enumerate() {
            let widest = rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
            *w = (*w).max(widest);
        }
        let mut out = String::new();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&self.widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// Renders the human table of a whole list.
pub fn table(credentials: &[Credential], now: DateTime<Utc>) -> String {
    StatusTable::default().page(credentials, now)
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
        return from_server(&args.client, args.json).await;
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

/// `rekey status --server URL [--json]`: the inventory from a running server,
/// printed exactly as the local `rekey status` prints it. The table grows a
/// page at a time as pages arrive; `--json` waits for all of them.
async fn from_server(client: &ClientArgs, json: bool) -> anyhow::Result<ExitCode> {
    let api = ApiClient::new(client, Duration::from_secs(30))?;
    let now = Utc::now();
    let mut all: Vec<Credential> = Vec::new();
    let mut table = StatusTable::default();
    let mut expired = false;
    follow_pages(
        |token| {
            let api = &api;
            async move { api.credentials_page(PAGE_LIMIT, token.as_deref()).await }
        },
        |page| {
            let credentials: Vec<Credential> =
                page.credentials.iter().map(|c| c.to_stored(now)).collect();
            expired |= credentials.iter().any(|c| c.state(now) == State::Expired);
            if json {
                all.extend(credentials);
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(table.page(&credentials, now).as_bytes())?;
                out.flush()?;
            }
            Ok(())
        },
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&document(&all, now))?);
    }
    Ok(if expired {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(name: &str, not_after: Option<DateTime<Utc>>) -> Credential {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        Credential {
            id: 0,
            name: name.into(),
            kind: "certificate".into(),
            source: "config".into(),
            managed: true,
            spec: serde_json::json!({}),
            sink: serde_json::json!({}),
            schedule: None,
            not_before: None,
            not_after,
            current_version: None,
            current_version_number: None,
            next_rotation_at: None,
            next_rotation_reason: None,
            failures: 0,
            last_error: None,
            lease_owner: None,
            created_at: t0,
            updated_at: t0,
            observed: Default::default(),
        }
    }

    #[test]
    fn pages_print_one_header_and_widen_columns_only() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let first = [cred("cert/a", Some(now + chrono::TimeDelta::hours(3)))];
        let second = [cred("cert/a-much-longer-name", None)];
        let mut t = StatusTable::default();
        let one = t.page(&first, now);
        assert_eq!(one, table(&first, now), "one page is the whole table");
        assert!(one.starts_with("NAME "), "{one}");
        let two = t.page(&second, now);
        assert!(!two.contains("NAME"), "the header comes once:\n{two}");
        assert!(
            two.starts_with("cert/a-much-longer-name  certificate  pending"),
            "{two}"
        );
        let whole = table(&[first[0].clone(), second[0].clone()], now);
        assert_eq!(whole.lines().count(), 3, "{whole}");
    }

    #[test]
    fn a_request_awaiting_approval_has_its_own_state() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut c = cred("cert/ci/deployer", None);
        c.failures = 2;
        c.last_error = Some(format!(
            "{}CertificateSigningRequest rekey-x-1 (signer example.com/s): approve it",
            crate::store::credentials::AWAITING_APPROVAL
        ));
        assert_eq!(c.state(now), State::AwaitingApproval);
        let doc = serde_json::to_value(document(&[c.clone()], now)).unwrap();
        assert_eq!(doc["credentials"][0]["state"], "awaiting-approval");
        // Still valid from an earlier version: awaiting approval all the same.
        c.not_after = Some(now + chrono::TimeDelta::hours(1));
        assert_eq!(c.state(now), State::AwaitingApproval);
        // Expired trumps it.
        c.not_after = Some(now);
        assert_eq!(c.state(now), State::Expired);
        c.last_error = Some("publishing to x: boom".into());
        c.not_after = Some(now + chrono::TimeDelta::hours(1));
        assert_eq!(c.state(now), State::Failing);
    }

    #[test]
    fn empty_list_is_the_header() {
        let now = Utc::now();
        assert_eq!(
            table(&[], now),
            "NAME  KIND  STATE  EXPIRES  NEXT ROTATION\n"
        );
    }
}
