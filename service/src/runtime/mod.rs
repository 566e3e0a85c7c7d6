//! Wiring: starts the engine, watchers, API and jobs, and waits on them.
//!
//! `rekey serve` and `rekey dev` both go through [`start`]: it connects to
//! Postgres, applies migrations, loads the issuers ([`issuers`]; their CAs
//! go into the inventory as `ca/<issuer>`), syncs the declared credentials
//! and spawns the long-running tasks; [`Running::wait`] reports which task
//! ended and why.

pub mod dev;
pub mod issuers;
pub mod leader;
pub mod reload;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    error::{BadInput, BadInputExt},
    issue::TrustBundles,
    k8s::wiring::Kube,
    rotate::{
        Engine, EngineDeps,
        bundles::BundleTargets,
        ca_rotation::{Rotator, follow::Follower},
        declare,
        probe::Prober,
    },
    sink::SinkContext,
    store::{Store, StoreError},
};

/// How long start-up waits for Postgres to accept connections.
const DB_PATIENCE: Duration = Duration::from_secs(60);

/// How often `[[bundle]]` targets are checked (besides at start-up and when
/// a bundle changes).
const BUNDLE_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A started service.
pub struct Running {
    /// The engine (subscribe to its events, read its readiness).
    pub engine: Arc<Engine>,
    /// The store.
    pub store: Store,
    /// Cancel to stop everything.
    pub shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    live: Option<reload::Live>,
}

impl Running {
    /// What applying a reloaded configuration file needs (once: see
    /// [`reload::run`]).
    pub fn take_live(&mut self) -> Option<reload::Live> {
        self.live.take()
    }

