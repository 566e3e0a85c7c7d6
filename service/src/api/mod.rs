//! The admin HTTPS API (mutual TLS): rotate now, inventory, audit, metrics.
//!
//! ```text
//!  TCP ─► rustls (client cert verified against [api].client_ca) ─► hyper (h1/h2)
//!      ─► request id ─► problem+json renderer ─► timeout ─► body limit ─► concurrency limit
//!      ─► axum router ─► handler: authenticate (cert role | TokenReview) ─► authorize
//!                                 (role | SubjectAccessReview) ─► act through the Store ─► audit
//! ```
//!
//! - [`config`]: the `[api]` section and its roles; [`state`]: what the wiring
//!   hands the API; [`error`]: why it could not start.
//! - [`server`]: TLS configuration, the accept loop, the plain-HTTP metrics listener;
//!   [`connections`]: which connections a listener keeps (limits, eviction,
//!   deadlines, summarised refusal logs).
//! - [`router`]: the routes and their layers; [`middleware`]: request id,
//!   problem rendering, in-flight limit; [`extract`]: path, query, caller
//!   facts, JSON bodies; [`input`]: the checks of names, query strings,
//!   reasons and idempotency keys made before anything touches the database.
//! - [`authz`]: authenticate, authorize and audit each call ([`auth`]: identities,
//!   roles, actions, TokenReview/SubjectAccessReview).
//! - [`handlers`]: one file per area (credentials, rotations, bootstrap
//!   tokens, etcd, backups, audit, health); [`views`]: their request and
//!   response types; [`paging`]: `?limit` and `continue` tokens.
//! - [`metrics`]: `/metrics` with the inventory gauges; [`openapi`]: `/openapi.json`.
//! - [`problem`]: RFC 9457 errors with stable types; internal causes are logged, never sent.
//! - [`dev`]: certificates for `rekey dev`.
//!
//! Dependencies point one way: `server` → `router` → `handlers` → (`extract`,
//! `paging`, `views`, `metrics`, `context`) → (`config`, `state`, `auth`,
//! `problem`); `authz` adds the authorize/audit methods to `context::Inner`,
//! so no handler imports it; `openapi` reads the handlers' annotations. This
//! file only declares and re-exports: no child imports it.
//!
//! "Rotate now" never rotates here: it queues a manual rotation with
//! [`crate::store::Store::request_rotation`] and the engine runs it through
//! the same state machine as a scheduled one.

pub mod auth;
mod authz;
pub mod config;
pub mod connections;
mod context;
pub mod dev;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod input;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod paging;
pub mod problem;
pub mod router;
pub mod server;
pub mod state;
pub mod views;

pub use config::{ApiConfig, Role, RoleMapping};
pub use error::ApiError;
pub use server::{Running, serve, start};
pub use state::{ApiState, Capabilities};
