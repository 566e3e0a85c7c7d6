//! etcd encryption at rest end to end, and the etcd harness itself.

mod checks;
mod harness;
mod memory;
mod rotate;
mod verify;
