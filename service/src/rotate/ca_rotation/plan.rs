//! What a CA rotation does next: a pure function of the rotation's row, what
//! the executor observed (who holds which bundle, how many leaves the old CA
//! still signs, what probed consumers serve) and `now`.
//!
//! ```text
//!  trusting ──(new CA known, every sink and target holds old+new, overlap)──► reissuing
//!     │ abort                                                                   │ new CA signs; every
//!     ▼                                                                         │ leaf re-issued (max_rate)
//!  aborted ──(old bundle back everywhere)──► finished                           ▼
//!                              retiring ◄──(no leaf left on the old CA)─────────┘
//!    probed consumers serve new-CA leaves, overlap ──► narrowed (bundles: new CA only)
//!    every sink and target holds it ──► new CA promoted in the issuer's store ──► done
//! ```
//!
//! Which CA signs and which are trusted in each phase is [`trust_of`]; every
//! replica applies it to its issuer registry (see [`super::follow`]).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

/// One rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct CaRotation {
    /// Its id.
    pub id: Uuid,
    /// The issuer.
    pub issuer: String,
    /// Where it is.
    pub phase: Phase,
    /// `cli`, `api` or `schedule`.
    pub trigger: String,
    /// Who asked.
    pub requested_by: String,
    /// Overlap (seconds).
    pub overlap_secs: f64,
    /// Re-issues per second (0: no limit).
    pub max_rate: f64,
    /// The CA rotated away from.
    pub old_ca_fingerprint: String,
    /// The CA rotated to, once known.
    pub new_ca_fingerprint: Option<String>,
    /// Every sink held old+new.
    pub trusted_at: Option<DateTime<Utc>>,
    /// Every probed consumer served a new-CA leaf.
    pub consumers_moved_at: Option<DateTime<Utc>>,
    /// Bundles narrowed to the new CA.
    pub narrowed_at: Option<DateTime<Utc>>,
    /// Leaves on the new CA.
    pub reissued: i64,
    /// Leaves on another CA (unknown before `reissuing`).
    pub remaining: Option<i64>,
    /// Why it is not moving on.
    pub waiting_for: Option<String>,
    /// Requested.
    pub started_at: DateTime<Utc>,
    /// Entered its phase.
    pub phase_changed_at: DateTime<Utc>,
    /// Done or aborted, and published everywhere.
    pub finished_at: Option<DateTime<Utc>>,
}

/// How long after entering `reissuing` the leaves start being marked due:
/// every replica has switched its signer by then (they follow the table at
/// least this often), so no replica re-issues a leaf with the old CA.
pub const SETTLE: Duration = Duration::from_secs(3);

/// A rotation's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Old and new CA trusted everywhere; the old one signs.
    Trusting,
    /// The new CA signs; leaves are re-issued.
    Reissuing,
    /// Waiting for consumers, then the old CA leaves the bundles.
    Retiring,
    /// The new CA is the issuer's CA.
    Done,
    /// Given up before re-issuing started.
    Aborted,
}

impl Phase {
    /// Every phase, in order (for metrics).
    pub const ALL: [Phase; 5] = [
        Self::Trusting,
        Self::Reissuing,
        Self::Retiring,
        Self::Done,
        Self::Aborted,
    ];

    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusting => "trusting",
            Self::Reissuing => "reissuing",
            Self::Retiring => "retiring",
            Self::Done => "done",
            Self::Aborted => "aborted",
        }
    }

    /// From the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The value of `rekey_ca_rotation_phase` (0: none running).
    pub fn metric(self) -> f64 {
        match self {
            Self::Trusting => 1.0,
            Self::Reissuing => 2.0,
            Self::Retiring => 3.0,
            Self::Done | Self::Aborted => 0.0,
        }
    }
}

/// Which of the rotation's two CAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The CA rotated away from.
    Old,
    /// The CA rotated to.
    New,
}

/// Who signs and who is trusted while a rotation is in a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// The CA that signs.
    pub signer: Which,
    /// The CAs in every bundle of the issuer, old first.
    pub trusted: Vec<Which>,
}

