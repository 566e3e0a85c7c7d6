//! etcd encryption at rest end to end, and the etcd harness itself.

mod budget;
mod checks;
mod harness;
mod memory;
pub mod migrate;
mod rotate;
mod verify;
