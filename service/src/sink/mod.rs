//! Sinks: where a credential version is published for its consumers.
//!
//! Publishing is the commit point of a rotation (DESIGN.md). Every sink
//! records the version id with what it publishes (a marker file, a Secret
//! annotation), so that after a crash [`Sink::published_version`] tells
//! whether a `pending` version reached its consumers.
//!
//! - [`spec`]: [`SinkSpec`] (the `sink` field of a credential) and reload
//!   targets, with their checks.
//! - [`model`]: [`Material`], [`Publication`], [`BundleUpdate`], the
//!   [`Sink`] trait, [`SinkError`].
//! - [`file`] (the atomic `..data` layout), [`kubernetes`] (a Secret),
//!   [`kubeconfig`]: the sinks; [`build`] picks one for a spec.
//! - [`trust`]: `[[bundle]]` targets (a trust bundle alone, to a file or a
//!   ConfigMap key).

mod blocking;
pub mod build;
pub mod file;
pub mod kubeconfig;
pub mod kubernetes;
pub mod model;
pub mod spec;
pub mod trust;

pub use build::build;
pub use model::{BundleOutcome, BundleUpdate, Material, Publication, Sink, SinkContext, SinkError};
pub use spec::SinkSpec;
