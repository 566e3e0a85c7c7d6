//! `rekey backup` end to end, and the helpers its tests share ([`util`]).

mod azure;
mod deploy;
mod format;
mod gcs;
mod keys;
mod prune;
mod rewrap;
mod run;
pub(crate) mod util;
