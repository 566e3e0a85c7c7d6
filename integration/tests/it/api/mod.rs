//! The admin HTTP API end to end.

mod dev;
mod schemathesis;
mod server;
mod token;
