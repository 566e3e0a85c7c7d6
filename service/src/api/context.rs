//! The state every handler of the admin API router shares ([`Shared`]):
//! what the wiring gave ([`ApiState`]), the role map, the bearer-token
//! authenticator, the in-flight limit, rotation-finished notifications for
//! `?wait=true`, and the paging key.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use super::{auth::TokenAuthenticator, config::RoleMapping, paging::PagingKeys, state::ApiState};
use crate::store::listen::Notifications;

/// What handlers share.
pub type Shared = Arc<Inner>;

/// Handler state (built once when the router is made).
pub struct Inner {
    /// The store, the engine's liveness, metrics, Kubernetes, capabilities.
    pub(super) api: ApiState,
    /// Roles of client certificate subjects (`[api].roles`).
    pub(super) roles: Vec<RoleMapping>,
    /// Bearer-token authentication, when `[api].token_review = true`.
    pub(super) tokens: Option<TokenAuthenticator>,
    /// Plain HTTP: anonymous callers are viewers.
    pub(super) plain_http: bool,
    /// Longest `?wait=true` waits (`[api].wait_timeout`).
    pub(super) wait_timeout: Duration,
    /// Requests in flight (`[api].max_concurrent_requests`).
    pub(super) in_flight: Arc<Semaphore>,
    /// Finished rotations' ids, from the engine's NOTIFY.
    pub(super) done: Notifications,
    /// The key of `continue` tokens, read from Postgres on first use.
    pub(super) paging: PagingKeys,
}
