//! The Postgres store: the system of record for credential metadata.
//!
//! One file per table group: the engine's and shared tables live here
//! (`credentials`, `credential_versions`, `rotations`, `rotation_requests`,
//! `audit_events`, `leadership`); a capability's own tables live in its
//! `db.rs` (`k8s/bootstrap/db.rs`, `etcd/db.rs`, `backup/db.rs`). Queries
//! are checked at run time (`sqlx::query`), so a fresh machine builds
//! without a database. Migrations in `migrations/` are embedded and applied
//! by [`Store::open`] (`rekey migrate` and start-up).
//!
//! - [`pool`]: [`Store`], connecting, migrations, [`Store::open`].
//! - [`error`]: the [`StoreError`] type.
//! - [`settings`]: the `[database]` section.
//! - [`credentials`], [`engine`], [`rotations`], [`sync`], [`versions`],
//!   [`audit`], [`leadership`]: the tables; [`bundles`] (trust bundles the
//!   sinks hold, `bundle_targets`), [`probes`] (what consumers serve) and
//!   [`reissue`] (an issuer's leaves by signing CA, for a CA rotation).
//! - [`listen`]: LISTEN with reconnect.

pub mod audit;
pub mod bundles;
pub mod credentials;
pub mod engine;
pub mod error;
pub mod inventory;
pub mod leadership;
pub mod listen;
pub mod paging;
pub mod pool;
pub mod probes;
pub mod reissue;
pub mod rotations;
pub mod settings;
pub mod sync;
pub mod versions;

pub use error::StoreError;
pub use pool::{MIGRATOR, Store};
pub use settings::{DatabaseConfig, NoDatabaseUrl};