/// Who signs and who is trusted for the rotation `r` (the latest of its
/// issuer, finished or not).
pub fn trust_of(r: &CaRotation) -> Trust {
    use Which::{New, Old};
    let (signer, trusted) = match r.phase {
        Phase::Trusting if r.new_ca_fingerprint.is_none() => (Old, vec![Old]),
        Phase::Trusting => (Old, vec![Old, New]),
        Phase::Reissuing => (New, vec![Old, New]),
        Phase::Retiring if r.narrowed_at.is_none() => (New, vec![Old, New]),
        Phase::Retiring | Phase::Done => (New, vec![New]),
        Phase::Aborted => (Old, vec![Old]),
    };
    Trust { signer, trusted }
}

/// What the executor saw, just before deciding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Sinks and `[[bundle]]` targets of the issuer that do not hold the
    /// bundle [`trust_of`] asks for (names, at most a few).
    pub bundle_missing: Vec<String>,
    /// How many of them there are.
    pub bundle_missing_count: usize,
    /// Leaves whose current version the new CA signed.
    pub reissued: i64,
    /// Leaves whose current version another CA signed.
    pub remaining: i64,
    /// Leaves of `remaining` not yet marked due (or leased).
    pub remaining_unmarked: i64,
    /// Probed consumers that do not serve a new-CA leaf yet (names).
    pub consumers_behind: Vec<String>,
}

/// The one thing to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Find or make the new CA and record its fingerprint.
    PrepareNextCa,
    /// Publish the bundle [`trust_of`] asks for where it is missing.
    Republish,
    /// Record that every sink holds the both-CA bundle (the overlap starts).
    MarkTrusted,
    /// `trusting` → `reissuing`.
    StartReissuing,
    /// Mark up to this many old-CA leaves due (`None`: all of them).
    Reissue(Option<i64>),
    /// `reissuing` → `retiring`.
    StartRetiring,
    /// Record that every probed consumer serves a new-CA leaf.
    MarkConsumersMoved,
    /// Narrow the bundles to the new CA.
    Narrow,
    /// Promote the new CA in the issuer's store, then `done`.
    Promote,
    /// An aborted rotation: forget the new CA and finish.
    FinishAborted,
    /// Nothing to do until then (at the latest), and why.
    Wait(DateTime<Utc>, String),
}

fn overlap(r: &CaRotation) -> TimeDelta {
    TimeDelta::from_std(Duration::from_secs_f64(r.overlap_secs.max(0.0))).unwrap_or(TimeDelta::MAX)
}

fn names(v: &[String], count: usize) -> String {
    let shown = v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if count > 3 {
        format!("{shown} and {} more", count - 3)
    } else {
        shown
    }
}

/// How many leaves to mark due now, given `max_rate` (per second; 0: all)
/// and the time since the last marking.
pub fn reissue_budget(max_rate: f64, since_last: Duration) -> Option<i64> {
    if max_rate <= 0.0 {
        return None;
    }
    let n = (max_rate * since_last.as_secs_f64().min(2.0)).floor();
    Some((n as i64).max(1))
}

