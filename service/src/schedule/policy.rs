//! How a credential's renewal is scheduled, shared by certificates and
//! tokens: the policy the due-time functions read, built from a spec's
//! `lifetime`, `renew_fraction`, `renew_before` and `schedule` fields, and
//! the checks on those fields.

use crate::units::HumanDuration;

use super::cron::parse_cron;

/// Default share of a credential's lifetime after which it is renewed.
pub const DEFAULT_RENEW_FRACTION: f64 = 2.0 / 3.0;

/// How a credential's renewal is scheduled (shared by certificates and tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct RenewalPolicy {
    /// Validity of each version.
    pub lifetime: chrono::TimeDelta,
    /// Renew after this share of the lifetime.
    pub renew_fraction: f64,
    /// Renew at the latest this long before expiry.
    pub renew_before: Option<chrono::TimeDelta>,
    /// Cron schedule, already parsed.
    pub schedule: Option<cron::Schedule>,
}

impl RenewalPolicy {
    /// The policy of a spec's fields (assumes they passed [`validate_renewal`]:
    /// a schedule that does not parse is left out).
    pub fn new(
        lifetime: HumanDuration,
        renew_fraction: Option<f64>,
        renew_before: Option<HumanDuration>,
        schedule: Option<&str>,
    ) -> Self {
        Self {
            lifetime: lifetime.chrono(),
            renew_fraction: renew_fraction.unwrap_or(DEFAULT_RENEW_FRACTION),
            renew_before: renew_before.map(HumanDuration::chrono),
            schedule: schedule.and_then(|s| parse_cron(s).ok()),
        }
    }
}

/// Checks the renewal fields of a spec whose `lifetime` its owner has
/// already checked; an error is `(field, message)`.
pub fn validate_renewal(
    lifetime: HumanDuration,
    renew_fraction: Option<f64>,
    renew_before: Option<HumanDuration>,
    schedule: Option<&str>,
) -> Result<(), (String, String)> {
    if let Some(f) = renew_fraction
        && !(f > 0.0 && f < 1.0)
    {
        return Err((
            "renew_fraction".into(),
            format!("{f} is not between 0 and 1 (exclusive)"),
        ));
    }
    if let Some(b) = renew_before {
        if b.get().is_zero() {
            return Err(("renew_before".into(), "must be more than zero".into()));
        }
        if b >= lifetime {
            return Err((
                "renew_before".into(),
                format!("{b} is not shorter than the lifetime ({lifetime})"),
            ));
        }
    }
    if let Some(s) = schedule {
        parse_cron(s).map_err(|m| ("schedule".to_string(), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn d(secs: u64) -> HumanDuration {
        Duration::from_secs(secs).into()
    }

    #[test]
    fn defaults_and_parsed_schedule() {
        let p = RenewalPolicy::new(d(3600), None, Some(d(60)), Some("0 0 3 * * *"));
        assert_eq!(p.renew_fraction, DEFAULT_RENEW_FRACTION);
        assert_eq!(p.renew_before, Some(chrono::TimeDelta::seconds(60)));
        assert!(p.schedule.is_some());
    }

    #[test]
    fn each_field_is_named() {
        let field = |r: Result<(), (String, String)>| r.unwrap_err().0;
        assert_eq!(
            field(validate_renewal(d(60), Some(1.0), None, None)),
            "renew_fraction"
        );
        assert_eq!(
            field(validate_renewal(d(60), None, Some(d(0)), None)),
            "renew_before"
        );
        assert_eq!(
            field(validate_renewal(d(60), None, Some(d(60)), None)),
            "renew_before"
        );
        assert_eq!(
            field(validate_renewal(d(60), None, None, Some("* *"))),
            "schedule"
        );
        assert!(validate_renewal(d(60), Some(0.5), Some(d(10)), Some("0 * * * * *")).is_ok());
    }
}
