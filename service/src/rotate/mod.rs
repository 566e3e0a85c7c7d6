//! The rotation engine: claims due credentials and rotates them, crash-safe.
//!
//! ```text
//!  claim (lease, FOR UPDATE SKIP LOCKED)
//!    │  reconcile versions an interrupted attempt left `pending`
//!    ▼
//!  issue material in memory, labelled with a reserved version id
//!    │  (CA on blocking threads, TokenRequest)
//!    ▼
//!  open attempts: fencing + lease extension, `rotations` row       (one transaction)
//!  running, `pending` version with its facts
//!    ▼
//!  publish to the sink, version id attached  ◄── the commit point
//!    ▼
//!  commit: supersede old, publish new, next due, audit, release   (one transaction)
//! ```
//!
//! Each step is safe to crash after. A version is `pending` until the commit;
//! whoever claims the credential next asks the sink which version it holds
//! and either finalizes that version (it was published) or fails it (it never
//! was). Work is batched: one claim, one transaction to open, one transaction
//! to commit, for up to `batch_size` credentials.
//!
//! - [`engine`]: the run loop (claim, concurrency, idle, shutdown).
//! - [`batch`]: one claimed batch, step by step; [`issuing`]: a
//!   certificate by its issuer (signer and bundle from the registry);
//!   [`reconcile`]: what an
//!   interruption left pending; [`item`]: one credential in flight and the
//!   pure decisions about it (next due time, retry time).
//! - [`declare`]: the configuration into the inventory; [`retire`]:
//!   superseded versions after their grace period.
//! - [`probe`]: consumer probes (what a certificate's consumer serves);
//!   [`bundles`]: trust bundles republished without re-issuing, and
//!   `[[bundle]]` targets; [`ca_rotation`]: rotating an issuer's CA without
//!   a failed handshake.
//! - [`tokens`]: `[[token]]` and the traits `k8s` implements;
//!   [`settings`]: `[engine]`; [`events`], [`error`].

pub mod batch;
pub mod bundles;
pub mod ca_rotation;
pub mod declare;
pub mod engine;
pub mod error;
pub mod events;
pub mod issuing;
pub mod item;
pub mod probe;
pub mod reconcile;
pub mod retire;
pub mod settings;
pub mod tokens;

pub use batch::EngineDeps;
pub use engine::{Engine, default_replica_id};
pub use error::{EngineError, StepError};
pub use events::{EventOutcome, RotationEvent};
pub use settings::EngineConfig;
pub use tokens::{IssuedToken, Reload, ReloadError, TokenError, TokenIssuer, TokenSpec};
