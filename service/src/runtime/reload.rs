//! The configuration file, live: `rekey serve` re-reads `rekey.toml` when it
//! changes (its content, read through the path, so a ConfigMap's `..data`
//! symlink swap counts) and on SIGHUP. Credentials added, changed and
//! removed take effect at once (the same sync as at start-up); a file that
//! does not load is refused with the start-up error text, logged and
//! counted, and the running configuration stays. Sections that only take
//! effect at start-up are named as needing a restart.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config, issue::Issuers, rotate::declare, schedule::Jitter, sink::SinkContext,
    store::Store,
};

/// How often the file is looked at (besides SIGHUP).
pub const POLL: Duration = Duration::from_secs(2);

/// The sections a running service applies live; every other one needs a
/// restart.
const LIVE: &[&str] = &["certificate", "token"];

/// What the running service needs to apply a new file.
pub struct Live {
    pub(crate) store: Store,
    pub(crate) sinks: SinkContext,
    pub(crate) issuers: Arc<Issuers>,
    pub(crate) jitter: Jitter,
    pub(crate) actor: String,
    /// The file's sections as started (restart-only ones are compared).
    pub(crate) started: serde_json::Value,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// What of a configuration is compared between loads: its sections as
/// written, the database URL (redacted when serialized) as a digest.
pub fn snapshot(config: &Config) -> serde_json::Value {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    if let (Some(db), Ok(url)) = (
        v.get_mut("database").and_then(|d| d.as_object_mut()),
        config.database.url(),
    ) {
        db.insert(
            "url".into(),
            hex::encode(Sha256::digest(url.as_bytes())).into(),
        );
    }
    v
}

/// The sections of `new` that differ from `started` (a [`snapshot`]) and
/// need a restart (pure).
pub fn needs_restart(started: &serde_json::Value, new: &Config) -> Vec<String> {
    let new = snapshot(new);
    let (Some(a), Some(b)) = (started.as_object(), new.as_object()) else {
        return vec![];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !LIVE.contains(&k.as_str()))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Why a new file is refused, beyond what loading it checks.
fn unusable(live: &Live, new: &Config) -> Option<String> {
    for (i, c) in new.certificates.iter().enumerate() {
        if live.issuers.get(c.issuer_name()).is_err() {
            return Some(format!(
                "certificate[{i}].issuer: `{}` is not an issuer of the running service: new issuers take effect at a restart",
                c.issuer_name()
            ));
        }
    }
    None
}

fn describe_metrics() {
    metrics::describe_counter!(
        "rekey_config_reload_failures_total",
        "Reloads of the configuration file that were refused (the running configuration stayed)"
    );
    metrics::describe_gauge!(
        "rekey_config_last_reload_success_timestamp_seconds",
        "When the configuration file was last loaded and applied (start-up counts)"
    );
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Re-reads `path` on change and on SIGHUP until `shutdown`, applying it
/// with `adjust` (the command line's overrides) first.
pub async fn run(
    live: Live,
    path: PathBuf,
    adjust: impl Fn(&mut Config),
    shutdown: CancellationToken,
) {
    describe_metrics();
    metrics::counter!("rekey_config_reload_failures_total").increment(0);
    metrics::gauge!("rekey_config_last_reload_success_timestamp_seconds").set(now_seconds());
    let digest = |p: &PathBuf| std::fs::read(p).ok().map(|b| Sha256::digest(&b).to_vec());
    let mut last = digest(&path);
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the configuration file is still watched");
            None
        }
    };
    loop {
        let signalled = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tokio::time::sleep(POLL) => false,
        };
        let now = digest(&path);
        if !signalled && (now == last || now.is_none()) {
            continue;
        }
        last = now;
        reload(&live, &path, &adjust, signalled).await;
    }
}

async fn reload(
    live: &Live,
    path: &std::path::Path,
    adjust: &impl Fn(&mut Config),
    signalled: bool,
) {
    let why = if signalled {
        "SIGHUP"
    } else {
        "the file changed"
    };
    let refuse = |message: String| {
        metrics::counter!("rekey_config_reload_failures_total").increment(1);
        tracing::error!(file = %path.display(), reason = why, error = %message, "configuration refused; the running configuration stays");
    };
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()),
    };
    adjust(&mut config);
    if let Some(e) = unusable(live, &config) {
        return refuse(e);
    }
    let restart = needs_restart(&live.started, &config);
    match declare::sync_config(
        &live.store,
        &config.certificates,
        &config.tokens,
        &live.sinks,
        live.jitter,
        &live.actor,
    )
    .await
    {
        Ok(report) => {
            let _ = live.store.wake_engines().await;
            metrics::gauge!("rekey_config_last_reload_success_timestamp_seconds")
                .set(now_seconds());
            tracing::info!(
                file = %path.display(), reason = why,
                added = ?report.added, changed = ?report.changed, removed = ?report.removed,
                "configuration reloaded"
            );
            if !restart.is_empty() {
                tracing::warn!(sections = ?restart, "these sections changed and take effect only at a restart");
            }
        }
        Err(e) => {
            metrics::counter!("rekey_config_reload_failures_total").increment(1);
            tracing::error!(error = %e, "cannot apply the reloaded configuration; retrying at the next change or SIGHUP");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_restart_only_sections_are_reported() {
        let parse = |t: &str| {
            crate::config::Config::parse(t, &Default::default(), std::path::Path::new("/")).unwrap()
        };
        let head = "[database]\nurl = \"postgres://a/db\"\n\n[issuer]\nca_cert = \"/ca.crt\"\nca_key = \"/ca.key\"\n";
        let a = parse(head);
        let started = snapshot(&a);
        let b = parse(&format!(
            "{head}\n[[certificate]]\nname = \"cert/x\"\ndns_names = [\"x.test\"]\nlifetime = \"1h\"\nsink = {{ kind = \"file\", dir = \"/tmp/x\" }}\n"
        ));
        assert!(needs_restart(&started, &b).is_empty());
        let c = parse(&format!(
            "{}\n[engine]\nconcurrency = 3\n",
            head.replace("//a/", "//b/")
        ));
        assert_eq!(needs_restart(&started, &c), ["database", "engine"]);
    }
}