    /// Waits until shutdown is requested and every task has stopped, or a
    /// task fails (then stops the others and returns its error).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let (name, result) = match joined {
                Ok(r) => r,
                Err(e) => ("task", Err(anyhow::anyhow!("panicked: {e}"))),
            };
            match result {
                Ok(()) if self.shutdown.is_cancelled() => {}
                Ok(()) => tracing::info!(task = name, "task finished"),
                Err(e) => {
                    tracing::error!(task = name, error = %crate::error::report(&e), "task failed; stopping");
                    self.shutdown.cancel();
                    first_error.get_or_insert(e.context(format!("{name} failed")));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Connects to the configured database (waiting for it) and applies migrations.
pub async fn connect(config: &Config) -> anyhow::Result<Store> {
    let url = config.database.url().bad_input()?;
    let max = config.database.max_connections.unwrap_or(16);
    Ok(open_store(url, max, DB_PATIENCE).await?.0)
}

/// Connects (waiting up to `patience`) and applies migrations: the one way
/// every command and the service open the store (with how many migrations
/// were applied). A malformed URL is bad input (exit 2).
pub async fn open_store(url: &str, max: u32, patience: Duration) -> anyhow::Result<(Store, usize)> {
    Store::open(url, max, patience).await.map_err(|e| match e {
        e @ StoreError::BadUrl(_) => anyhow::Error::new(BadInput::new(e)),
        e @ StoreError::Migrate(_) => anyhow::Error::new(e).context("applying migrations"),
        e => anyhow::Error::new(e),
    })
}

/// Starts everything the configuration asks for.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    // Before anything records a metric, so nothing is lost.
    crate::telemetry::install_metrics_recorder();
    crate::backup::describe_metrics();
    let replica = config
        .engine
        .replica_id
        .clone()
        .unwrap_or_else(crate::rotate::default_replica_id);
    let kube = if config.needs_kubernetes() {
        let kube = Kube::connect(config.kubernetes.as_ref())
            .await
            .map_err(|e| match e {
                e @ crate::k8s::K8sError::Config(_) => anyhow::Error::new(BadInput::new(e)),
                e => anyhow::Error::new(e),
            })?;
        Some(kube)
    } else {
        None
    };
    // Every issuer checked before anything is written or published (and
    // before waiting for Postgres: a bad CA is reported at once).
    let issuers =
        Arc::new(issuers::load_issuers(&config, kube.as_ref(), chrono::Utc::now()).await?);
    let store = connect(&config).await?;
    crate::issue::inventory::record(&store, &issuers)
        .await
        .context("recording the issuers' CA certificates")?;
    let sinks = SinkContext {
        kube: kube.as_ref().map(|k| k.client.clone()),
    };
    let jitter = config.engine.jitter();
    let actor = format!("rekey/{replica}");
    let report = declare::sync_config(
        &store,
        &config.certificates,
        &config.tokens,
        &sinks,
        jitter,
        &actor,
    )
    .await
    .context("syncing declared credentials")?;
    tracing::info!(
        replica = %replica,
        added = report.added.len(), changed = report.changed.len(), removed = report.removed.len(),
        "declared credentials synced"
    );
    // Every `ca.crt` and `[[bundle]]` target follows the issuers' registry.
    let bundles: Arc<dyn TrustBundles> = issuers.clone();
    let targets = BundleTargets::declare(
        store.clone(),
        sinks.clone(),
        bundles.clone(),
        config.bundles.clone(),
    )
    .await
    .context("recording the [[bundle]] targets")?;
    // Always: a certificate with a probe may come with a reloaded file.
    let probes = Some(Prober::new(
        store.clone(),
        config.engine.probe_timeout.get(),
        config.engine.probe_concurrency,
        shutdown.clone(),
    ));
    let live = reload::Live {
        store: store.clone(),
        sinks: sinks.clone(),
        issuers: issuers.clone(),
        jitter,
        actor: actor.clone(),
        started: reload::snapshot(&config),
    };
    // Every replica's issuers follow their CA rotations (before the engine
    // signs anything: a restart mid-rotation signs with the phase's CA).
    let follower = Follower::new(store.clone(), issuers.clone());
    follower
        .sync_all()
        .await
        .map_err(|e| anyhow::anyhow!("reading the CA rotations: {e}"))?;
    let rotates_cas = issuers
        .iter()
        .any(|i| i.kind() == crate::issue::IssuerKind::Ca);
    let engine = Engine::new(EngineDeps {
        store: store.clone(),
        replica,
        config: config.engine.clone(),
        issuers,
        sinks: sinks.clone(),
        tokens: kube.as_ref().map(|k| k.token_issuer()),
        reload: kube.as_ref().map(|k| k.reload()),
        probes: probes.clone(),
    });
    // Subscribed before the engine starts: a watch value sent while nobody
    // listens is dropped, and /readyz would never see the engine running.
    let engine_alive = engine.running();
    let mut tasks = JoinSet::new();
    {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            (
                "engine",
                engine.run(shutdown).await.map_err(anyhow::Error::from),
            )
        });
    }
    if let Some(k) = &kube {
        {
            let (k, store, shutdown) = (k.clone(), store.clone(), shutdown.clone());
            tasks.spawn(async move {
                k.legacy_discovery(store, shutdown).await;
                ("legacy-token discovery", Ok(()))
            });
        }
        let (store, tokens, actor, shutdown) = (
            store.clone(),
            k.token_issuer(),
            format!("rekey/{}", engine.replica()),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            crate::rotate::retire::run(store, tokens, actor, shutdown).await;
            ("token retirement", Ok(()))
        });
    }
    if rotates_cas {
        {
            let (follower, shutdown) = (follower.clone(), shutdown.clone());
            tasks.spawn(async move {
                follower.run(shutdown).await;
                ("CA rotation follower", Ok(()))
            });
        }
        let rotator = Rotator::new(
            store.clone(),
            follower.clone(),
            sinks.clone(),
            engine.replica().to_string(),
            probes.clone(),
        );
        let (store, replica, shutdown) = (
            store.clone(),
            engine.replica().to_string(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            leader::lead(store, "ca-rotation", replica, shutdown, |led, _epoch| {
                rotator.clone().run(led)
            })
            .await;
            ("CA rotations", Ok(()))
        });
    }
    if !config.bundles.is_empty() {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            targets.run(BUNDLE_CHECK_INTERVAL, shutdown).await;
            ("trust bundle targets", Ok(()))
        });
    }
    if let Some(prober) = probes {
        // Every probe on one replica at a time; after a publish, the
        // publishing replica probes that credential itself (the engine).
        let (store, replica, shutdown) = (
            store.clone(),
            engine.replica().to_string(),
            shutdown.clone(),
        );
        let interval = config.engine.probe_interval.get();
        tasks.spawn(async move {
            leader::lead(
                store.clone(),
                "consumer-probes",
                replica,
                shutdown,
                |led, _epoch| {
                    let prober = prober.clone();
                    async move {
                        crate::schedule::jobs::every(interval, &led, |_| {
                            let prober = prober.clone();
                            async move {
                                if let Err(e) = prober.check_all().await {
                                    tracing::warn!(error = %e, "consumer probes: cannot read or record; retrying at the next check");
                                }
                            }
                        })
                        .await;
                        Ok(())
                    }
                },
            )
            .await;
            ("consumer probes", Ok(()))
        });
    }
    spawn_led_jobs(
        &config,
        &store,
        engine.replica(),
        kube.as_ref(),
        &shutdown,
        &mut tasks,
    );
    if config.api.is_some() || config.metrics.is_some() {
        let client = kube.as_ref().map(|k| k.client.clone());
        let issuers = rotates_cas.then(|| follower.clone());
        let running = start_api(
            &config,
            &store,
            engine_alive,
            client,
            issuers,
            shutdown.clone(),
        )
        .await?;
        tasks.spawn(async move { ("api", running.wait().await.map_err(anyhow::Error::from)) });
    }
    if !config.scans.is_empty() {
        let dirs: Vec<_> = config.scans.iter().map(|s| s.dir.clone()).collect();
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tasks.spawn(async move {
            crate::scan::run(store, dirs, shutdown).await;
            ("scan", Ok(()))
        });
    }
    Ok(Running {
        engine,
        store,
        shutdown,
        tasks,
        live: Some(live),
    })
}

