//! When is a credential due, and why: pure functions of `(credential, now)`.
//!
//! A credential is due at the earliest of: its cron schedule's next fire
//! after the current version was issued; the point where `renew_fraction` of
//! its lifetime has passed; `not_after - renew_before`. The lifetime-based
//! points are moved earlier by a bounded jitter so that a fleet issued
//! together does not renew together. The due time is never after `not_after`.

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use super::policy::RenewalPolicy;

/// Why a credential is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No version has been issued yet.
    Initial,
    /// The cron schedule fired.
    Schedule,
    /// `renew_fraction` of the lifetime has passed.
    RenewFraction,
    /// `renew_before` the expiry has been reached.
    RenewBefore,
}

impl Reason {
    /// Spelling stored in `credentials.next_rotation_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Schedule => "schedule",
            Self::RenewFraction => "renew_fraction",
            Self::RenewBefore => "renew_before",
        }
    }
}

/// The `rotations.trigger` for a stored `next_rotation_reason`.
pub fn trigger_for(reason: Option<&str>) -> &'static str {
    match reason {
        Some("schedule") => "schedule",
        Some("renew_fraction" | "renew_before" | "retry-expiry") => "expiry",
        Some("manual") => "manual",
        Some("join") => "join",
        Some("ca-rotation") => "ca-rotation",
        _ => "startup",
    }
}

/// A due time and its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// When to rotate.
    pub at: DateTime<Utc>,
    /// Why then.
    pub reason: Reason,
}

/// How much jitter may move a lifetime-based due time earlier.
#[derive(Debug, Clone, Copy)]
pub struct Jitter {
    /// Absolute bound.
    pub max: TimeDelta,
    /// Bound as a share of the lifetime (the smaller bound wins).
    pub fraction: f64,
}

impl Jitter {
    /// No jitter.
    pub const NONE: Jitter = Jitter {
        max: TimeDelta::zero(),
        fraction: 0.0,
    };

    /// The bound for a lifetime.
    pub fn bound(&self, lifetime: TimeDelta) -> TimeDelta {
        let by_fraction = scale(lifetime, self.fraction);
        by_fraction.min(self.max).max(TimeDelta::zero())
    }
}

fn scale(d: TimeDelta, f: f64) -> TimeDelta {
    let ms = d.num_milliseconds() as f64 * f;
    TimeDelta::milliseconds(ms.round() as i64)
}

