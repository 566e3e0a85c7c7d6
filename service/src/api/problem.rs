//! RFC 9457 problem details: the one error shape of the admin API.
//!
//! Handlers return [`HttpError`]; its `IntoResponse` puts a [`Problem`]
//! (public text only) into the response extensions. The outer
//! `render_problems` middleware renders every error response — ours, axum's
//! rejections, tower-http's 413/503, the 414/431 of the head limits — as
//! `application/problem+json` with the request id, so no error ever leaves
//! in another shape. Internal causes are logged when the error is made
//! ([`HttpError::internal`], [`HttpError::unavailable`]), on a line that
//! carries the request's `request_id` as a field of its own (the id the
//! problem document names; see [`in_request`]), also in tasks a request
//! spawned, and also when the caller has gone away.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

tokio::task_local! {
    /// The id of the request this task works for.
    static REQUEST_ID: String;
}

/// Runs `work` as part of request `id`: causes logged inside carry it.
pub async fn in_request<F: std::future::Future>(id: String, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// The id of the request the current task works for, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Stable problem types (`type` member). Clients may switch on them; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// The request is malformed (query, path, body, header).
    BadRequest,
    /// No client certificate or bearer token identified the caller.
    Unauthenticated,
    /// The caller is known but its role (or RBAC) does not allow the action.
    Forbidden,
    /// No such resource (or route).
    NotFound,
    /// The method is not allowed on this resource.
    MethodNotAllowed,
    /// The request conflicts with an earlier one (idempotency key reused).
    Conflict,
    /// The body is larger than `[api].max_body_size`.
    PayloadTooLarge,
    /// The body is not JSON.
    UnsupportedMediaType,
    /// The request target (path and query) is longer than the server reads.
    UriTooLong,
    /// The request's header section is larger than the server reads.
    HeadersTooLarge,
    /// The capability behind this endpoint is not in this build.
    NotImplemented,
    /// Too many requests in flight, or the request took longer than `[api].request_timeout`.
    Unavailable,
    /// Something failed inside; details are in the server log under the request id.
    Internal,
}

impl ProblemType {
    /// The `type` URI.
    pub fn uri(self) -> &'static str {
        match self {
            Self::BadRequest => "urn:rekey:problem:bad-request",
            Self::Unauthenticated => "urn:rekey:problem:unauthenticated",
            Self::Forbidden => "urn:rekey:problem:forbidden",
            Self::NotFound => "urn:rekey:problem:not-found",
            Self::MethodNotAllowed => "urn:rekey:problem:method-not-allowed",
            Self::Conflict => "urn:rekey:problem:conflict",
            Self::PayloadTooLarge => "urn:rekey:problem:payload-too-large",
            Self::UnsupportedMediaType => "urn:rekey:problem:unsupported-media-type",
            Self::UriTooLong => "urn:rekey:problem:uri-too-long",
            Self::HeadersTooLarge => "urn:rekey:problem:headers-too-large",
            Self::NotImplemented => "urn:rekey:problem:not-implemented",
            Self::Unavailable => "urn:rekey:problem:unavailable",
            Self::Internal => "urn:rekey:problem:internal",
        }
    }

    /// The HTTP status that goes with it.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short, fixed summary (`title` member).
    pub fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad request",
            Self::Unauthenticated => "Not authenticated",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "Conflict",
            Self::PayloadTooLarge => "Request body too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::UriTooLong => "Request target too long",
            Self::HeadersTooLarge => "Request headers too large",
            Self::NotImplemented => "Not implemented",
            Self::Unavailable => "Service unavailable",
            Self::Internal => "Internal error",
        }
    }

    /// The type for a bare status code produced by a layer or a rejection.
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            401 => Self::Unauthenticated,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            414 => Self::UriTooLong,
            415 => Self::UnsupportedMediaType,
            431 => Self::HeadersTooLarge,
            501 => Self::NotImplemented,
            408 | 429 | 503 | 504 => Self::Unavailable,
            s if s >= 500 => Self::Internal,
            _ => Self::BadRequest,
        }
    }
}

/// A problem document (RFC 9457).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(title = "Problem")]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `urn:rekey:problem:not-found`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The request id (also in the `x-request-id` header and the audit log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Problem {
    /// A problem of `kind` with a detail message.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            type_: kind.uri().into(),
            title: kind.title().into(),
            status: kind.status().as_u16(),
            detail: Some(detail.into()),
            instance: None,
            request_id: None,
        }
    }

    /// Renders as an `application/problem+json` response.
    pub fn into_response_with(self, mut extra: Response) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        *extra.status_mut() = status;
        extra
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        extra.headers_mut().remove(header::CONTENT_LENGTH);
        *extra.body_mut() = axum::body::Body::from(body);
        extra
    }
}