/// The next step of rotation `r` after observing `o` at `now`; `since_last`
/// is how long ago leaves were last marked due (for `max_rate`).
pub fn decide(r: &CaRotation, o: &Observed, now: DateTime<Utc>, since_last: Duration) -> Step {
    let poll = now + TimeDelta::seconds(1);
    match r.phase {
        Phase::Trusting => {
            if r.new_ca_fingerprint.is_none() {
                return Step::PrepareNextCa;
            }
            if o.bundle_missing_count > 0 {
                return Step::Republish;
            }
            let Some(trusted) = r.trusted_at else {
                return Step::MarkTrusted;
            };
            let until = trusted + overlap(r);
            if now < until {
                return Step::Wait(
                    until,
                    "overlap: consumers reloading the old+new bundle".into(),
                );
            }
            Step::StartReissuing
        }
        Phase::Reissuing => {
            let settle = r.phase_changed_at + TimeDelta::from_std(SETTLE).unwrap_or_default();
            if now < settle {
                return Step::Wait(settle, "every replica switching to the new CA".into());
            }
            if o.remaining_unmarked > 0 {
                return Step::Reissue(reissue_budget(r.max_rate, since_last));
            }
            if o.remaining > 0 {
                return Step::Wait(poll, format!("{} leaves being re-issued", o.remaining));
            }
            if o.bundle_missing_count > 0 {
                return Step::Republish;
            }
            Step::StartRetiring
        }
        Phase::Retiring if r.narrowed_at.is_none() => {
            if o.remaining_unmarked > 0 {
                return Step::Reissue(reissue_budget(r.max_rate, since_last));
            }
            if o.remaining > 0 {
                return Step::Wait(poll, format!("{} leaves being re-issued", o.remaining));
            }
            if !o.consumers_behind.is_empty() {
                return Step::Wait(
                    poll,
                    format!(
                        "probed consumers still serving a leaf of the old CA: {}",
                        names(&o.consumers_behind, o.consumers_behind.len())
                    ),
                );
            }
            let Some(moved) = r.consumers_moved_at else {
                return Step::MarkConsumersMoved;
            };
            let until = moved + overlap(r);
            if now < until {
                return Step::Wait(until, "overlap: consumers reloading new-CA leaves".into());
            }
            Step::Narrow
        }
        Phase::Retiring => {
            if o.bundle_missing_count > 0 {
                return Step::Republish;
            }
            Step::Promote
        }
        Phase::Aborted if r.finished_at.is_none() => {
            if o.bundle_missing_count > 0 {
                return Step::Republish;
            }
            Step::FinishAborted
        }
        Phase::Aborted | Phase::Done => Step::Wait(now + TimeDelta::days(1), String::new()),
    }
}

/// Whether `step` waits on something other than time (a sink that does not
/// take the bundle, leaves the engine has not re-issued, consumers that do
/// not reload): what `rekey_ca_rotation_blocked` and its alert report.
pub fn blocked(step: &Step) -> bool {
    match step {
        Step::Republish => true,
        Step::Wait(_, why) => {
            why.contains("leaves being re-issued") || why.starts_with("probed consumers")
        }
        _ => false,
    }
}

