//! One credential in flight through a batch, and the engine's pure
//! decisions about it: when it is due next after a success, when a failure
//! is retried. The clock is passed in; only the executor (`batch`) reads it.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use super::{error::StepError, tokens::TokenSpec};
use crate::{
    issue::CertificateSpec,
    schedule::{self, Jitter, RenewalPolicy},
    sink::{Material, Sink, SinkSpec},
    store::engine::{Attempt, Claimed, Success, VersionFacts},
};

/// How often, at most, a certificate request awaiting approval is looked
/// at again (one GET of the request each time).
pub const AWAITING_POLL: TimeDelta = TimeDelta::seconds(15);

/// One credential in flight through a batch.
pub(super) struct Item {
    pub(super) claimed: Claimed,
    pub(super) trigger: &'static str,
    pub(super) started: tokio::time::Instant,
    pub(super) attempt: Option<Attempt>,
    pub(super) spec: Option<Spec>,
    pub(super) sink: Option<Arc<dyn Sink>>,
    pub(super) issued: Option<Issued>,
    /// Why it failed, and whether the version may have been published.
    pub(super) failure: Option<(StepError, bool)>,
    /// Committed, or handed over to another replica: nothing more to do.
    pub(super) done: bool,
}

/// A claimed credential's parsed spec.
pub(super) enum Spec {
    Certificate(CertificateSpec),
    Token(TokenSpec),
}

impl Spec {
    pub(super) fn policy(&self) -> RenewalPolicy {
        match self {
            Self::Certificate(c) => c.policy(),
            Self::Token(t) => t.policy(),
        }
    }

    pub(super) fn sink(&self) -> &SinkSpec {
        match self {
            Self::Certificate(c) => &c.sink,
            Self::Token(t) => &t.sink,
        }
    }

    pub(super) fn adopt(&self) -> bool {
        match self {
            Self::Certificate(c) => c.adopt,
            Self::Token(t) => t.adopt,
        }
    }

    pub(super) fn reload(&self) -> &[String] {
        match self {
            Self::Certificate(c) => &c.reload,
            Self::Token(t) => &t.reload,
        }
    }
}

/// A version ready to publish, or found published.
pub(super) struct Issued {
    /// None when recovering a version already in the sink.
    pub(super) material: Option<Material>,
    pub(super) facts: VersionFacts,
}

impl Item {
    /// A freshly claimed credential.
    pub(super) fn new(claimed: Claimed) -> Self {
        Self {
            trigger: schedule::trigger_for(claimed.next_rotation_reason.as_deref()),
            claimed,
            started: tokio::time::Instant::now(),
            attempt: None,
            spec: None,
            sink: None,
            issued: None,
            failure: None,
            done: false,
        }
    }

    /// What committing this item's published version records, decided at
    /// `now`: the next due time (never sooner than a second from now) and,
    /// for bound tokens, when the previous version is retired. `None` until
    /// the item has an attempt, a spec and an issued version.
    pub(super) fn success(&self, jitter: Jitter, now: DateTime<Utc>) -> Option<Success> {
        let (issued, attempt, spec) = (self.issued.as_ref()?, self.attempt?, self.spec.as_ref()?);
        let facts = &issued.facts;
        let sample = schedule::jitter_sample(&self.claimed.name, attempt.version_id);
        let issued_at = match spec {
            Spec::Certificate(_) => {
                facts.not_before + crate::issue::backdate(facts.not_after - facts.not_before)
            }
            Spec::Token(_) => facts.not_before,
        };
        let due = schedule::next_due(
            &spec.policy(),
            issued_at,
            facts.not_before,
            facts.not_after,
            jitter,
            sample,
        );
        let floor = now + TimeDelta::seconds(1);
        let retire_previous_after = match spec {
            Spec::Token(t) if t.bound => {
                Some(now + t.grace.map(|g| g.chrono()).unwrap_or(TimeDelta::minutes(5)))
            }
            _ => None,
        };
        Some(Success {
            credential_id: self.claimed.id,
            lease_epoch: self.claimed.lease_epoch,
            rotation_id: attempt.rotation_id,
            version_id: attempt.version_id,
            not_before: facts.not_before,
            not_after: facts.not_after,
            next_rotation_at: due.at.max(floor),
            next_reason: due.reason.as_str(),
            retire_previous_after,
        })
    }

    /// When a failed rotation is retried, decided at `now` with a jitter
    /// `sample` in `[0, 1)`: backoff by consecutive failures, bounded by
    /// the time left before the current version expires. A request
    /// `awaiting` approval is looked at again at least every
    /// [`AWAITING_POLL`], so an approval given by hand is picked up soon.
    pub(super) fn retry_at(
        &self,
        now: DateTime<Utc>,
        sample: f64,
        awaiting: bool,
    ) -> DateTime<Utc> {
        let delay = schedule::retry_delay(
            self.claimed.failures.max(0) as u32,
            now,
            self.claimed.not_after,
            sample,
        );
        now + if awaiting {
            delay.min(AWAITING_POLL)
        } else {
            delay
        }
    }
}