/// An error answered to an API caller. Internal causes are logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Nobody identified.
    #[error("{0}")]
    Unauthenticated(String),
    /// Not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with an earlier request.
    #[error("{0}")]
    Conflict(String),
    /// Body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The capability has not landed in this build.
    #[error("{0}")]
    NotImplemented(String),
    /// Try again later.
    #[error("{0}")]
    Unavailable(String),
    /// A failure inside: `public` is sent, `internal` only logged.
    #[error("{public}")]
    Internal {
        /// Safe to show.
        public: String,
        /// The cause, for the log.
        internal: String,
    },
}

impl HttpError {
    /// An internal error from any cause; the cause is logged (at ERROR, with
    /// the request id), not returned.
    pub fn internal(public: &str, cause: impl std::fmt::Display) -> Self {
        let request_id = current_request_id().unwrap_or_default();
        tracing::error!(%request_id, error = %cause, "{public}");
        Self::Internal {
            public: public.to_string(),
            internal: cause.to_string(),
        }
    }

    /// "Try again later" because something outside failed (Kubernetes, etcd):
    /// the cause is logged (with the request id, from the request's span),
    /// the caller gets `public` only.
    pub fn unavailable(public: &str, cause: impl std::fmt::Display) -> Self {
        let request_id = current_request_id().unwrap_or_default();
        tracing::warn!(%request_id, error = %cause, "{public}");
        Self::Unavailable(public.to_string())
    }

    /// The problem type.
    pub fn kind(&self) -> ProblemType {
        match self {
            Self::BadRequest(_) => ProblemType::BadRequest,
            Self::Unauthenticated(_) => ProblemType::Unauthenticated,
            Self::Forbidden(_) => ProblemType::Forbidden,
            Self::NotFound(_) => ProblemType::NotFound,
            Self::Conflict(_) => ProblemType::Conflict,
            Self::UnsupportedMediaType(_) => ProblemType::UnsupportedMediaType,
            Self::NotImplemented(_) => ProblemType::NotImplemented,
            Self::Unavailable(_) => ProblemType::Unavailable,
            Self::Internal { .. } => ProblemType::Internal,
        }
    }

    /// The problem document (public text only).
    pub fn problem(&self) -> Problem {
        Problem::new(self.kind(), self.to_string())
    }
}

impl From<crate::store::StoreError> for HttpError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::internal(
            "the database could not answer; see the server log for this request id",
            e,
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut resp = self.kind().status().into_response();
        resp.extensions_mut().insert(self.problem());
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_are_not_in_the_problem() {
        let e = HttpError::internal("the database could not answer", "password=hunter2 refused");
        let p = e.problem();
        assert_eq!(p.status, 500);
        assert_eq!(p.type_, "urn:rekey:problem:internal");
        assert!(!serde_json::to_string(&p).unwrap().contains("hunter2"));
    }

    #[test]
    fn unavailable_keeps_the_cause_out_of_the_problem() {
        let e = HttpError::unavailable(
            "etcd could not be read; see the server log for this request id",
            "dial tcp 10.0.0.7:2379: connection refused",
        );
        let p = e.problem();
        assert_eq!(p.status, 503);
        assert_eq!(p.type_, "urn:rekey:problem:unavailable");
        assert!(!serde_json::to_string(&p).unwrap().contains("10.0.0.7"));
    }

    #[test]
    fn bare_statuses_map_to_stable_types() {
        assert_eq!(
            ProblemType::from_status(StatusCode::PAYLOAD_TOO_LARGE),
            ProblemType::PayloadTooLarge
        );
        assert_eq!(
            ProblemType::from_status(StatusCode::UNPROCESSABLE_ENTITY),
            ProblemType::BadRequest
        );
        assert_eq!(
            ProblemType::from_status(StatusCode::BAD_GATEWAY),
            ProblemType::Internal
        );
        for t in [
            ProblemType::BadRequest,
            ProblemType::NotFound,
            ProblemType::Unavailable,
        ] {
            assert_eq!(ProblemType::from_status(t.status()), t);
        }
    }
}
