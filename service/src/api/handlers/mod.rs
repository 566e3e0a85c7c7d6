//! The admin API's handlers, one file per area. Each starts by authorizing
//! the caller for its [`super::auth::Action`]; mutating ones record the
//! outcome in the audit log.

pub mod audit;
pub mod backups;
pub mod bootstrap_tokens;
pub mod credentials;
pub mod etcd;
pub mod health;
pub mod issuers;
pub mod rotations;
