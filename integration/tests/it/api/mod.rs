//! The admin HTTP API end to end.

mod dev;
mod exhaustion;
mod hostile;
mod issuers;
mod paging;
mod resets;
mod schemathesis;
mod server;
mod token;
