//! What handlers take from a request: path and query parameters whose
//! rejections are problem documents, the caller facts every handler needs
//! ([`Req`]: peer certificate, request id, bearer token), and the optional
//! JSON body ([`parse_body`]).

use axum::{
    body::Bytes,
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
};
use secrecy::SecretString;

use super::{
    auth::{self, PeerInfo},
    middleware::RequestId,
    problem::HttpError,
};

/// `Path` whose rejection is a problem document.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(HttpError))]
pub struct PathParam<T>(pub T);

/// `Query` whose rejection is a problem document.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(HttpError))]
pub struct QueryParams<T>(pub T);

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
