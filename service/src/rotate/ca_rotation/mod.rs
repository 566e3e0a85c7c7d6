//! CA rotation without a failed handshake: trust both CAs, switch signing,
//! re-issue every leaf, wait for the consumers, trust the new CA alone.
//!
//! ```text
//!  rekey ca rotate / POST /v1/issuers/{name}/rotate / rotate_before
//!        │ request: a `ca_rotations` row (db), the new CA in the store's `next` slot
//!        ▼
//!  Rotator (one replica, under leader election "ca-rotation")
//!        observe (store: sinks' bundles, leaves by CA, probes) ─► plan::decide ─► act
//!        every phase change a compare-and-set on the row, audited, NOTIFY
//!        ▼
//!  Follower (every replica): registry signer + bundle = plan::trust_of(latest row)
//!        └─► the engine signs with it, every publish carries its bundle,
//!            `[[bundle]]` targets follow, republish_issuer fills the gaps
//! ```
//!
//! - [`plan`]: phases and the pure decision; [`db`]: the table;
//!   [`follow`]: every replica's registry; [`request`]: what the command
//!   line and the API ask (start, abort, status).

pub mod db;
pub mod follow;
pub mod plan;
pub mod request;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use self::{
    db::{CaRotation, Stamp},
    follow::Follower,
    plan::{Observed, Phase, Step},
};
use crate::{
    issue::{CaMaterial, CertAuthority, Issuer, IssuerKind},
    rotate::{bundles::republish_issuer, probe::Prober},
    sink::SinkContext,
    store::Store,
};

/// How often a rotation in flight is looked at when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);

/// How often `retiring` re-probes the consumers it waits for.
const REPROBE: Duration = Duration::from_secs(5);

/// The default `--overlap`.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(300);

/// The default `--max-rate` (re-issues per second).
pub const DEFAULT_MAX_RATE: f64 = 100.0;

/// Carries out the CA rotations (one replica at a time).
pub struct Rotator {
    store: Store,
    follower: Arc<Follower>,
    sinks: SinkContext,
    replica: String,
    prober: Option<Arc<Prober>>,
}

impl std::fmt::Debug for Rotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// Per rotation, between steps.
#[derive(Default)]
struct Pace {
    last_marked: Option<Instant>,
    last_probe: Option<Instant>,
}

