//! Time: when a credential is due (pure), cron expressions, renewal
//! policies, and the one loop every scheduled job runs in.
//!
//! - [`due`]: `next_due`, jitter and retry backoff, pure functions of their
//!   inputs and `now`.
//! - [`cron`]: parsing `sec min hour dom mon dow [year]` expressions.
//! - [`policy`]: [`RenewalPolicy`], built from a spec's renewal fields, and
//!   the checks on those fields.
//! - [`jobs`]: [`jobs::every`] and [`jobs::on_cron`], the loop around every
//!   periodic job (scans, checks, backups, relists), stopping on shutdown.

pub mod cron;
pub mod due;
pub mod jobs;
pub mod policy;

pub use cron::{next_fire, parse_cron};
pub use due::*;
pub use policy::{DEFAULT_RENEW_FRACTION, RenewalPolicy, validate_renewal};
