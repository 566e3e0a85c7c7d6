//! Carrying out a storage migration.
//!
//! ```text
//!  1 pre-flight   every resource scanned and every value opened with the
//!                 configuration: a value it cannot open means it is not the
//!                 API server's configuration → Mismatch, nothing rewritten
//!  2 lock + row   the `etcd-migrate` lock (one migration at a time); the
//!                 stopped run of the same plan is continued from its cursors
//!  3 rewrite      etcd page by page from the cursor (values judged by their
//!                 prefix alone); each value not under the write key: GET +
//!                 unchanged PUT through the Kubernetes API, throttled; the
//!                 cursor saved after every page
//!  4 re-scan      `etcd verify` of each resource, recorded in etcd_checks;
//!                 stale values left → another pass (at most three), then
//!                 failure naming them
//! ```
//!
//! Memory stays flat in the number of objects: pages are processed and
//! dropped; reports keep counts, not keys. A crash anywhere loses at most one
//! page of progress, and nothing already rewritten is written again: it is
//! no longer stale, so the next pass skips it.

use std::{collections::BTreeMap, time::Instant};

use chrono::Utc;
use futures::StreamExt;
use sha2::Digest;

use super::{
    model::{
        MigrateError, MigrateOptions, MigrateReport, ResourcePlan, ResourceReport, needs_rewrite,
        object_of, plan_id, plan_resources,
    },
    rate::RateLimit,
    rewrite::{Outcome, Rewriter},
};
use crate::{
    etcd::{
        client::connect,
        db::{self, MigrationTotals, NewMigration},
        encryption::{self, EncryptionConfiguration},
        report::Problem,
        scan::{self, DEFAULT_MAX_LISTED, ScanOptions, prefix_end},
        values::Keyring,
        verify::{VerifyOptions, verify_and_record},
    },
    k8s::K8sError,
    store::{
        Store,
        audit::{NewEvent, Outcome as AuditOutcome},
        leadership::LeaderLock,
    },
};

/// Values read from etcd per page (one page of rewrites, then the cursor is saved).
pub const PAGE: i64 = 1024;
/// Rewrite passes over a resource before stale values left are a failure.
pub const MAX_PASSES: usize = 3;
/// The lock that keeps migrations one at a time (CLI, API, schedule).
pub const LOCK: &str = "etcd-migrate";

