//! `POST /v1/etcd/verify`: check the EncryptionConfiguration and scan etcd
//! (as `rekey etcd verify --json`), recorded in `etcd_checks` and audited.
//! `POST /v1/etcd/migrate`: a storage migration (as `rekey etcd migrate
//! --json`), recorded in `etcd_migrations` and audited.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};

use crate::api::{
    auth::Action,
    authz::{Call, Intent},
    context::Shared,
    extract::{Req, parse_body},
    problem::{HttpError, Problem},
};

#[utoipa::path(post, path = "/v1/etcd/verify", tag = "etcd",
    request_body(content = Option<Object>, content_type = "application/json",
        description = "Optional overrides of [etcd]: `prefix`, `resource`, `sample`, `max_listed`"),
    responses(
        (status = 200, description = "The verification report (as `rekey etcd verify --json`); `exit_code` 1 when problems were found", body = Object),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "[etcd] endpoints and encryption_config are not configured on this server", body = Problem, content_type = "application/problem+json")))]
pub async fn verify_etcd(
    State(s): State<Shared>,
    req: Req,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let checked = parse_body::<crate::etcd::verify::VerifyRequest>(&headers, &body)
        .map(Option::unwrap_or_default);
    let intent = Intent::new(Action::VerifyEtcd, "etcd");
    let state = s.clone();
    s.mutating(req, intent, checked, move |call: Call<crate::etcd::verify::VerifyRequest>| async move {
        let opts = state
            .api
            .capabilities
            .etcd
            .as_ref()
            .and_then(crate::etcd::VerifyOptions::from_config)
            .ok_or_else(|| {
                HttpError::NotImplemented(
                    "etcd verification is not configured on this server: set [etcd] endpoints and encryption_config".into(),
                )
            })?;
        let opts = call
            .input
            .apply(opts)
            .map_err(|(field, msg)| HttpError::BadRequest(format!("{field}: {msg}")))?;
        // The check's row and this request's audit event commit together.
        let (report, check_id) = crate::etcd::verify::verify_and_record_audited(
            &opts,
            Some(&state.api.store),
            crate::etcd::db::Trigger::Api,
            Some(&call.ticket),
        )
        .await
        .map_err(|e| match e {
            crate::etcd::VerifyError::Connect(_) | crate::etcd::VerifyError::Scan(_) => {
                HttpError::unavailable(
                    "etcd could not be read; see the server log for this request id",
                    e,
                )
            }
            e => HttpError::internal("the verification could not run", e),
        })?;
        let details = serde_json::json!({ "check_id": check_id, "exit_code": report.exit_code });
        Ok((Json(report).into_response(), details))
    })
    .await
}

#[utoipa::path(post, path = "/v1/etcd/migrate", tag = "etcd",
    request_body(content = Option<Object>, content_type = "application/json",
        description = "Optional overrides of [etcd]: `resources`, `max_rate` (0: no limit), `dry_run`"),
    responses(
        (status = 200, description = "The migration report (as `rekey etcd migrate --json`); `exit_code` 1 when it failed or stale values remain", body = Object),
        (status = 400, description = "A bad override, or the EncryptionConfiguration does not allow the migration", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another migration is running", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "[etcd] encryption_config or Kubernetes access is not configured on this server", body = Problem, content_type = "application/problem+json")))]
pub async fn migrate_etcd(
    State(s): State<Shared>,
    req: Req,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    use crate::etcd::migrate::{MigrateError, MigrateOptions, MigrateRequest, migrate};
    let checked = parse_body::<MigrateRequest>(&headers, &body).map(Option::unwrap_or_default);
    let intent = Intent::new(Action::MigrateEtcd, "etcd");
    let state = s.clone();
    s.mutating(req, intent, checked, move |call: Call<MigrateRequest>| async move {
        let not_configured = || {
            HttpError::NotImplemented(
                "etcd storage migration is not configured on this server: set [etcd] encryption_config and [kubernetes]".into(),
            )
        };
        let kube = state.api.kube.clone().ok_or_else(not_configured)?;
        let opts = state
            .api
            .capabilities
            .etcd
            .as_ref()
            .and_then(|e| {
                MigrateOptions::from_config(e, crate::etcd::db::Trigger::Api, &call.caller.actor)
            })
            .ok_or_else(not_configured)?;
        let mut opts = call
            .input
            .apply(opts)
            .map_err(|(field, msg)| HttpError::BadRequest(format!("{field}: {msg}")))?;
        // The migration's audit event is this request's (written once, by the
        // migration when it records its end; otherwise by `mutating`).
        opts.audit = Some(call.ticket.clone());
        // `mutating` runs this in a task of its own: it goes on to the end even
        // if the caller goes away, and its progress is recorded.
        let report = migrate(&opts, Some(&state.api.store), &kube)
            .await
            .map_err(|e| match e {
                e if e.is_bad_input() => HttpError::BadRequest(e.to_string()),
                e @ MigrateError::Mismatch { .. } => HttpError::BadRequest(e.to_string()),
                e @ MigrateError::Busy => HttpError::Conflict(e.to_string()),
                e @ (MigrateError::Connect(_) | MigrateError::Scan(_) | MigrateError::Kube(_)) => {
                    HttpError::unavailable(
                        "etcd or the Kubernetes API could not be reached; see the server log for this request id",
                        e,
                    )
                }
                e => HttpError::internal("the migration could not run", e),
            })?;
        let details = serde_json::json!({
            "migration_id": report.migration_id, "exit_code": report.exit_code,
            "rewritten": report.rewritten, "stale_after": report.stale_after,
        });
        Ok((Json(report).into_response(), details))
    })
    .await
}
