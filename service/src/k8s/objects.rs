//! Conventions of the objects rekey reads and writes: timestamps, and the
//! annotations and labels rekey puts on what it creates.

/// Converts an API timestamp.
pub fn to_chrono(
    t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// Converts to an API timestamp.
pub fn from_chrono(
    t: chrono::DateTime<chrono::Utc>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The annotation carrying the published version id (the stable key
/// recovery reads).
pub const VERSION_ANNOTATION: &str = "rekey.io/version";
/// The annotation carrying the published version's number among its
/// credential's versions (1, 2, 3, ...), for people.
pub const VERSION_NUMBER_ANNOTATION: &str = "rekey.io/version-number";
/// The annotation carrying the published version's expiry (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "rekey.io/not-after";
/// The annotation naming the credential a rekey-made object belongs to.
pub const CREDENTIAL_ANNOTATION: &str = "rekey.io/credential";
/// `app.kubernetes.io/managed-by` value on objects rekey creates.
pub const MANAGED_BY: &str = "rekey";
