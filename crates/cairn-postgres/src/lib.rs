//! Cairn on PostgreSQL: the production backend.
//!
//! Events get their `$all` position in commit order: every append transaction takes one
//! transaction-scoped advisory lock before it reads the head and inserts, so a reader can
//! never see position 11 committed while 10 is still in flight (see
//! `docs/design/ordering.md`). One writer task per process batches concurrent appends into
//! one transaction (group commit). Read models, checkpoints, dead letters, snapshots and
//! process-manager state live in the same database; a consumer's changes and its checkpoint
//! commit together, on the connection that holds the consumer's leadership lock.

mod codec;
mod notify;
mod pool;
mod readmodel;
pub mod schema;
mod store;
pub mod testing;
pub mod tls;
mod writer;

pub use pool::{
    KEEPALIVE_PROBES, OpenError, PgOptions, server_keepalives, session, session_config,
};
pub use readmodel::PgReadModels;
pub use store::PgEventStore;
pub use tls::{PgTls, SslMode, TlsError, TlsOptions};

/// Opens the event store and the read-model store on one database, running migrations.
pub async fn open(
    url: &str,
    options: &PgOptions,
) -> Result<(PgEventStore, PgReadModels), OpenError> {
    let shared = pool::Shared::connect(url, options).await?;
    let store = PgEventStore::start(std::sync::Arc::clone(&shared));
    let readmodels = PgReadModels::new(shared);
    Ok((store, readmodels))
}