/// Why a republish step is needed (for `waiting_for`).
pub fn missing_reason(o: &Observed) -> String {
    format!(
        "{} sink(s) or bundle target(s) do not hold the bundle yet: {}",
        o.bundle_missing_count,
        names(&o.bundle_missing, o.bundle_missing_count)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phase: Phase) -> CaRotation {
        CaRotation {
            id: uuid::Uuid::nil(),
            issuer: "cluster".into(),
            phase,
            trigger: "cli".into(),
            requested_by: "test".into(),
            overlap_secs: 10.0,
            max_rate: 0.0,
            old_ca_fingerprint: "old".into(),
            new_ca_fingerprint: Some("new".into()),
            trusted_at: None,
            consumers_moved_at: None,
            narrowed_at: None,
            reissued: 0,
            remaining: None,
            waiting_for: None,
            started_at: Utc::now(),
            phase_changed_at: Utc::now(),
            finished_at: None,
        }
    }

    #[test]
    fn trusting_waits_for_every_sink_then_the_overlap() {
        let now = Utc::now();
        let mut r = row(Phase::Trusting);
        r.new_ca_fingerprint = None;
        assert_eq!(
            decide(&r, &Observed::default(), now, Duration::ZERO),
            Step::PrepareNextCa
        );
        assert_eq!(
            trust_of(&r).trusted,
            [Which::Old],
            "no new CA yet: nothing changes"
        );
        r.new_ca_fingerprint = Some("new".into());
        assert_eq!(
            trust_of(&r),
            Trust {
                signer: Which::Old,
                trusted: vec![Which::Old, Which::New]
            }
        );
        let behind = Observed {
            bundle_missing: vec!["cert/a".into()],
            bundle_missing_count: 1,
            ..Default::default()
        };
        assert_eq!(decide(&r, &behind, now, Duration::ZERO), Step::Republish);
        assert_eq!(
            decide(&r, &Observed::default(), now, Duration::ZERO),
            Step::MarkTrusted
        );
        r.trusted_at = Some(now - TimeDelta::seconds(5));
        assert!(
            matches!(decide(&r, &Observed::default(), now, Duration::ZERO), Step::Wait(t, _) if t == now + TimeDelta::seconds(5))
        );
        r.trusted_at = Some(now - TimeDelta::seconds(10));
        assert_eq!(
            decide(&r, &Observed::default(), now, Duration::ZERO),
            Step::StartReissuing
        );
    }

    #[test]
    fn reissuing_settles_marks_at_the_rate_and_waits_for_the_engine() {
        let now = Utc::now();
        let mut r = row(Phase::Reissuing);
        assert_eq!(trust_of(&r).signer, Which::New);
        r.phase_changed_at = now;
        let o = Observed {
            remaining: 10,
            remaining_unmarked: 10,
            ..Default::default()
        };
        assert!(matches!(
            decide(&r, &o, now, Duration::ZERO),
            Step::Wait(..)
        ));
        r.phase_changed_at = now - TimeDelta::seconds(10);
        assert_eq!(
            decide(&r, &o, now, Duration::from_secs(1)),
            Step::Reissue(None)
        );
        r.max_rate = 5.0;
        assert_eq!(
            decide(&r, &o, now, Duration::from_millis(400)),
            Step::Reissue(Some(2))
        );
        assert_eq!(
            decide(&r, &o, now, Duration::from_secs(60)),
            Step::Reissue(Some(10)),
            "a burst is bounded"
        );
        let marked = Observed {
            remaining: 10,
            ..Default::default()
        };
        assert!(matches!(
            decide(&r, &marked, now, Duration::ZERO),
            Step::Wait(..)
        ));
        assert_eq!(
            decide(&r, &Observed::default(), now, Duration::ZERO),
            Step::StartRetiring
        );
    }

    #[test]
    fn retiring_waits_for_consumers_and_the_overlap_then_narrows_and_promotes() {
        let now = Utc::now();
        let mut r = row(Phase::Retiring);
        let behind = Observed {
            consumers_behind: vec!["cert/web".into()],
            ..Default::default()
        };
        match decide(&r, &behind, now, Duration::ZERO) {
            Step::Wait(_, why) => assert!(why.contains("cert/web"), "{why}"),
            s => panic!("{s:?}"),
        }
        assert_eq!(
            decide(&r, &Observed::default(), now, Duration::ZERO),
            Step::MarkConsumersMoved
        );
        r.consumers_moved_at = Some(now - TimeDelta::seconds(11));
        assert_eq!(
            decide(&r, &Observed::default(), now, Duration::ZERO),
            Step::Narrow
        );
        assert_eq!(trust_of(&r).trusted, [Which::Old, Which::New]);
        r.narrowed_at = Some(now);
        assert_eq!(trust_of(&r).trusted, [Which::New]);
        let behind = Observed {
            bundle_missing: vec!["x".into()],
            bundle_missing_count: 1,
            ..Default::default()
        };
        assert_eq!(decide(&r, &behind, now, Duration::ZERO), Step::Republish);
        assert_eq!(
            decide(&r, &Observed::default(), now, Duration::ZERO),
            Step::Promote
        );
    }

    #[test]
    fn an_abort_puts_the_old_bundle_back_then_finishes() {
        let now = Utc::now();
        let r = row(Phase::Aborted);
        assert_eq!(
            trust_of(&r),
            Trust {
                signer: Which::Old,
                trusted: vec![Which::Old]
            }
        );
        let behind = Observed {
            bundle_missing: vec!["x".into()],
            bundle_missing_count: 1,
            ..Default::default()
        };
        assert_eq!(decide(&r, &behind, now, Duration::ZERO), Step::Republish);
        assert_eq!(
            decide(&r, &Observed::default(), now, Duration::ZERO),
            Step::FinishAborted
        );
    }
}
