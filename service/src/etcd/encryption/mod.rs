//! The API server's `EncryptionConfiguration`: strict parsing and validation.
//!
//! The file is read the way `kube-apiserver --encryption-provider-config`
//! reads it: YAML (or JSON), strict (unknown and duplicate fields are errors),
//! `apiserver.config.k8s.io/v1` `EncryptionConfiguration` or the legacy `v1`
//! `EncryptionConfig`, then the API server's validation rules
//! (`validation_encryption.go`) and its masking check (`config.go`). Every
//! error names its YAML path (`resources[0].providers[1].aescbc.keys[0].secret`)
//! and the line, and all errors are reported at once, as the API server does.
//!
//! Key material is decoded into [`SecretBytes`] and never printed.
//!
//! - [`model`]: the parsed configuration and its errors;
//! - [`validate`]: [`parse`], the API server's rules, all errors at once;
//! - [`positions`]: lines in the YAML, scalar types, key creation comments.

pub mod model;
pub mod positions;
pub mod validate;

pub use model::{
    API_VERSION, CREATED_AT_ANNOTATION, ConfigKind, EncryptionConfiguration, GroupResource, Key,
    KmsProvider, Provider, ProviderKind, Rule, Transformer, ValidationError, ValidationErrors,
};
pub use validate::{parse, parse_go_duration};