/// Why the rewriting stopped.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error(transparent)]
    Kube(#[from] K8sError),
    #[error("reading etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// Runs a migration (see the module docs). `Err` when it could not start
/// (bad input, a configuration that does not match, etcd or the Kubernetes
/// API unreachable, another migration running); a migration that started
/// and failed returns its report with `exit_code` 1 and the `error`.
pub async fn migrate(
    opts: &MigrateOptions,
    store: Option<&Store>,
    kube: &kube::Client,
) -> Result<MigrateReport, MigrateError> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let path = opts.encryption_config.display().to_string();
    let text = std::fs::read_to_string(&opts.encryption_config)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| MigrateError::ReadConfig {
            path: path.clone(),
            source,
        })?;
    let sha = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let config =
        encryption::parse(&text).map_err(|e| MigrateError::BadInput(format!("{path}: {e}")))?;
    let plans = plan_resources(&config, &opts.resources).map_err(MigrateError::BadInput)?;
    let client = connect(&opts.etcd).await?;

    let mut reports = Vec::new();
    for plan in &plans {
        reports.push(preflight(&client, &config, plan).await?);
    }
    let mut report = MigrateReport {
        migration_id: None,
        resumed: false,
        dry_run: opts.dry_run,
        encryption_config: path.clone(),
        max_rate: opts.max_rate,
        planned: reports.iter().map(|r| r.to_rewrite).sum(),
        resources: reports,
        rewritten: 0,
        conflicts: 0,
        gone: 0,
        unchanged: 0,
        stale_after: None,
        started_at,
        duration_ms: 0,
        rewrites_per_second: 0.0,
        exit_code: 0,
        error: None,
    };
    if opts.dry_run {
        report.duration_ms = elapsed_ms(clock);
        return Ok(report);
    }
    let rewriters = {
        let mut out = Vec::new();
        for plan in &plans {
            out.push(Rewriter::resolve(kube, &plan.gr).await?);
        }
        out
    };
    opts.progress.set_length(report.planned);
    let mut lock: Option<LeaderLock> = None;
    if let Some(store) = store {
        lock = Some(
            store
                .try_lead(LOCK, &opts.requested_by)
                .await?
                .ok_or(MigrateError::Busy)?,
        );
        let plan = plan_id(&plans);
        match db::unfinished_migration(store, &plan).await? {
            Some(row) => {
                db::resume_migration(store, row.id, &opts.requested_by, opts.max_rate).await?;
                resume_cursors(&mut report.resources, &row.progress);
                let done: u64 = report
                    .resources
                    .iter()
                    .map(|r| r.rewritten + r.conflicts + r.gone + r.unchanged)
                    .sum();
                opts.progress.inc(done);
                report.planned = report.resources.iter().map(|r| r.to_rewrite).sum();
                totals(&mut report);
                report.migration_id = Some(row.id);
                report.resumed = true;
                tracing::info!(migration = row.id, "continuing a stopped storage migration");
            }
            None => {
                let id = db::start_migration(
                    store,
                    &NewMigration {
                        trigger: opts.trigger,
                        requested_by: &opts.requested_by,
                        encryption_config: &path,
                        config_sha256: &sha,
                        plan: &plan,
                        resources: &plans.iter().map(|p| p.resource.clone()).collect::<Vec<_>>(),
                        max_rate: opts.max_rate,
                    },
                )
                .await?;
                report.migration_id = Some(id);
            }
        }
    }
    let run = Runner {
        client: &client,
        config: &config,
        opts,
        store,
        limit: RateLimit::new(opts.max_rate),
    };
    let outcome = run.rewrite_all(&plans, &rewriters, &mut report).await;
    report.duration_ms = elapsed_ms(clock);
    report.rewrites_per_second = if report.duration_ms > 0 {
        report.rewritten as f64 * 1000.0 / report.duration_ms as f64
    } else {
        0.0
    };
    let left = report.stale_after.unwrap_or(0);
    match outcome {
        Err(e) => report.error = Some(e.to_string()),
        Ok(()) if left > 0 => {
            let writes: Vec<String> = report
                .resources
                .iter()
                .filter(|r| r.stale_after.unwrap_or(0) > 0)
                .map(|r| {
                    format!(
                        "{} ({} stale, write key {})",
                        r.resource,
                        r.stale_after.unwrap_or(0),
                        r.write_key
                    )
                })
                .collect();
            report.error = Some(format!(
                "{left} value(s) are still not under the write key after {MAX_PASSES} passes: {}; \
                 the API server left {} object(s) unchanged: is every API server running with this \
                 configuration's write key (restart them after changing it)?",
                writes.join(", "),
                report.unchanged
            ));
        }
        Ok(()) => {}
    }
    report.exit_code = u8::from(report.error.is_some());
    if let (Some(store), Some(id)) = (store, report.migration_id) {
        db::finish_migration(
            store,
            id,
            report.error.is_none(),
            report.stale_after,
            report.error.as_deref(),
        )
        .await?;
        let outcome = if report.error.is_none() {
            AuditOutcome::Success
        } else {
            AuditOutcome::Failure
        };
        let details = serde_json::json!({
            "migration_id": id, "resumed": report.resumed, "planned": report.planned,
            "rewritten": report.rewritten, "conflicts": report.conflicts, "gone": report.gone,
            "unchanged": report.unchanged, "stale_after": report.stale_after, "error": report.error,
        });
        match &opts.audit {
            // An API request's: its event, with its caller and request id.
            Some(ticket) => ticket.write(store, outcome, details).await?,
            None => {
                let mut event = NewEvent::new(&opts.requested_by, "etcd.migrate", "etcd", outcome);
                event.reason = Some(opts.trigger.as_str().into());
                event.details = details;
                store.audit(event).await?;
            }
        }
    }
    if let Some(l) = lock {
        l.release().await;
    }
    tracing::info!(
        planned = report.planned,
        rewritten = report.rewritten,
        stale_after = ?report.stale_after,
        exit_code = report.exit_code,
        "storage migration finished"
    );
    Ok(report)
}

