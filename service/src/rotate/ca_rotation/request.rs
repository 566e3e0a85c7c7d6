//! What the command line (`rekey ca rotate`, `rekey ca status`) and the API
//! (`POST /v1/issuers/{name}/rotate`, `GET /v1/issuers`) ask of CA
//! rotation: start one (or answer the one in flight), abort one, and the
//! issuers' status document. The serving replicas carry rotations out.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use secrecy::SecretString;
use serde::Serialize;

use super::{
    db::{self, AbortOutcome, CaRotation, NewRotation},
    follow::Follower,
    plan::Phase,
};
use crate::{
    issue::{CaMaterial, CertAuthority, Issuer, IssuerError, IssuerKind, Issuers, KeyType},
    store::{
        Store, StoreError,
        audit::{NewEvent, Outcome, Ticket},
    },
};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No such issuer.
    #[error("no issuer named `{0}` is configured")]
    UnknownIssuer(String),
    /// A `kubernetes-csr` issuer.
    #[error(
        "issuer `{0}` is a kubernetes-csr issuer: the signer's CA is the cluster's to rotate, not rekey's"
    )]
    NotRotatable(String),
    /// The new CA given is unusable.
    #[error(transparent)]
    BadNewCa(IssuerError),
    /// Abort with nothing running.
    #[error("no CA rotation of issuer `{0}` is running")]
    NotRunning(String),
    /// Abort after `trusting`.
    #[error(
        "the CA rotation {id} of issuer `{issuer}` is {phase}: re-issuing has started, so it can only go forward"
    )]
    TooLate {
        /// The issuer.
        issuer: String,
        /// The rotation.
        id: uuid::Uuid,
        /// Its phase.
        phase: &'static str,
    },
    /// The issuer's store refused the new CA.
    #[error("issuer `{issuer}`: cannot store the new CA: {message}")]
    Store {
        /// The issuer.
        issuer: String,
        /// Why.
        message: String,
    },
    /// Postgres.
    #[error(transparent)]
    Db(#[from] StoreError),
}

impl RequestError {
    /// The caller's mistake (exit 2, HTTP 4xx).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::UnknownIssuer(_)
                | Self::NotRotatable(_)
                | Self::BadNewCa(_)
                | Self::NotRunning(_)
                | Self::TooLate { .. }
        )
    }
}

/// How to rotate.
#[derive(Debug)]
pub struct RotateOptions {
    /// How long each side of the switch waits for late consumers.
    pub overlap: Duration,
    /// Re-issues per second (0: no limit).
    pub max_rate: f64,
    /// The CA to rotate to (otherwise the service generates one like the
    /// current CA).
    pub new_ca: Option<CaMaterial>,
}

/// Who asks, and how it is audited.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The audit actor.
    pub actor: &'a str,
    /// `cli`, `api` or `schedule`.
    pub trigger: &'a str,
    /// The API call's audit ticket.
    pub ticket: Option<&'a Ticket>,
}

/// The `ca` issuer named `name` of `issuers`.
pub fn rotatable<'a>(
    issuers: &'a Issuers,
    name: &str,
) -> Result<&'a std::sync::Arc<Issuer>, RequestError> {
    let issuer = issuers
        .get(name)
        .map_err(|_| RequestError::UnknownIssuer(name.to_string()))?;
    if issuer.kind() != IssuerKind::Ca {
        return Err(RequestError::NotRotatable(name.to_string()));
    }
    Ok(issuer)
}

/// Checks a new CA given for `issuer` at `now` (fields `new_ca_cert`,
/// `new_ca_key`).
pub fn check_new_ca(
    issuer: &Issuer,
    ca: &CaMaterial,
    now: DateTime<Utc>,
) -> Result<CertAuthority, RequestError> {
    let new = CertAuthority::from_pem(&ca.cert_pem, &ca.key_pem, now).map_err(|p| {
        let field = match p.part {
            crate::issue::CaPart::Cert => "new_ca_cert",
            crate::issue::CaPart::Key => "new_ca_key",
        };
        RequestError::BadNewCa(IssuerError::new(issuer.name(), field, p.message))
    })?;
    if issuer
        .current_ca()
        .is_some_and(|c| c.fingerprint() == new.fingerprint())
    {
        return Err(RequestError::BadNewCa(IssuerError::new(
            issuer.name(),
            "new_ca_cert",
            "is the issuer's current CA",
        )));
    }
    Ok(new)
}