impl Rotator {
    /// A rotator acting as `replica`.
    pub fn new(
        store: Store,
        follower: Arc<Follower>,
        sinks: SinkContext,
        replica: String,
        prober: Option<Arc<Prober>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            follower,
            sinks,
            replica,
            prober,
        })
    }

    fn actor(&self) -> String {
        format!("rekey/{}", self.replica)
    }

    /// Runs while this replica leads: every issuer's rotation in flight,
    /// step by step, and rotations `rotate_before` starts.
    pub async fn run(self: Arc<Self>, led: CancellationToken) -> anyhow::Result<()> {
        let notes = crate::store::listen::listen(&self.store, db::CHANGED_CHANNEL, led.clone());
        let mut rx = notes.subscribe();
        let mut pace: std::collections::HashMap<uuid::Uuid, Pace> = Default::default();
        describe_metrics();
        loop {
            let mut wake = TICK;
            for issuer in self.follower.issuers().iter() {
                if issuer.kind() != IssuerKind::Ca {
                    continue;
                }
                match self.tick(issuer, &mut pace).await {
                    Ok(Some(d)) => wake = wake.min(d),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(issuer = %issuer.name(), error = %e, "CA rotation: cannot go on; retrying");
                    }
                }
            }
            tokio::select! {
                _ = led.cancelled() => return Ok(()),
                _ = rx.recv() => {}
                _ = tokio::time::sleep(wake.max(Duration::from_millis(100))) => {}
            }
        }
    }

    /// One look at `issuer`: starts a due automatic rotation, or takes the
    /// next step of the one in flight. Returns how soon to look again.
    async fn tick(
        &self,
        issuer: &Arc<Issuer>,
        pace: &mut std::collections::HashMap<uuid::Uuid, Pace>,
    ) -> anyhow::Result<Option<Duration>> {
        let latest = db::latest(&self.store, issuer.name()).await?;
        let Some(r) = latest.filter(|r| r.finished_at.is_none()) else {
            metrics::gauge!("rekey_ca_rotation_phase", "issuer" => issuer.name().to_string())
                .set(0.0);
            self.maybe_start(issuer).await?;
            return Ok(None);
        };
        let p = pace.entry(r.id).or_default();
        self.step(issuer, r, p).await
    }

    /// `rotate_before`: a rotation starts when the CA has less than that left.
    async fn maybe_start(&self, issuer: &Arc<Issuer>) -> anyhow::Result<()> {
        let (Some(before), Some(ca)) = (issuer.config().rotate_before, issuer.current_ca()) else {
            return Ok(());
        };
        if ca.not_after() - Utc::now() > before.chrono() {
            return Ok(());
        }
        let actor = self.actor();
        let opts = request::RotateOptions {
            overlap: DEFAULT_OVERLAP,
            max_rate: DEFAULT_MAX_RATE,
            new_ca: None,
        };
        let (r, created) = request::start(
            &self.store,
            issuer,
            &opts,
            request::Requester {
                actor: &actor,
                trigger: "schedule",
                ticket: None,
            },
        )
        .await?;
        if created {
            tracing::info!(issuer = %issuer.name(), rotation = %r.id, not_after = %ca.not_after(), "CA rotation started: the CA is within rotate_before of its expiry");
        }
        Ok(())
    }

    async fn observe(
        &self,
        issuer: &Issuer,
        r: &CaRotation,
        pace: &mut Pace,
    ) -> anyhow::Result<Observed> {
        let mut o = Observed::default();
        if let Some(new_fp) = r.new_ca_fingerprint.as_deref()
            && matches!(r.phase, Phase::Reissuing | Phase::Retiring)
        {
            let c = self.store.leaf_counts(issuer.name(), new_fp).await?;
            (o.reissued, o.remaining, o.remaining_unmarked) = (c.on_ca, c.other, c.other_unmarked);
        }
        // Who lacks the bundle matters once no leaf is left to re-issue (each
        // re-issue publishes the bundle anyway): spare the scan meanwhile.
        if !(r.phase == Phase::Reissuing && o.remaining > 0) {
            let bundle = issuer.bundle();
            let gaps = self
                .store
                .bundle_gaps(issuer.name(), bundle.fingerprint())
                .await?;
            (o.bundle_missing, o.bundle_missing_count) = (gaps.names, gaps.count);
        }
        let Some(new_fp) = r.new_ca_fingerprint.as_deref() else {
            return Ok(o);
        };
        if r.phase == Phase::Retiring && r.narrowed_at.is_none() {
            let new_ca = self
                .follower
                .ca(issuer, new_fp)
                .await
                .map_err(anyhow::Error::msg)?;
            let key_id = new_ca.key_id_hex();
            let consumers = self.store.probed_consumers(issuer.name()).await?;
            let behind: Vec<String> = consumers
                .into_iter()
                .filter(|c| c.served_issuer_key_id.is_none() || c.served_issuer_key_id != key_id)
                .map(|c| c.name)
                .collect();
            if !behind.is_empty()
                && let Some(prober) = &self.prober
                && pace.last_probe.is_none_or(|t| t.elapsed() >= REPROBE)
            {
                pace.last_probe = Some(Instant::now());
                if let Err(e) = prober.check_all().await {
                    tracing::warn!(error = %e, "CA rotation: cannot probe the consumers");
                }
            }
            o.consumers_behind = behind;
        }
        Ok(o)
    }

    /// Takes the next step of rotation `r` of `issuer`.
    async fn step(
        &self,
        issuer: &Arc<Issuer>,
        r: CaRotation,
        pace: &mut Pace,
    ) -> anyhow::Result<Option<Duration>> {
        // This replica's registry first: what it publishes is the phase's.
        self.follower.apply(&r).await.map_err(anyhow::Error::msg)?;
        let o = self.observe(issuer, &r, pace).await?;
        set_metrics(&r, &o);
        let now = Utc::now();
        let since = pace.last_marked.map_or(TICK, |t| t.elapsed());
        let step = plan::decide(&r, &o, now, since);
        metrics::gauge!("rekey_ca_rotation_blocked", "issuer" => r.issuer.clone())
            .set(if plan::blocked(&step) { 1.0 } else { 0.0 });
        let actor = self.actor();
        let counts = matches!(r.phase, Phase::Reissuing | Phase::Retiring)
            .then_some((o.reissued, o.remaining));
        tracing::debug!(issuer = %r.issuer, phase = r.phase.as_str(), ?step, "CA rotation step");
        match step {
            Step::PrepareNextCa => {
                let fp = self.prepare_next(issuer, &r).await?;
                db::set_new_ca(&self.store, &r, &fp, &actor).await?;
            }
            Step::Republish => {
                let bundle = issuer.bundle();
                let report = republish_issuer(
                    &self.store,
                    &self.sinks,
                    &self.replica,
                    issuer.name(),
                    &bundle,
                )
                .await?;
                for (name, e) in &report.failed {
                    tracing::warn!(issuer = %r.issuer, credential = %name, error = %e, "CA rotation: cannot publish the trust bundle; retrying");
                }
                db::progress(&self.store, r.id, counts, Some(&plan::missing_reason(&o))).await?;
                return Ok(Some(TICK));
            }
            Step::MarkTrusted => {
                db::stamp(&self.store, &r, Stamp::Trusted, &actor).await?;
            }
            Step::StartReissuing => {
                crate::crash::point("ca-after-trust");
                if db::advance(&self.store, &r, Phase::Reissuing, &actor).await? {
                    tracing::info!(issuer = %r.issuer, rotation = %r.id, "CA rotation: the new CA signs; re-issuing every leaf");
                }
            }
            Step::Reissue(limit) => {
                let new_fp = r.new_ca_fingerprint.as_deref().unwrap_or_default();
                let n = self
                    .store
                    .mark_reissue_due(&r.issuer, new_fp, limit)
                    .await?;
                pace.last_marked = Some(Instant::now());
                if n > 0 {
                    crate::crash::point("ca-mid-reissue");
                }
                db::progress(
                    &self.store,
                    r.id,
                    counts,
                    Some(&format!("{} leaves to re-issue", o.remaining)),
                )
                .await?;
                return Ok(Some(Duration::from_millis(200)));
            }
            Step::StartRetiring => {
                if db::advance(&self.store, &r, Phase::Retiring, &actor).await? {
                    tracing::info!(issuer = %r.issuer, rotation = %r.id, reissued = o.reissued, "CA rotation: every leaf re-issued; waiting for the consumers");
                }
                db::progress(&self.store, r.id, Some((o.reissued, 0)), None).await?;
            }
            Step::MarkConsumersMoved => {
                db::stamp(&self.store, &r, Stamp::ConsumersMoved, &actor).await?;
            }
            Step::Narrow => {
                if db::stamp(&self.store, &r, Stamp::Narrowed, &actor).await? {
                    crate::crash::point("ca-after-narrow");
                    tracing::info!(issuer = %r.issuer, rotation = %r.id, "CA rotation: the old CA leaves every bundle");
                }
            }
            Step::Promote => {
                let store = issuer
                    .store()
                    .ok_or_else(|| anyhow::anyhow!("issuer {} has no CA store", r.issuer))?;
                store.promote_next().await.map_err(anyhow::Error::msg)?;
                if db::advance(&self.store, &r, Phase::Done, &actor).await? {
                    tracing::info!(issuer = %r.issuer, rotation = %r.id, new_ca = ?r.new_ca_fingerprint, "CA rotation done");
                }
                crate::issue::inventory::record(&self.store, self.follower.issuers()).await?;
                metrics::gauge!("rekey_ca_rotation_phase", "issuer" => r.issuer.clone()).set(0.0);
            }
            Step::FinishAborted => {
                if let Some(store) = issuer.store() {
                    store.discard_next().await.map_err(anyhow::Error::msg)?;
                }
                db::finish_aborted(&self.store, &r, &actor).await?;
                tracing::info!(issuer = %r.issuer, rotation = %r.id, "CA rotation aborted; the old CA alone is trusted again");
            }
            Step::Wait(until, why) => {
                db::progress(
                    &self.store,
                    r.id,
                    counts,
                    (!why.is_empty()).then_some(why.as_str()),
                )
                .await?;
                let d = (until - now).to_std().unwrap_or_default();
                return Ok(Some(d.min(TICK)));
            }
        }
        Ok(Some(Duration::ZERO))
    }

    /// The new CA: the one in the store's `next` slot, else a new one like
    /// the current CA (key type, name, validity), stored there first.
    async fn prepare_next(&self, issuer: &Issuer, r: &CaRotation) -> anyhow::Result<String> {
        let store = issuer
            .store()
            .ok_or_else(|| anyhow::anyhow!("issuer {} has no CA store", r.issuer))?;
        if let Some(next) = store.read_next().await.map_err(anyhow::Error::msg)? {
            let ca = CertAuthority::from_pem(&next.cert_pem, &next.key_pem, Utc::now()).map_err(
                |p| anyhow::anyhow!("the next CA in {}: {}", store.describe(), p.message),
            )?;
            if ca.fingerprint() != r.old_ca_fingerprint {
                return Ok(ca.fingerprint().to_string());
            }
        }
        let old = self
            .follower
            .ca(issuer, &r.old_ca_fingerprint)
            .await
            .map_err(anyhow::Error::msg)?;
        let (ca, key_pem) = request::generate_like(&old, issuer.name())?;
        store
            .write_next(&CaMaterial {
                cert_pem: ca.cert_pem().to_string(),
                key_pem,
            })
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(issuer = %r.issuer, fingerprint = %ca.fingerprint(), not_after = %ca.not_after(), store = %store.describe(), "CA rotation: new CA generated");
        Ok(ca.fingerprint().to_string())
    }
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "rekey_ca_rotation_phase",
        "Phase of the issuer's CA rotation: 0 none, 1 trusting, 2 reissuing, 3 retiring"
    );
    metrics::describe_gauge!(
        "rekey_ca_rotation_reissued",
        "Leaves of the issuer the new CA signed during its CA rotation"
    );
    metrics::describe_gauge!(
        "rekey_ca_rotation_remaining",
        "Leaves of the issuer still signed by another CA during its CA rotation"
    );
}

fn set_metrics(r: &CaRotation, o: &Observed) {
    let issuer = r.issuer.clone();
    metrics::gauge!("rekey_ca_rotation_phase", "issuer" => issuer.clone()).set(r.phase.metric());
    if matches!(r.phase, Phase::Reissuing | Phase::Retiring) {
        metrics::gauge!("rekey_ca_rotation_reissued", "issuer" => issuer.clone())
            .set(o.reissued as f64);
        metrics::gauge!("rekey_ca_rotation_remaining", "issuer" => issuer).set(o.remaining as f64);
    }
}
