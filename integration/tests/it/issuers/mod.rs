//! Issuers (issue 12): named issuers and their configuration checks, the
//! CA in the inventory, `kubernetes-csr` through the stand-in's CSR API,
//! and what independent consumers make of every certificate.

mod config;
mod consumers;
mod csr;
mod hygiene;
pub mod rotation;
mod secret;
