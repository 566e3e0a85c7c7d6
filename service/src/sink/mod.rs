//! Sinks: where a credential version is published for its consumers.
//!
//! Publishing is the commit point of a rotation (DESIGN.md). Every sink
//! records the version id with what it publishes (a marker file, a Secret
//! annotation), so that after a crash [`Sink::published_version`] tells
//! whether a `pending` version reached its consumers.
//!
//! - [`spec`]: [`SinkSpec`] (the `sink` field of a credential) and reload
//!   targets, with their checks.
//! - [`model`]: [`Material`], [`Publication`], the [`Sink`] trait, [`SinkError`].
//! - [`file`], [`kubernetes`]: the two sinks; [`build`] picks one for a spec.

pub mod build;
pub mod file;
pub mod kubernetes;
pub mod model;
pub mod spec;

pub use build::build;
pub use model::{Material, Publication, Sink, SinkContext, SinkError};
pub use spec::SinkSpec;
