//! `/openapi.json`: the OpenAPI 3.1 document, generated (utoipa) from the
//! handlers' annotations and the views' schemas, plus the error responses
//! every operation can give and the two security schemes.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use utoipa::OpenApi;

use super::{
    handlers::{audit, backups, bootstrap_tokens, credentials, etcd, health, issuers, rotations},
    problem::{PROBLEM_JSON, Problem},
    views::{
        AuditEventView, AuditPage, BackupList, BootstrapTokenList, CredentialDetail,
        CredentialList, CredentialSummary, CredentialView, Health, Readiness, RotateRequest,
        RotationView,
    },
};

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = Object)))]
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_document(),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rekey admin API",
        description = "Rotate now, inventory, audit and operations for rekey. Lists (`/v1/credentials`, `/v1/bootstrap-tokens`, `/v1/backups`, `/v1/audit`) are paged like Kubernetes lists: `?limit=N` (1 to 1000, default 500) and `?continue=TOKEN` from the previous page's `continue` field, null on the last page; tokens are opaque and only valid for the list and filters they came from. Mutual TLS: present a client certificate signed by `[api].client_ca`; its subject CN maps to a role (`viewer` < `operator` < `admin`). Inside the cluster a ServiceAccount bearer token may be used instead (TokenReview + SubjectAccessReview, API group `rekey.io`) when `[api].token_review = true`. Errors are `application/problem+json` (RFC 9457) with stable `type`s (`urn:rekey:problem:*`). Credential names contain `/`: URL-encode them in paths."
    ),
    paths(
        credentials::list_credentials, credentials::get_credential,
        credentials::rotate_credential, rotations::get_rotation,
        bootstrap_tokens::list_bootstrap_tokens, bootstrap_tokens::revoke_bootstrap_token,
        etcd::verify_etcd, etcd::migrate_etcd, issuers::list_issuers, issuers::get_issuer,
        issuers::rotate_issuer, backups::list_backups, backups::run_backup, audit::list_audit,
        health::metrics_authed, health::healthz, health::readyz, openapi_json
    ),
    components(schemas(Problem, CredentialView, CredentialList, CredentialSummary, CredentialDetail, RotationView,
        RotateRequest, BootstrapTokenList, BackupList, AuditEventView, AuditPage, Health, Readiness)),
    modifiers(&CommonResponses),
    tags(
        (name = "credentials", description = "Inventory and rotate now"),
        (name = "bootstrap-tokens", description = "Bootstrap-token revocation"),
        (name = "etcd", description = "etcd encryption-at-rest verification"),
        (name = "issuers", description = "Issuers, trust bundles and CA rotation"),
        (name = "backups", description = "Encrypted etcd backups"),
        (name = "audit", description = "The append-only audit log"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
struct ApiDoc;

/// Adds the error responses every operation can give, and the security schemes.
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            ContentBuilder, Ref, ResponseBuilder,
            security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
        };
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A Kubernetes ServiceAccount token (only with [api].token_review = true)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "mutualTLS",
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate signed by [api].client_ca; its subject CN maps to a role"
                        .into(),
                ),
                extensions: None,
            },
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            let authed = path.starts_with("/v1/") || path == "/metrics";
            for op in [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                let r = &mut op.responses.responses;
                let mut add = |code: &str, d: &str| {
                    r.entry(code.to_string())
                        .or_insert_with(|| problem(d).into());
                };
                add("413", "The request body is larger than [api].max_body_size");
                add(
                    "414",
                    "The request target (path and query) is longer than 8 KiB",
                );
                add(
                    "431",
                    "More than 100 header fields, or more than 32 KiB of them",
                );
                add(
                    "500",
                    "Internal error; details are in the server log under the request id",
                );
                add(
                    "503",
                    "Overloaded ([api].max_concurrent_requests) or timed out ([api].request_timeout)",
                );
                if authed {
                    add(
                        "400",
                        "The request is malformed: a name, query value or body field is not \
                         acceptable (names: 1 to 253 bytes of UTF-8 without control characters; \
                         query values: UTF-8 without control characters)",
                    );
                    add("401", "No client certificate or accepted bearer token");
                    add("403", "The caller's role (or RBAC) does not allow this");
                    op.security = Some(vec![
                        SecurityRequirement::new("mutualTLS", Vec::<String>::new()),
                        SecurityRequirement::new("bearer", Vec::<String>::new()),
                    ]);
                }
            }
        }
    }
}

/// The OpenAPI document (JSON), generated from the handlers' annotations.
pub fn openapi_document() -> String {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".into())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_covers_every_route_and_error() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/credentials",
            "/v1/credentials/{name}",
            "/v1/credentials/{name}/rotate",
            "/v1/rotations/{id}",
            "/v1/bootstrap-tokens",
            "/v1/bootstrap-tokens/{id}/revoke",
            "/v1/etcd/verify",
            "/v1/etcd/migrate",
            "/v1/backups",
            "/v1/audit",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        let rotate = &paths["/v1/credentials/{name}/rotate"]["post"]["responses"];
        for code in [
            "200", "202", "400", "401", "403", "404", "409", "413", "414", "415", "431", "500",
            "503",
        ] {
            assert!(rotate.get(code).is_some(), "rotate lacks {code}");
        }
        assert_eq!(
            rotate["404"]["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }

    #[test]
    fn every_list_documents_its_paging() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_document()).unwrap();
        for (path, schema) in [
            ("/v1/credentials", "CredentialList"),
            ("/v1/bootstrap-tokens", "BootstrapTokenList"),
            ("/v1/backups", "BackupList"),
            ("/v1/audit", "AuditPage"),
        ] {
            let op = &doc["paths"][path]["get"];
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .unwrap_or_else(|| panic!("{path} has no parameters"))
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert!(params.contains(&"limit"), "{path}: {params:?}");
            assert!(params.contains(&"continue"), "{path}: {params:?}");
            let limit = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "limit")
                .unwrap();
            assert_eq!(limit["schema"]["maximum"], 1000, "{path}: {limit}");
            assert_eq!(limit["schema"]["minimum"], 1, "{path}: {limit}");
            assert_eq!(
                op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
                format!("#/components/schemas/{schema}"),
                "{path}"
            );
            assert!(op["responses"].get("400").is_some(), "{path}");
            let props = &doc["components"]["schemas"][schema]["properties"];
            assert!(props.get("continue").is_some(), "{schema}: {props}");
        }
    }
}
