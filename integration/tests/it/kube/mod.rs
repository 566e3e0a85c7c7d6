//! Kubernetes end to end against the API stand-in
//! ([`rekey_integration::kube`]).

mod bootstrap;
mod legacy;
mod rbac;
mod reload;
mod serve;
mod sink;
mod standin;
mod storage;
mod tokens;
