//! Time: when a credential is due (pure), cron expressions, and the one loop
//! every scheduled job runs in.
//!
//! - [`due`]: `next_due`, jitter and retry backoff, pure functions of their
//!   inputs and `now`.
//! - [`cron`]: parsing `sec min hour dom mon dow [year]` expressions.
//! - [`jobs`]: [`jobs::every`] and [`jobs::on_cron`], the loop around every
//!   periodic job (scans, checks, backups, relists), stopping on shutdown.

pub mod cron;
pub mod due;
pub mod jobs;

pub use cron::parse_cron;
pub use due::*;
