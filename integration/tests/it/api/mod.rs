//! The admin HTTP API end to end.

mod dev;
mod paging;
mod schemathesis;
mod server;
mod token;