/// A stable jitter sample in `[0, 1)` for one version of one credential, so
/// that recomputing the due time (e.g. after a restart) gives the same answer.
pub fn jitter_sample(credential: &str, version: i64) -> f64 {
    let h = Sha256::new()
        .chain_update(credential.as_bytes())
        .chain_update(version.to_be_bytes())
        .finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The next due time of a credential whose current version was issued at
/// `issued_at` and is valid over `[not_before, not_after]` (`not_before` may
/// be back-dated for clock skew; the cron schedule counts from `issued_at`).
/// `sample` is a jitter sample in `[0, 1)`.
pub fn next_due(
    policy: &RenewalPolicy,
    issued_at: DateTime<Utc>,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    jitter: Jitter,
    sample: f64,
) -> Due {
    let lifetime = (not_after - not_before).max(TimeDelta::zero());
    let by_fraction = not_before + scale(lifetime, policy.renew_fraction.clamp(0.0, 1.0));
    let mut lifetime_due = Due {
        at: by_fraction,
        reason: Reason::RenewFraction,
    };
    if let Some(before) = policy.renew_before {
        let at = not_after - before;
        if at < lifetime_due.at {
            lifetime_due = Due {
                at,
                reason: Reason::RenewBefore,
            };
        }
    }
    let offset = scale(jitter.bound(lifetime), sample.clamp(0.0, 1.0));
    lifetime_due.at = (lifetime_due.at - offset).max(not_before);

    let mut due = lifetime_due;
    if let Some(schedule) = &policy.schedule
        && let Some(fire) = schedule.after(&issued_at.max(not_before)).next()
        && fire < due.at
    {
        due = Due {
            at: fire,
            reason: Reason::Schedule,
        };
    }
    if due.at > not_after {
        due.at = not_after;
    }
    due
}

/// Delay before retrying a failed rotation: exponential from 1 s, capped at
/// 5 minutes, with up to 20% jitter, and never more than a quarter of the
/// time left before `not_after` (at least one second).
pub fn retry_delay(
    failures: u32,
    now: DateTime<Utc>,
    not_after: Option<DateTime<Utc>>,
    sample: f64,
) -> TimeDelta {
    let exp = TimeDelta::seconds(1i64 << failures.min(9)).min(TimeDelta::minutes(5));
    let jittered = exp - scale(exp, 0.2 * sample.clamp(0.0, 1.0));
    let capped = match not_after {
        Some(t) if t > now => jittered.min((t - now) / 4),
        Some(_) => TimeDelta::seconds(1),
        None => jittered,
    };
    capped.max(TimeDelta::seconds(1))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use rand::Rng;

    use super::*;

    fn policy(fraction: f64, before: Option<i64>, cron: Option<&str>) -> RenewalPolicy {
        RenewalPolicy {
            lifetime: TimeDelta::hours(24),
            renew_fraction: fraction,
            renew_before: before.map(TimeDelta::seconds),
            schedule: cron.map(|c| cron::Schedule::from_str(c).unwrap()),
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn fraction_is_the_default_reason() {
        let due = next_due(
            &policy(2.0 / 3.0, None, None),
            t0(),
            t0(),
            t0() + TimeDelta::hours(24),
            Jitter::NONE,
            0.0,
        );
        assert_eq!(due.reason, Reason::RenewFraction);
        assert_eq!(due.at, t0() + TimeDelta::hours(16));
    }

    #[test]
    fn renew_before_wins_when_earlier() {
        let due = next_due(
            &policy(0.9, Some(8 * 3600), None),
            t0(),
            t0(),
            t0() + TimeDelta::hours(24),
            Jitter::NONE,
            0.0,
        );
        assert_eq!(due.reason, Reason::RenewBefore);
        assert_eq!(due.at, t0() + TimeDelta::hours(16));
    }

    #[test]
    fn cron_wins_when_earlier() {
        // Every day at 03:00:00.
        let due = next_due(
            &policy(0.66, None, Some("0 0 3 * * *")),
            t0(),
            t0(),
            t0() + TimeDelta::hours(24),
            Jitter::NONE,
            0.0,
        );
        assert_eq!(due.reason, Reason::Schedule);
        assert_eq!(due.at, t0() + TimeDelta::hours(3));
        // A cron that fires after the lifetime point loses.
        let due = next_due(
            &policy(0.1, None, Some("0 0 3 * * *")),
            t0(),
            t0(),
            t0() + TimeDelta::hours(24),
            Jitter::NONE,
            0.0,
        );
        assert_eq!(due.reason, Reason::RenewFraction);
    }

    #[test]
    fn cron_counts_from_issuance_not_from_a_backdated_not_before() {
        // Issued at 00:00:10, back-dated 30 s: the minute boundary at 00:00:00
        // lies between not_before and issuance and must not fire.
        let issued = t0() + TimeDelta::seconds(10);
        let nb = issued - TimeDelta::seconds(30);
        let due = next_due(
            &policy(0.9, None, Some("0 * * * * *")),
            issued,
            nb,
            nb + TimeDelta::minutes(5),
            Jitter::NONE,
            0.0,
        );
        assert_eq!(due.reason, Reason::Schedule);
        assert_eq!(due.at, t0() + TimeDelta::minutes(1));
    }

    #[test]
    fn jitter_moves_earlier_within_its_bound() {
        let j = Jitter {
            max: TimeDelta::minutes(5),
            fraction: 0.05,
        };
        let base = next_due(
            &policy(0.5, None, None),
            t0(),
            t0(),
            t0() + TimeDelta::hours(24),
            Jitter::NONE,
            0.0,
        );
        let jittered = next_due(
            &policy(0.5, None, None),
            t0(),
            t0(),
            t0() + TimeDelta::hours(24),
            j,
            0.999,
        );
        assert!(jittered.at < base.at);
        assert!(base.at - jittered.at <= TimeDelta::minutes(5));
    }

    /// Property: whatever the policy, lifetime, jitter and sample, the due
    /// time is within `[not_before, not_after]`, and jitter moves it by at
    /// most its bound.
    #[test]
    fn property_due_within_validity_and_jitter_bounded() {
        let mut rng = rand::rng();
        let crons = [
            None,
            Some("0 0 3 * * *"),
            Some("*/7 * * * * *"),
            Some("0 0 0 1 1 * 2020"),
        ];
        for _ in 0..20_000 {
            let lifetime = TimeDelta::seconds(rng.random_range(1..10_000_000));
            let nb = t0() + TimeDelta::seconds(rng.random_range(-1_000_000..1_000_000));
            let na = nb + lifetime;
            let before = rng
                .random_bool(0.5)
                .then(|| rng.random_range(1..=lifetime.num_seconds().max(1)));
            let p = policy(
                rng.random_range(0.01..0.99),
                before,
                crons[rng.random_range(0..crons.len())],
            );
            let jitter = Jitter {
                max: TimeDelta::seconds(rng.random_range(0..1000)),
                fraction: rng.random_range(0.0..0.5),
            };
            let sample: f64 = rng.random();
            let due = next_due(&p, nb, nb, na, jitter, sample);
            assert!(due.at <= na, "due {} after not_after {na}", due.at);
            assert!(
                due.at >= nb || due.reason == Reason::Schedule,
                "due {} before not_before {nb}",
                due.at
            );
            let plain = next_due(&p, nb, nb, na, Jitter::NONE, 0.0);
            if plain.reason != Reason::Schedule && due.reason != Reason::Schedule {
                assert!(plain.at - due.at <= jitter.bound(lifetime) + TimeDelta::milliseconds(1));
                assert!(due.at <= plain.at);
            }
        }
    }

    #[test]
    fn jitter_sample_is_stable_and_in_range() {
        assert_eq!(jitter_sample("a", 1), jitter_sample("a", 1));
        assert_ne!(jitter_sample("a", 1), jitter_sample("a", 2));
        for v in 0..1000 {
            let s = jitter_sample("cert/x", v);
            assert!((0.0..1.0).contains(&s));
        }
    }

    #[test]
    fn retry_delay_is_deadline_aware() {
        let now = t0();
        assert_eq!(retry_delay(0, now, None, 0.0), TimeDelta::seconds(1));
        assert_eq!(retry_delay(3, now, None, 0.0), TimeDelta::seconds(8));
        assert_eq!(retry_delay(30, now, None, 0.0), TimeDelta::minutes(5));
        // 40 s left: never more than 10 s.
        assert_eq!(
            retry_delay(30, now, Some(now + TimeDelta::seconds(40)), 0.0),
            TimeDelta::seconds(10)
        );
        // Expired: retry every second.
        assert_eq!(
            retry_delay(30, now, Some(now - TimeDelta::seconds(40)), 0.0),
            TimeDelta::seconds(1)
        );
        let mut rng = rand::rng();
        for _ in 0..10_000 {
            let left = TimeDelta::seconds(rng.random_range(4..100_000));
            let d = retry_delay(rng.random_range(0..40), now, Some(now + left), rng.random());
            assert!(
                d <= left / 4 && d >= TimeDelta::seconds(1),
                "{d} with {left} left"
            );
        }
    }
}
