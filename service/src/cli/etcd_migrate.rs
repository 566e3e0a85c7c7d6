//! `rekey etcd migrate`: flags, their defaults from `[etcd]`, the plan and
//! the report, around [`etcd::migrate`](crate::etcd::migrate).
//!
//! Exit codes: 0 every value is under the write key (the re-scan counted
//! zero); 1 the migration failed or stale values remain, the configuration
//! does not open what etcd stores (nothing rewritten), another migration
//! runs; 2 bad input (flags, an unreadable or invalid EncryptionConfiguration,
//! a resource it does not cover).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;

use super::{
    db::DbArgs,
    etcd_flags::etcd_from_flags,
    kube::KubeArgs,
    output::{OnLength, print_json, progress_bar},
};
use crate::{
    error::BadInput,
    etcd::{
        EtcdConfig,
        db::Trigger,
        migrate::{
            self, MigrateOptions, MigrateReport,
            model::{CONCURRENCY, DEFAULT_MAX_RATE, check_resource_name, rate},
        },
    },
};

/// Who the command line records as the requester.
const CLI_ACTOR: &str = "cli";

/// `rekey etcd migrate`
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The API servers' EncryptionConfiguration file (the one they run with).
    /// Default: `etcd.encryption_config` of `--config`.
    #[arg(long, value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
    /// Resources to migrate, comma-separated (default: every resource the
    /// configuration names).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub resources: Vec<String>,
    /// Objects rewritten per second at most (0: no limit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RATE)]
    pub max_rate: f64,
    /// Scan and print the plan; rewrite nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// etcd client URLs, comma-separated. Default: `etcd.endpoints` of
    /// `--config`, else http://127.0.0.1:2379.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// CA certificate that signed etcd's serving certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate for etcd's client-certificate auth (PEM).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Key of the client certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How to reach the Kubernetes API (objects are rewritten through it).
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Where progress is kept (`etcd_migrations`, so a stopped migration
    /// resumes); without a database nothing is recorded.
    #[command(flatten)]
    pub db: DbArgs,
}

fn options(a: &MigrateArgs, from: Option<&EtcdConfig>) -> Result<MigrateOptions, BadInput> {
    let from = from.cloned().unwrap_or_default();
    let encryption_config = a
        .encryption_config
        .clone()
        .or(from.encryption_config.clone())
        .ok_or_else(|| {
            BadInput::msg(
                "--encryption-config FILE is required (or etcd.encryption_config in --config)",
            )
        })?;
    for r in &a.resources {
        check_resource_name(r).map_err(|m| BadInput::msg(format!("--resources: {m}")))?;
    }
    if !a.max_rate.is_finite() || a.max_rate < 0.0 {
        return Err(BadInput::msg(format!(
            "--max-rate: {} is not a rate (0 or more; 0: no limit)",
            a.max_rate
        )));
    }
    let etcd = etcd_from_flags(
        &a.endpoints,
        a.cacert.as_ref(),
        (a.cert.as_ref(), a.key.as_ref()),
        &from,
    )?;
    Ok(MigrateOptions {
        encryption_config,
        etcd,
        resources: if a.resources.is_empty() {
            from.migrate_resources.clone()
        } else {
            a.resources.clone()
        },
        max_rate: rate(a.max_rate),
        dry_run: a.dry_run,
        trigger: Trigger::Cli,
        requested_by: CLI_ACTOR.into(),
        concurrency: CONCURRENCY,
        progress: crate::backup::progress::Progress::hidden(),
        audit: None,
    })
}

/// Runs `rekey etcd migrate`.
pub async fn run(a: MigrateArgs) -> anyhow::Result<ExitCode> {
    let config = a.db.load_config()?;
    let mut opts = options(&a, config.as_ref().and_then(|c| c.etcd.as_ref()))?;
    let wants_db =
        a.db.database_url.is_some() || config.as_ref().is_some_and(|c| c.database.url.is_some());
    let store = if wants_db && !a.dry_run {
        Some(a.db.connect().await.context("connecting to the database")?)
    } else {
        None
    };
    let kube = a.kube.client(config.as_ref()).await?;
    let (bar, progress) = progress_bar(a.json, "migrate", OnLength::Count);
    opts.progress = progress;
    let result = migrate::migrate(&opts, store.as_ref(), &kube).await;
    bar.finish_and_clear();
    let report = result.map_err(|e| {
        if e.is_bad_input() {
            anyhow::Error::new(BadInput::new(e))
        } else {
            anyhow::Error::new(e)
        }
    })?;
    if a.json {
        print_json(&report, false)?;
    } else {
        print!("{}", human(&report));
    }
    Ok(ExitCode::from(report.exit_code))
}

/// The report for a terminal.
fn human(r: &MigrateReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let verb = if r.dry_run {
        "would rewrite"
    } else {
        "to rewrite"
    };
    for res in &r.resources {
        let from: Vec<String> = res
            .by_key
            .iter()
            .map(|(k, n)| format!("{n} under {k}"))
            .collect();
        let _ = writeln!(
            s,
            "{}: {} of {} value(s) {verb} to {}{}",
            res.resource,
            res.to_rewrite,
            res.total,
            res.write_key,
            if from.is_empty() {
                String::new()
            } else {
                format!(" ({})", from.join(", "))
            }
        );
        if res.not_verifiable > 0 {
            let _ = writeln!(
                s,
                "  {} KMS value(s): only the API server's plugin opens them",
                res.not_verifiable
            );
        }
    }
    if r.dry_run {
        let _ = writeln!(
            s,
            "dry run: nothing rewritten (at most {} object(s)/s)",
            r.max_rate
                .map_or("unlimited".to_string(), |n| n.to_string())
        );
        return s;
    }
    if r.resumed {
        let _ = writeln!(
            s,
            "continued the stopped migration {}",
            r.migration_id.unwrap_or(0)
        );
    }
    let _ = writeln!(
        s,
        "rewritten {}, rewritten by someone else (409) {}, gone {}, left unchanged by the API server {} ({:.1}/s)",
        r.rewritten, r.conflicts, r.gone, r.unchanged, r.rewrites_per_second
    );
    match (r.stale_after, &r.error) {
        (_, Some(e)) => {
            let _ = writeln!(s, "FAILED: {e}");
        }
        (Some(n), None) => {
            let _ = writeln!(s, "re-scan: {n} value(s) not under the write key");
        }
        (None, None) => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: MigrateArgs,
    }

    fn args(line: &str) -> MigrateArgs {
        T::try_parse_from(std::iter::once("t").chain(line.split_whitespace()))
            .unwrap()
            .a
    }

    #[test]
    fn flags_and_defaults() {
        let o = options(&args("--encryption-config /e.yaml"), None).unwrap();
        assert_eq!(o.max_rate, Some(DEFAULT_MAX_RATE));
        assert!(o.resources.is_empty() && !o.dry_run);
        let o = options(
            &args(
                "--encryption-config /e.yaml --resources secrets,configmaps --max-rate 0 --dry-run",
            ),
            None,
        )
        .unwrap();
        assert_eq!(o.resources, ["secrets", "configmaps"]);
        assert_eq!(o.max_rate, None);
        assert!(o.dry_run);
        for bad in [
            "",
            "--encryption-config /e --resources Secrets",
            "--encryption-config /e --max-rate=-1",
            "--encryption-config /e --endpoints 10.0.0.1:2379",
        ] {
            assert!(options(&args(bad), None).is_err(), "{bad}");
        }
    }
}
