//! The layers around every handler: the request id (kept from the caller if
//! sane, else made; echoed; carried by every log line of the request), the
//! problem renderer (every error leaves as `application/problem+json`), the
//! head limits (414/431), the in-flight limit, and the answers for unknown
//! routes and methods.
//!
//! Metric labels never come from what a caller can choose: the route is the
//! matched template or `unmatched`, the method one of the nine standard ones
//! or `other` ([`method_label`]), the status a number.

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    context::Shared,
    problem::{HttpError, PROBLEM_JSON, Problem, ProblemType, in_request},
};

/// Longest request target (path and query) answered; longer is 414.
pub const MAX_URI: usize = 8 * 1024;

/// Largest header section answered (names, values and separators); larger is 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Most header fields answered; more is 431.
pub const MAX_HEADERS: usize = 100;

/// The `method` label of a request: the standard methods by name, anything
/// else `other` (a method name is the caller's choice, and each label value
/// is a series `/metrics` would keep forever).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The request id header (set on every response).
pub const REQUEST_ID: &str = "x-request-id";

/// The request id of the current request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Marks an error-status response whose body is not a problem (readiness).
#[derive(Debug, Clone, Copy)]
pub struct KeepBody;

/// Whether a caller's `x-request-id` is kept (else one is made).
pub fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Takes the caller's `x-request-id` if sane, else makes one; echoes it;
/// counts the request. Everything logged while handling it (causes of
/// internal errors included) carries `request_id`.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = std::time::Instant::now();
    let span = tracing::info_span!("request", request_id = %id);
    let mut resp = in_request(id.clone(), next.run(req).instrument(span)).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("rekey_api_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("rekey_api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Every error response leaves as `application/problem+json` with the request id.
pub async fn render_problems(req: Request, next: Next) -> Response {
    let id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.extensions().get::<KeepBody>().is_some()
    {
        return resp;
    }
    let problem = match resp.extensions_mut().remove::<Problem>() {
        Some(p) => p,
        None => {
            let is_problem = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
            if is_problem {
                return resp;
            }
            let kind = ProblemType::from_status(status);
            let detail = match status {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    "the request body is larger than the server accepts ([api].max_body_size)"
                        .to_string()
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    "the request took longer than [api].request_timeout".to_string()
                }
                StatusCode::METHOD_NOT_ALLOWED => {
                    "this method is not allowed on this resource (see the Allow header)".into()
                }
                StatusCode::URI_TOO_LONG => {
                    format!("the request target (path and query) is longer than {MAX_URI} bytes")
                }
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => format!(
                    "the request has more than {MAX_HEADERS} header fields or more than \
                     {MAX_HEADER_BYTES} bytes of them"
                ),
                s => s.canonical_reason().unwrap_or("error").to_string(),
            };
            let mut p = Problem::new(kind, detail);
            p.status = status.as_u16();
            p
        }
    };
    let problem = Problem {
        instance: Some(path),
        request_id: id,
        ..problem
    };
    problem.into_response_with(resp)
}

/// Answers 414 and 431 (as problem documents, through the renderer around
/// it) for heads beyond [`MAX_URI`], [`MAX_HEADERS`], [`MAX_HEADER_BYTES`].
/// The HTTP parser's own limits are set higher (see `server`), so only
/// heads beyond those get its bare answer.
pub async fn limit_head(req: Request, next: Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI {
        return StatusCode::URI_TOO_LONG.into_response();
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.into_response();
    }
    next.run(req).await
}

/// Refuses requests beyond `max_concurrent_requests` with 503 instead of queueing.
pub async fn limit_in_flight(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let Ok(_permit) = s.in_flight.clone().try_acquire_owned() else {
        return HttpError::Unavailable(
            "too many requests in flight ([api].max_concurrent_requests); retry shortly".into(),
        )
        .into_response();
    };
    next.run(req).await
}

/// No route: a hint when a credential name was not URL-encoded.
pub async fn not_found(uri: axum::http::Uri) -> HttpError {
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/v1/credentials/")
        && rest.contains('/')
        && !rest.ends_with("/rotate")
    {
        return HttpError::NotFound(
            "no such route: credential names containing `/` must be URL-encoded, \
             e.g. /v1/credentials/cert%2Fdefault%2Fweb-tls"
                .into(),
        );
    }
    HttpError::NotFound(format!("no route for {path}"))
}

/// A known route, another method (the renderer explains).
pub async fn method_not_allowed() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sanitised() {
        assert!(valid_request_id("abc-123_x.y:z"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(&"x".repeat(200)));
    }

    #[test]
    fn method_labels_are_a_fixed_set() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for made_up in ["FOO", "BREW", &"X".repeat(2000)] {
            let m = Method::from_bytes(made_up.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other");
        }
    }
}
