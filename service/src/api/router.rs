//! The routes of the admin API and of the plain-HTTP metrics listener, and
//! the layers around them (outermost first): request id, problem renderer,
//! head limits (414/431), timeout, body limit, in-flight limit.

use std::sync::Arc;

use axum::{
    Router,
    http::StatusCode,
    middleware,
    routing::{get, post},
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{
    auth::TokenAuthenticator,
    config::ApiConfig,
    context::{Inner, Shared},
    error::ApiError,
    handlers::{
        audit, backups, bootstrap_tokens, credentials, etcd, health, issuers,
        rotations::{self, ROTATION_DONE_CHANNEL},
    },
    middleware::{
        limit_head, limit_in_flight, method_not_allowed, not_found, render_problems, request_id,
    },
    openapi::openapi_json,
    state::ApiState,
};

/// Operations that answer 501 in this build (their capability is not wired).
pub const NOT_WIRED: &[&str] = &[];

/// Builds the admin API router.
pub fn router(
    state: ApiState,
    config: &ApiConfig,
    shutdown: CancellationToken,
) -> Result<Router, ApiError> {
    let tokens = if config.token_review {
        let client = state.kube.clone().ok_or(ApiError::NoKubeClient)?;
        Some(TokenAuthenticator::new(
            client,
            config.token_audiences.clone(),
        ))
    } else {
        None
    };
    let done = crate::store::listen::listen(&state.store, ROTATION_DONE_CHANNEL, shutdown);
    let shared: Shared = Arc::new(Inner {
        api: state,
        roles: config.roles.clone(),
        tokens,
        plain_http: config.insecure_plain_http,
        wait_timeout: config.wait_timeout.get(),
        in_flight: Arc::new(Semaphore::new(config.max_concurrent_requests)),
        done,
        paging: Default::default(),
    });
    let limit = config.max_body_size.0 as usize;
    Ok(Router::new()
        .route("/v1/credentials", get(credentials::list_credentials))
        .route("/v1/credentials/{name}", get(credentials::get_credential))
        .route(
            "/v1/credentials/{name}/rotate",
            post(credentials::rotate_credential),
        )
        .route("/v1/rotations/{id}", get(rotations::get_rotation))
        .route(
            "/v1/bootstrap-tokens",
            get(bootstrap_tokens::list_bootstrap_tokens),
        )
        .route(
            "/v1/bootstrap-tokens/{id}/revoke",
            post(bootstrap_tokens::revoke_bootstrap_token),
        )
        .route("/v1/etcd/verify", post(etcd::verify_etcd))
        .route("/v1/etcd/migrate", post(etcd::migrate_etcd))
        .route(
            "/v1/backups",
            get(backups::list_backups).post(backups::run_backup),
        )
        .route("/v1/issuers", get(issuers::list_issuers))
        .route("/v1/issuers/{name}", get(issuers::get_issuer))
        .route("/v1/issuers/{name}/rotate", post(issuers::rotate_issuer))
        .route("/v1/audit", get(audit::list_audit))
        .route("/metrics", get(health::metrics_authed))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            limit_in_flight,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout.get(),
        ))
        .layer(middleware::from_fn(limit_head))
        .layer(middleware::from_fn(render_problems))
        .layer(middleware::from_fn(request_id))
        .with_state(shared))
}

/// The plain-HTTP metrics listener: `/metrics`, `/healthz`, `/readyz`, no auth.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics_open))
        .route("/healthz", get(health::healthz_plain))
        .route("/readyz", get(health::readyz_plain))
        .fallback(not_found)
        .layer(middleware::from_fn(limit_head))
        .layer(middleware::from_fn(render_problems))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}
