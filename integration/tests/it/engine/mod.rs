//! The rotation engine: stepped against Postgres, through the CLI, and as
//! the real binary.

mod binary;
mod cli;
mod reload;
mod store;