/// Starts a rotation of `issuer`, or answers the one in flight
/// (`(rotation, created)`). A new CA given is checked and stored in the
/// issuer's `next` slot first.
pub async fn start(
    store: &Store,
    issuer: &Issuer,
    opts: &RotateOptions,
    who: Requester<'_>,
) -> Result<(CaRotation, bool), RequestError> {
    if issuer.kind() != IssuerKind::Ca {
        return Err(RequestError::NotRotatable(issuer.name().to_string()));
    }
    if let Some(r) = db::in_flight(store, issuer.name()).await? {
        return Ok((r, false));
    }
    let old = issuer
        .current_ca()
        .ok_or_else(|| RequestError::NotRotatable(issuer.name().to_string()))?;
    let mut new_fp = None;
    if let Some(ca) = &opts.new_ca {
        let new = check_new_ca(issuer, ca, Utc::now())?;
        let slot = issuer.store().ok_or_else(|| RequestError::Store {
            issuer: issuer.name().to_string(),
            message: "the issuer has no CA store".into(),
        })?;
        slot.write_next(ca)
            .await
            .map_err(|message| RequestError::Store {
                issuer: issuer.name().to_string(),
                message,
            })?;
        new_fp = Some(new.fingerprint().to_string());
    }
    let mut event = NewEvent::new(
        who.actor,
        "ca.rotate",
        format!("issuer/{}", issuer.name()),
        Outcome::Success,
    );
    event.details = serde_json::json!({
        "old_ca_fingerprint": old.fingerprint(), "new_ca_fingerprint": new_fp,
        "overlap_secs": opts.overlap.as_secs_f64(), "max_rate": opts.max_rate, "trigger": who.trigger,
    });
    let (r, created) = db::request(
        store,
        &NewRotation {
            issuer: issuer.name(),
            trigger: who.trigger,
            requested_by: who.actor,
            overlap_secs: opts.overlap.as_secs_f64(),
            max_rate: opts.max_rate,
            old_ca_fingerprint: old.fingerprint(),
            new_ca_fingerprint: new_fp.as_deref(),
        },
        &event,
        who.ticket,
    )
    .await?;
    Ok((r, created))
}

/// Aborts the rotation of `issuer` (only while `trusting`).
pub async fn abort(
    store: &Store,
    issuer: &Issuer,
    who: Requester<'_>,
) -> Result<CaRotation, RequestError> {
    if issuer.kind() != IssuerKind::Ca {
        return Err(RequestError::NotRotatable(issuer.name().to_string()));
    }
    let event = NewEvent::new(
        who.actor,
        "ca.rotate.abort",
        format!("issuer/{}", issuer.name()),
        Outcome::Success,
    );
    match db::abort(store, issuer.name(), &event, who.ticket).await? {
        AbortOutcome::Aborted(r) => Ok(r),
        AbortOutcome::NotRunning => Err(RequestError::NotRunning(issuer.name().to_string())),
        AbortOutcome::TooLate(r) => Err(RequestError::TooLate {
            issuer: issuer.name().to_string(),
            id: r.id,
            phase: r.phase.as_str(),
        }),
    }
}

/// A new CA like `old`: same key type and common name, same validity.
pub fn generate_like(
    old: &CertAuthority,
    issuer: &str,
) -> anyhow::Result<(CertAuthority, SecretString)> {
    let key = old.key_type().unwrap_or(KeyType::EcdsaP256);
    let cn = old
        .common_name()
        .unwrap_or_else(|| format!("rekey CA {issuer}"));
    // `generate` backdates by MAX_BACKDATE: the new CA lives as long as the old.
    let validity =
        (old.not_after() - old.not_before() - crate::issue::MAX_BACKDATE).max(TimeDelta::days(1));
    Ok(CertAuthority::generate(&cn, key, validity, Utc::now())?)
}

/// The answer to a rotate request (`rekey ca rotate --json`, `POST
/// /v1/issuers/{name}/rotate`).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct RotateAnswer {
    /// Whether this request started it (false: the one in flight, or an abort).
    pub created: bool,
    /// The rotation.
    pub rotation: RotationView,
}