fn elapsed_ms(clock: Instant) -> u64 {
    u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Scans one resource opening every value: what needs a rewrite, and proof
/// that the configuration opens everything stored.
async fn preflight(
    client: &etcd_client::Client,
    config: &EncryptionConfiguration,
    plan: &ResourcePlan,
) -> Result<ResourceReport, MigrateError> {
    let ring = Keyring::new(config, &plan.gr);
    let scan = scan::scan(
        client,
        &ring,
        &ScanOptions {
            prefix: plan.prefix.clone(),
            resource: plan.resource.clone(),
            sample: None,
            max_listed: 5,
            revision: None,
        },
    )
    .await?;
    let plaintext_unreadable = if ring.reads_plaintext() {
        0
    } else {
        scan.counts.plaintext
    };
    let unreadable = scan.counts.undecryptable + plaintext_unreadable;
    if unreadable > 0 {
        let mut examples = scan.undecryptable_reasons.clone();
        if plaintext_unreadable > 0 {
            examples.extend(scan.plaintext.iter().take(3).map(|k| Problem {
                key: k.clone(),
                reason:
                    "stored in plaintext, and the configuration has no identity provider".into(),
            }));
        }
        return Err(MigrateError::Mismatch {
            resource: plan.resource.clone(),
            count: unreadable,
            examples,
        });
    }
    let by_key: BTreeMap<String, u64> = scan
        .by_key
        .iter()
        .filter(|(k, n)| **k != plan.write_key && **n > 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    Ok(ResourceReport {
        resource: plan.resource.clone(),
        prefix: plan.prefix.clone(),
        write_key: plan.write_key.clone(),
        total: scan.total,
        to_rewrite: by_key.values().sum(),
        by_key,
        not_verifiable: scan.not_verifiable,
        ..Default::default()
    })
}

/// Takes the cursors and counters of a stopped run (per resource) into
/// `reports`: a resumed migration reports the whole migration's work.
fn resume_cursors(reports: &mut [ResourceReport], progress: &serde_json::Value) {
    for r in reports {
        let saved = &progress[&r.resource];
        let n = |f: &str| saved[f].as_u64().unwrap_or(0);
        r.cursor = saved["cursor"].as_str().map(String::from);
        r.done = saved["done"].as_bool().unwrap_or(false) && r.to_rewrite == 0;
        r.rewritten = n("rewritten");
        r.conflicts = n("conflicts");
        r.gone = n("gone");
        r.unchanged = n("unchanged");
        r.to_rewrite += r.rewritten + r.conflicts + r.gone + r.unchanged;
    }
}

struct Runner<'a> {
    client: &'a etcd_client::Client,
    config: &'a EncryptionConfiguration,
    opts: &'a MigrateOptions,
    store: Option<&'a Store>,
    limit: RateLimit,
}

impl Runner<'_> {
    async fn rewrite_all(
        &self,
        plans: &[ResourcePlan],
        rewriters: &[Rewriter],
        report: &mut MigrateReport,
    ) -> Result<(), Stop> {
        let mut stale_after = BTreeMap::new();
        for round in 0..MAX_PASSES {
            for (i, plan) in plans.iter().enumerate() {
                let todo = if round == 0 {
                    !report.resources[i].done && report.resources[i].to_rewrite > 0
                } else {
                    stale_after.get(&i).copied().unwrap_or(0) > 0
                };
                if !todo {
                    report.resources[i].done = true;
                    continue;
                }
                if round > 0 {
                    report.resources[i].cursor = None;
                    report.resources[i].done = false;
                }
                self.pass(i, plan, &rewriters[i], report).await?;
            }
            stale_after.clear();
            let before = report.rewritten + report.conflicts;
            for (i, plan) in plans.iter().enumerate() {
                let left = self.rescan(plan, &mut report.resources[i]).await?;
                stale_after.insert(i, left);
            }
            let left: u64 = stale_after.values().sum();
            report.stale_after = Some(left);
            if left == 0 || (round > 0 && report.rewritten + report.conflicts == before) {
                break;
            }
        }
        Ok(())
    }

    /// One pass over a resource from its cursor.
    async fn pass(
        &self,
        i: usize,
        plan: &ResourcePlan,
        rewriter: &Rewriter,
        report: &mut MigrateReport,
    ) -> Result<(), Stop> {
        let ring = Keyring::new(self.config, &plan.gr);
        let end = prefix_end(plan.prefix.as_bytes());
        let mut start = match &report.resources[i].cursor {
            Some(c) => {
                let mut k = c.as_bytes().to_vec();
                k.push(0);
                k
            }
            None => plan.prefix.as_bytes().to_vec(),
        };
        loop {
            let (kvs, more) = scan::page(self.client, &start, &end, PAGE).await?;
            let Some(last) = kvs.last() else { break };
            let targets: Vec<(Option<String>, String)> = kvs
                .iter()
                .filter(|kv| {
                    needs_rewrite(&ring.judge(kv.key(), kv.value(), false), &plan.write_key)
                })
                .filter_map(|kv| object_of(&plan.prefix, kv.key()))
                .collect();
            start = last.key().to_vec();
            let cursor = String::from_utf8_lossy(&start).into_owned();
            start.push(0);
            drop(kvs);
            self.batch(rewriter, targets, &mut report.resources[i])
                .await?;
            report.resources[i].cursor = Some(cursor);
            report.resources[i].done = !more;
            totals(report);
            self.save(report).await?;
            if !more {
                break;
            }
        }
        report.resources[i].done = true;
        self.save(report).await
    }

    /// Rewrites one page's objects, `concurrency` at a time, throttled.
    async fn batch(
        &self,
        rewriter: &Rewriter,
        targets: Vec<(Option<String>, String)>,
        r: &mut ResourceReport,
    ) -> Result<(), Stop> {
        let n = targets.len();
        let half = n.div_ceil(2);
        let mut done = 0usize;
        let mut results = futures::stream::iter(targets.into_iter().map(|(ns, name)| async move {
            self.limit.acquire().await;
            rewriter.rewrite(ns.as_deref(), &name).await
        }))
        .buffer_unordered(self.opts.concurrency.max(1));
        while let Some(result) = results.next().await {
            match result? {
                Outcome::Rewritten => r.rewritten += 1,
                Outcome::Conflict => r.conflicts += 1,
                Outcome::Gone => r.gone += 1,
                Outcome::Unchanged => r.unchanged += 1,
            }
            self.opts.progress.inc(1);
            done += 1;
            if n >= 2 && done == half {
                crate::crash::point("etcd-migrate-mid-batch");
            }
        }
        Ok(())
    }

    /// Verifies one resource (recorded in etcd_checks when there is a store):
    /// the values still not under the write key.
    async fn rescan(&self, plan: &ResourcePlan, r: &mut ResourceReport) -> Result<u64, Stop> {
        let opts = VerifyOptions {
            encryption_config: self.opts.encryption_config.clone(),
            etcd: self.opts.etcd.clone(),
            prefix: plan.prefix.clone(),
            resource: Some(plan.resource.clone()),
            sample: None,
            max_key_age: self.opts.etcd.max_key_age,
            max_listed: DEFAULT_MAX_LISTED,
        };
        let (verified, check_id) = verify_and_record(&opts, self.store, self.opts.trigger)
            .await
            .map_err(|e| {
                Stop::Migrate(MigrateError::BadInput(format!(
                    "re-scanning {}: {e}",
                    plan.prefix
                )))
            })?;
        let left = verified.scan.as_ref().map_or(0, |s| {
            s.counts.stale
                + if plan.write_key == "identity" {
                    0
                } else {
                    s.counts.plaintext
                }
        });
        r.stale_after = Some(left);
        r.check_id = check_id;
        Ok(left)
    }

    async fn save(&self, report: &MigrateReport) -> Result<(), Stop> {
        let (Some(store), Some(id)) = (self.store, report.migration_id) else {
            return Ok(());
        };
        let progress: serde_json::Map<String, serde_json::Value> = report
            .resources
            .iter()
            .map(|r| {
                (
                    r.resource.clone(),
                    serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect();
        db::save_migration_progress(
            store,
            id,
            &serde_json::Value::Object(progress),
            MigrationTotals {
                planned: report.planned,
                rewritten: report.rewritten,
                conflicts: report.conflicts,
                gone: report.gone,
                unchanged: report.unchanged,
            },
        )
        .await
        .map_err(|e| Stop::Migrate(MigrateError::Store(e)))
    }
}

/// Sums the resources' counters into the report's.
fn totals(report: &mut MigrateReport) {
    report.rewritten = report.resources.iter().map(|r| r.rewritten).sum();
    report.conflicts = report.resources.iter().map(|r| r.conflicts).sum();
    report.gone = report.resources.iter().map(|r| r.gone).sum();
    report.unchanged = report.resources.iter().map(|r| r.unchanged).sum();
}
