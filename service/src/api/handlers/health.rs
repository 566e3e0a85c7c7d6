//! Operations: `/healthz` (the process answers), `/readyz` (Postgres with
//! every migration, and the engine), `/metrics` (Prometheus). On the admin
//! listener `/metrics` needs the viewer role; the plain-HTTP metrics listener
//! serves all three without authentication.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use crate::api::{
    auth::Action,
    context::Shared,
    extract::Req,
    metrics::metrics_response,
    middleware::KeepBody,
    problem::HttpError,
    state::ApiState,
    views::{Health, Readiness},
};

/// `/readyz` gives the database this long to answer.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
pub async fn metrics_authed(State(s): State<Shared>, req: Req) -> Result<Response, HttpError> {
    s.authorize(&req, Action::ReadMetrics, None).await?;
    Ok(metrics_response(&s.api).await)
}

/// `/metrics` on the metrics listener.
pub async fn metrics_open(State(s): State<ApiState>) -> Response {
    metrics_response(&s).await
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// `/healthz` on the metrics listener.
pub async fn healthz_plain() -> Json<Health> {
    healthz().await
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (see which check failed)", body = Readiness)))]
pub async fn readyz(State(s): State<Shared>) -> Response {
    readiness(&s.api).await
}

/// `/readyz` on the metrics listener.
pub async fn readyz_plain(State(s): State<ApiState>) -> Response {
    readiness(&s).await
}

async fn readiness(state: &ApiState) -> Response {
    let database = tokio::time::timeout(READY_DB_TIMEOUT, state.store.ready())
        .await
        .unwrap_or(false);
    let engine = *state.engine_alive.borrow();
    let r = Readiness {
        ready: database && engine,
        database,
        engine,
    };
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = (status, Json(r)).into_response();
    // Not an error document: keep the renderer from replacing it.
    resp.extensions_mut().insert(KeepBody);
    resp
}