/// `rekey ca status --json` and `GET /v1/issuers`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusDoc {
    /// Every issuer (or the one asked for), by name.
    pub issuers: Vec<IssuerView>,
}

/// One issuer.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct IssuerView {
    /// Its name.
    pub name: String,
    /// `ca` or `kubernetes-csr`.
    pub kind: String,
    /// The CA that signs now (`ca` issuers).
    pub ca: Option<CaView>,
    /// sha256 fingerprints of the CAs consumers trust now.
    pub bundle: Vec<String>,
    /// The latest rotation (null: never rotated).
    pub rotation: Option<RotationView>,
}

/// A CA certificate.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CaView {
    /// sha256 of its DER, hex.
    pub fingerprint: String,
    /// Its expiry.
    pub not_after: String,
}

/// A rotation.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RotationView {
    /// Its id.
    pub id: uuid::Uuid,
    /// `trusting`, `reissuing`, `retiring`, `done` or `aborted`.
    pub phase: String,
    /// When it was requested.
    pub started_at: String,
    /// Leaves the new CA signed.
    pub reissued: i64,
    /// Leaves still on another CA (null before re-issuing).
    pub remaining: Option<i64>,
    /// The CA rotated away from.
    pub old_ca_fingerprint: String,
    /// The CA rotated to (null until known).
    pub new_ca_fingerprint: Option<String>,
    /// Overlap, seconds.
    pub overlap_seconds: f64,
    /// Re-issues per second (0: no limit).
    pub max_rate: f64,
    /// Why it is not moving on, while it waits.
    pub waiting_for: Option<String>,
    /// When it entered its phase.
    pub phase_changed_at: String,
    /// When it finished (done or aborted), if it has.
    pub finished_at: Option<String>,
    /// Who asked.
    pub requested_by: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl From<&CaRotation> for RotationView {
    fn from(r: &CaRotation) -> Self {
        Self {
            id: r.id,
            phase: r.phase.as_str().to_string(),
            started_at: rfc3339(r.started_at),
            reissued: r.reissued,
            remaining: r.remaining.filter(|_| r.phase != Phase::Trusting),
            old_ca_fingerprint: r.old_ca_fingerprint.clone(),
            new_ca_fingerprint: r.new_ca_fingerprint.clone(),
            overlap_seconds: r.overlap_secs,
            max_rate: r.max_rate,
            waiting_for: r.waiting_for.clone(),
            phase_changed_at: rfc3339(r.phase_changed_at),
            finished_at: r.finished_at.map(rfc3339),
            requested_by: r.requested_by.clone(),
        }
    }
}

/// The view of one issuer (as it stands in `issuers`) with its latest
/// rotation.
pub fn issuer_view(issuer: &Issuer, latest: Option<&CaRotation>) -> IssuerView {
    IssuerView {
        name: issuer.name().to_string(),
        kind: match issuer.kind() {
            IssuerKind::Ca => "ca",
            IssuerKind::KubernetesCsr => "kubernetes-csr",
        }
        .to_string(),
        ca: issuer.current_ca().map(|ca| CaView {
            fingerprint: ca.fingerprint().to_string(),
            not_after: rfc3339(ca.not_after()),
        }),
        bundle: issuer.bundle().fingerprints(),
        rotation: latest.map(RotationView::from),
    }
}

/// The status of `only` (or every issuer) of `follower`'s registry, after
/// bringing it in line with the rotations.
pub async fn status(
    follower: &Follower,
    store: &Store,
    only: Option<&str>,
) -> Result<StatusDoc, RequestError> {
    let issuers = follower.issuers();
    if let Some(name) = only {
        issuers
            .get(name)
            .map_err(|_| RequestError::UnknownIssuer(name.to_string()))?;
    }
    let latest = db::latest_all(store).await?;
    for r in &latest {
        if let Err(e) = follower.apply(r).await {
            tracing::debug!(issuer = %r.issuer, error = %e, "status: the issuer's rotation cannot be followed here");
        }
    }
    Ok(StatusDoc {
        issuers: issuers
            .iter()
            .filter(|i| only.is_none_or(|n| i.name() == n))
            .map(|i| issuer_view(i, latest.iter().find(|r| r.issuer == i.name())))
            .collect(),
    })
}