/// Jobs that run on one replica at a time, under [`leader::lead`].
fn spawn_led_jobs(
    config: &Config,
    store: &Store,
    replica: &str,
    kube: Option<&Kube>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
) {
    if let (Some(k), Some(b)) = (kube, config.bootstrap_tokens.clone()) {
        let (store, k, replica, shutdown) = (
            store.clone(),
            k.clone(),
            replica.to_string(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            leader::lead(
                store.clone(),
                "bootstrap-tokens",
                replica,
                shutdown,
                |led, _epoch| k.bootstrap_watcher(store.clone(), b.clone(), led),
            )
            .await;
            ("bootstrap-token watcher", Ok(()))
        });
    }
    if let Some(etcd) = config.etcd.clone().filter(|e| e.check_schedule.is_some()) {
        let (store, replica, shutdown) = (store.clone(), replica.to_string(), shutdown.clone());
        tasks.spawn(async move {
            leader::lead(
                store.clone(),
                "etcd-check",
                replica,
                shutdown,
                |led, _epoch| {
                    let (store, etcd) = (store.clone(), etcd.clone());
                    async move {
                        crate::etcd::job::run_scheduled(store, etcd, led)
                            .await
                            .map_err(anyhow::Error::from)
                    }
                },
            )
            .await;
            ("scheduled etcd check", Ok(()))
        });
    }
    if let (Some(k), Some(etcd)) = (
        kube,
        config.etcd.clone().filter(|e| e.migrate_schedule.is_some()),
    ) {
        let (store, kube, replica, shutdown) = (
            store.clone(),
            k.client.clone(),
            replica.to_string(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            let actor = format!("rekey/{replica}");
            // Not the migration's own lock (`etcd-migrate`), which every run
            // takes: this one only elects who runs the schedule.
            leader::lead(
                store.clone(),
                "etcd-migrate-schedule",
                replica,
                shutdown,
                |led, _epoch| {
                    let (store, etcd, kube, actor) =
                        (store.clone(), etcd.clone(), kube.clone(), actor.clone());
                    async move {
                        crate::etcd::migrate::job::run_scheduled(store, etcd, kube, actor, led)
                            .await
                            .map_err(|e| anyhow::Error::new(BadInput::new(e)))
                    }
                },
            )
            .await;
            ("scheduled etcd storage migration", Ok(()))
        });
    }
    if let (Some(backup), Some(etcd)) = (
        config.backup.clone().filter(|b| b.schedule.is_some()),
        config.etcd.clone(),
    ) {
        let (store, replica, shutdown) = (store.clone(), replica.to_string(), shutdown.clone());
        tasks.spawn(async move {
            let actor = format!("rekey/{replica}");
            leader::lead(store.clone(), "backup", replica, shutdown, |led, _epoch| {
                let (store, backup, etcd, actor) =
                    (store.clone(), backup.clone(), etcd.clone(), actor.clone());
                async move {
                    crate::backup::job::run_scheduled(store, backup, etcd, actor, led)
                        .await
                        .map_err(|e| anyhow::Error::new(BadInput::new(e)))
                }
            })
            .await;
            ("scheduled backups", Ok(()))
        });
    }
}

/// Starts the admin API (`[api]`) and the metrics listener (`[metrics]`).
pub async fn start_api(
    config: &Config,
    store: &Store,
    engine_alive: tokio::sync::watch::Receiver<bool>,
    kube: Option<kube::Client>,
    issuers: Option<Arc<Follower>>,
    shutdown: CancellationToken,
) -> anyhow::Result<crate::api::Running> {
    let mut state = crate::api::ApiState::new(store.clone(), engine_alive);
    state.capabilities = Arc::new(crate::api::Capabilities {
        etcd: config.etcd.clone(),
        backup: config.backup.clone(),
        bootstrap_tokens: config.bootstrap_tokens.clone(),
        issuers,
    });
    state.kube = kube.clone();
    if config.api.as_ref().is_some_and(|a| a.token_review) {
        state.kube = match kube {
            Some(c) => Some(c),
            None => Some(
                crate::k8s::client_for(config.kubernetes.as_ref())
                    .await
                    .map_err(|e| BadInput::msg(format!("api.token_review: {e}")))?,
            ),
        };
    }
    crate::api::start(
        state,
        config.api.as_ref(),
        config.metrics.as_ref().map(|m| m.listen.as_str()),
        shutdown,
    )
    .await
    .map_err(|e| {
        if e.is_bad_input() {
            anyhow::Error::new(BadInput::new(e))
        } else {
            anyhow::Error::new(e)
        }
    })
}

/// A token cancelled on SIGTERM or Ctrl-C. A second signal exits at once.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: finishing in-flight work (signal again to exit at once)");
        t.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
    });
    token
}
