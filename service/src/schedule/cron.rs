//! Cron expressions as rekey's configuration writes them.

use std::str::FromStr;

use chrono::{DateTime, Utc};

/// Parses a cron expression (`sec min hour dom mon dow [year]`).
///
/// The error names the expression and the expected shape, for a message
/// that points at the field holding it.
pub fn parse_cron(expr: &str) -> Result<::cron::Schedule, String> {
    ::cron::Schedule::from_str(expr).map_err(|e| {
        format!("invalid cron expression `{expr}`: {e} (expected six or seven fields: sec min hour day-of-month month day-of-week [year])")
    })
}

/// The next fire of `schedule` strictly after `now`.
pub fn next_fire(schedule: &::cron::Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.after(&now).next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn next_fire_follows_the_expression() {
        let s = parse_cron("0 */15 * * * *").unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 10, 7, 30).unwrap();
        assert_eq!(
            next_fire(&s, t0),
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 10, 15, 0).unwrap())
        );
    }

    #[test]
    fn a_bad_expression_names_itself_and_the_shape() {
        let e = parse_cron("* * *").unwrap_err();
        assert!(
            e.contains("`* * *`") && e.contains("six or seven fields"),
            "{e}"
        );
    }
}
