//! What handlers take from a request: path and query parameters whose
//! rejections are problem documents, the caller facts every handler needs
//! ([`Req`]: peer certificate, request id, bearer token), and the optional
//! JSON body ([`parse_body`]). Names and query strings are checked by
//! [`super::input`] before any handler sees them.

use axum::{
    body::Bytes,
    extract::{FromRequestParts, MatchedPath},
    http::{HeaderMap, header, request::Parts},
};
use secrecy::SecretString;

use super::{
    auth::{self, PeerInfo},
    input,
    middleware::RequestId,
    problem::HttpError,
};

/// `Path` whose rejection is a problem document.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(HttpError))]
pub struct PathParam<T>(pub T);

/// Query parameters: the raw query string checked first
/// ([`input::check_query`]: UTF-8, no control characters, bounded values),
/// then parsed into `T`; every rejection is a 400 problem document.
pub struct QueryParams<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        input::check_query(parts.uri.query().unwrap_or_default()).map_err(HttpError::BadRequest)?;
        let axum::extract::Query(q) = axum::extract::Query::<T>::try_from_uri(&parts.uri)?;
        Ok(Self(q))
    }
}

/// The one `{name}` (or `{id}`) parameter of a route, percent-decoded but not
/// yet checked: a mutating handler records a refused name in the audit log
/// (as [`PathName::shown`]) before it answers 400.
#[derive(Debug, Clone)]
pub struct PathName {
    raw: Vec<u8>,
}

impl PathName {
    /// The name, if it passes [`input::check_name`]; else a 400 saying why.
    pub fn get(&self) -> Result<&str, HttpError> {
        input::check_name(&self.raw)
            .map_err(|why| HttpError::BadRequest(format!("the name in the path {why}")))
    }

    /// A bounded, sanitised copy for the audit log and messages.
    pub fn shown(&self) -> String {
        input::shown(&self.raw)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathName {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // The route's template says which segment is the parameter; the raw
        // segment is read from the URI (axum's `Path` refuses non-UTF-8
        // before a handler could record what was asked).
        let template = parts
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        let index = template.split('/').position(|s| s.starts_with('{'));
        let raw = index
            .and_then(|i| parts.uri.path().split('/').nth(i))
            .map(|seg| input::decode(seg, false))
            .ok_or_else(|| HttpError::internal("no name parameter in this route", template))?;
        Ok(Self { raw })
    }
}

impl From<axum::extract::rejection::PathRejection> for HttpError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for HttpError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

/// Facts about the request every handler needs.
pub struct Req {
    /// The connection's verified client certificate, if any.
    pub(super) peer: PeerInfo,
    /// The request id (for the audit record and logs).
    pub(super) request_id: String,
    /// `Authorization: Bearer` token, if any.
    pub(super) bearer: Option<SecretString>,
}

impl<S: Send + Sync> FromRequestParts<S> for Req {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            peer: parts
                .extensions
                .get::<PeerInfo>()
                .cloned()
                .unwrap_or_default(),
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            bearer: auth::bearer_token(
                parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            ),
        })
    }
}

/// Parses an optional JSON body: empty is `None`; anything else must be JSON.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<T>, HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    if !json {
        return Err(HttpError::UnsupportedMediaType(
            "send the body as `Content-Type: application/json`".into(),
        ));
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| HttpError::BadRequest(format!("invalid JSON body: {e}")))
}
