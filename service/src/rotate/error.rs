//! The engine's errors: [`EngineError`] stops the engine; a [`StepError`]
//! fails one credential's rotation (recorded, retried with backoff). The
//! text of a step error is what `last_error`, the audit record and
//! `rekey status` show.

use std::time::Duration;

use crate::{
    issue::{CsrError, IssueError, UnknownIssuer},
    sink::SinkError,
    store::StoreError,
};

use super::tokens::TokenError;

/// Errors that stop the engine (individual rotation failures do not).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed in a way the engine cannot ride out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why one credential's rotation failed at one step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The stored kind is not one the engine rotates.
    #[error("rekey does not rotate credentials of kind `{0}`")]
    UnknownKind(String),
    /// The stored spec no longer parses.
    #[error("stored spec does not parse: {0}")]
    BadSpec(serde_json::Error),
    /// The sink cannot be built (e.g. no Kubernetes client).
    #[error(transparent)]
    Sink(SinkError),
    /// Reconciliation was asked for a credential without a sink.
    #[error("no sink")]
    NoSink,
    /// Reading or abandoning pending versions failed.
    #[error(transparent)]
    Pending(StoreError),
    /// The sink could not say which version it holds.
    #[error("reading {sink}: {source}")]
    ReadSink {
        /// The sink, as it describes itself.
        sink: String,
        /// Why.
        source: SinkError,
    },
    /// The certificate names an issuer that is not configured.
    #[error("{0}")]
    UnknownIssuer(UnknownIssuer),
    /// The certificate's request waits for approval (its text begins with
    /// `store::credentials::AWAITING_APPROVAL`: the state `awaiting-approval`).
    #[error(transparent)]
    AwaitingApproval(CsrError),
    /// The cluster signer refused, or the request failed.
    #[error(transparent)]
    Csr(CsrError),
    /// The CA refused or failed to issue.
    #[error(transparent)]
    Issue(IssueError),
    /// The blocking thread issuing the certificate failed.
    #[error("issuing thread failed: {0}")]
    IssuingThread(tokio::task::JoinError),
    /// A token is due but there is no token issuer.
    #[error("service-account tokens need a Kubernetes client ([kubernetes] or in-cluster)")]
    NoTokenIssuer,
    /// The token issuer refused or failed.
    #[error(transparent)]
    Token(TokenError),
    /// Opening or committing the batch failed in Postgres.
    #[error("database: {0}")]
    Database(std::sync::Arc<StoreError>),
    /// Publishing failed (the write may or may not have landed).
    #[error("publishing to {sink}: {source}")]
    Publish {
        /// The sink, as it describes itself.
        sink: String,
        /// Why.
        source: SinkError,
    },
    /// Publishing did not finish in time (the write may or may not have landed).
    #[error("publishing to {sink}: timed out after {after:?}")]
    PublishTimeout {
        /// The sink, as it describes itself.
        sink: String,
        /// The limit (half the lease).
        after: Duration,
    },
}
